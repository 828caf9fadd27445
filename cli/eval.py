"""`chanscope eval`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

import chanscope
from chanscope.attacks.suite import has_probes, parse_attacks
from chanscope.errors import check_positive_int, parse_fraction
from chanscope.evaluate import check_compatible, evaluate, sanity_checks, verdict
from chanscope.io import atomic_write_csv, atomic_write_json
from chanscope.runs import data_of_run, run_dir_of, test_subset, writable_dir
from chanscope.train.loop import versions

from ._console import console, progress
from ._options import DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, EpsOpt, SeedOpt


def eval_command(
    model: Annotated[Path, typer.Option(help="Checkpoint (.pt) or run folder; official CIFS checkpoints too.")],
    attacks: Annotated[str, typer.Option(help="Comma list: fgsm, pgd20, pgd100, cw20, aa, square, adaptive.")]
    = "fgsm,pgd20,cw20",
    eps: EpsOpt = "8/255",
    n: Annotated[Optional[int], typer.Option(help="Class-balanced test images (default: the whole test set).")]
    = None,
    step_size: Annotated[Optional[str], typer.Option(help="PGD step (default eps/10, the paper's 0.8/255).")] = None,
    restarts: Annotated[int, typer.Option(help="PGD restarts (after the first, random starts).")] = 1,
    random_start: Annotated[bool, typer.Option("--random-start", help="Random start for PGD.")] = False,
    beta_atk: Annotated[float, typer.Option(help="Joint-loss beta of adaptive attacks (official: 2).")] = 2.0,
    square_queries: Annotated[int, typer.Option(help="Queries of Square (alone and in --sanity).")] = 1000,
    sanity: Annotated[bool, typer.Option("--sanity", help="Run the gradient-masking checks.")] = False,
    surrogate: Annotated[Optional[Path], typer.Option(help="Checkpoint for the transfer check.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 250,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for eval.csv/eval.json (default: the run's).")]
    = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate robustness per attack and per class; write eval.csv and eval.json."""
    t0 = time.time()
    e = parse_fraction(eps)
    specs = parse_attacks(attacks, e, step_size=parse_fraction(step_size) if step_size else None,
                          restarts=restarts, random_start=random_start, square_queries=square_queries)
    check_positive_int(batch_size, "batch size")
    net = chanscope.load_model(model, device)
    sur = chanscope.load_model(surrogate, device) if surrogate else None
    ds = data_of_run(model, data, data_root, bool(download))
    x, y = test_subset(ds, n, seed or 0)
    if sur is not None:
        check_compatible(net, sur, tuple(x.shape[1:]))
    out_dir = writable_dir(out or run_dir_of(model))
    console.print(f"[bold]chanscope eval[/] {model}: {len(y)} test images of {ds.name}, eps {e:.5f}, "
                  f"attacks {', '.join(s.name for s in specs)} on {next(net.parameters()).device}")
    bar = progress()
    with bar:
        tasks = {s.name: bar.add_task(s.name, total=len(y), info="") for s in specs}
        result = evaluate(net, x, y, ds.classes, specs, batch_size=batch_size, beta_atk=beta_atk, seed=seed or 0,
                          progress=lambda name, done, total: bar.update(tasks[name], completed=done))
    if sanity:
        with console.status("gradient-masking checks"):
            result.sanity = sanity_checks(net, x, y, e, batch_size=batch_size, surrogate=sur,
                                          square_queries=square_queries, seed=seed or 0,
                                          loss="joint" if has_probes(net) else "ce")
    overall = result.overall()
    table = Table(title=f"robust accuracy, {model} ({len(y)} images, eps {e * 255:.1f}/255)")
    for col in ("attack", "loss", "steps", "step", "restarts", "natural %", "robust %", "max linf", "s"):
        table.add_column(col, justify="right")
    for _, r in overall.iterrows():
        top = r.attack.split(":")[0]
        table.add_row(r.attack, r.loss, str(r.steps), f"{r.step_size * 255:.2f}/255", str(r.restarts),
                      f"{r.natural_acc:.1f}", f"{r.robust_acc:.1f}", f"{result.max_linf.get(top, 0) * 255:.2f}/255",
                      f"{result.seconds.get(r.attack, 0):.0f}")
    console.print(table)
    per_class = result.table.pivot_table(index="class", columns="attack", values="robust_acc", sort=False)
    ct = Table(title="robust accuracy per class (%)")
    ct.add_column("class")
    for a in per_class.columns:
        ct.add_column(a, justify="right")
    for cls, r in per_class.iterrows():
        ct.add_row(str(cls), *[f"{v:.1f}" for v in r.values])
    console.print(ct)
    if sanity:
        st = Table(title="gradient-masking checks")
        for col in ("check", "result", "numbers"):
            st.add_column(col)
        for c in result.sanity:
            nums = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in c["numbers"].items())
            st.add_row(c["check"], "[green]pass[/]" if c["passed"] else "[red]FAIL[/]", nums)
        console.print(st)
        console.print(f"verdict: {verdict(result.sanity)}")
    atomic_write_csv(out_dir / "eval.csv", result.table)
    summary = {
        "model": str(model), "arch": getattr(net, "arch", None), "model_kwargs": getattr(net, "model_kwargs", None),
        "data": ds.describe() | {"n_eval": len(y)}, "eps": e, "attacks": [s.to_dict() for s in specs],
        "beta_atk": beta_atk, "seed": seed or 0, "overall": json.loads(overall.to_json(orient="records")),
        "max_linf": result.max_linf, "attack_seconds": result.seconds, "sanity": result.sanity,
        "verdict": verdict(result.sanity) if sanity else None, "surrogate": str(surrogate) if surrogate else None,
        "wall_seconds": round(time.time() - t0, 1), "versions": versions(),
    }
    atomic_write_json(out_dir / "eval.json", summary)
    console.print(f"wrote {out_dir / 'eval.csv'} and eval.json in {time.time() - t0:.0f}s")
