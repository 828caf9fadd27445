"""`chanscope eval`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from chanscope.errors import parse_fraction

from ._console import console, fail, progress
from ._options import (
    ClassesByOpt,
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    EpsOpt,
    ModelOpt,
    SeedOpt,
    ThreatOpt,
    budget,
    with_model_source,
)

if TYPE_CHECKING:  # torch: the workflow is imported when the command runs, not when the CLI starts
    from chanscope.models.sources import ModelOptions


@with_model_source
def eval_command(
    model: ModelOpt,
    attacks: Annotated[Optional[str], typer.Option(
        help="Comma list of fgsm, pgd<K>, cw<K>, adaptive<K>, aa (torchattacks' port), aa-ref (the authors' "
        "code), square; r<N> after a name gives it N restarts "
        "(e.g. pgd20,adaptive20r2; default: "
        "fgsm,pgd20,cw20, plus adaptive20 for models with probes or auxiliary heads, CIFS and CAS).")] = None,
    eps: EpsOpt = None,
    threat_model: ThreatOpt = None,
    n: Annotated[Optional[int], typer.Option(help="Class-balanced test images (default: the whole test set).")]
    = None,
    step_size: Annotated[Optional[str], typer.Option(help="PGD step (default eps/10, the paper's 0.8/255).")] = None,
    restarts: Annotated[int, typer.Option(help="PGD restarts (after the first, random starts).")] = 1,
    random_start: Annotated[bool, typer.Option("--random-start", help="Random start for PGD.")] = False,
    beta_atk: Annotated[float, typer.Option(help="Joint-loss beta of adaptive attacks (official: 2).")] = 2.0,
    follow_mask: Annotated[bool, typer.Option(
        "--follow-mask", help="Adaptive attacks differentiate through CIFS's relevance and mask (end to end, "
        "slower) instead of stopping at the mask as the official evaluation does.")] = False,
    square_queries: Annotated[int, typer.Option(help="Queries of Square (alone and in --sanity).")] = 1000,
    sanity: Annotated[bool, typer.Option("--sanity", help="Run the gradient-masking checks.")] = False,
    surrogate: Annotated[Optional[Path], typer.Option(help="Checkpoint for the transfer check.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 250,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for eval.csv/eval.json (default: the run's).")]
    = None,
    classes_by: ClassesByOpt = "name",
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    model_options: ModelOptions | None = None,
) -> None:
    """Evaluate robustness per attack and per class; write eval.csv and eval.json."""
    from chanscope.workflows.evaluate import run_eval

    bar = progress()
    tasks: dict[str, int] = {}

    def on_ready(info: dict) -> None:
        whole = " (the whole test set; --n to evaluate fewer)" if n is None else ""
        console.print(f"[bold]chanscope eval[/] {model}: {info['n']} test images{whole} of {info['data']}, "
                      f"{info['specs'][0].norm} eps {budget(info['specs'][0].eps, info['specs'][0].norm)}, "
                      f"attacks {', '.join(s.name for s in info['specs'])} on {info['device']}")
        for note in info["notes"]:
            console.print(f"[yellow]note:[/] {note}")
        bar.start()

    def on_progress(name: str, done: int, total: int) -> None:
        if name not in tasks:  # each attack's clock starts when it does
            tasks[name] = bar.add_task(name, total=total, info="")
        bar.update(tasks[name], completed=done)

    try:
        options = eval_options(
            attacks=attacks, eps=eps, threat_model=threat_model, n=n, step_size=step_size, restarts=restarts,
            random_start=random_start, beta_atk=beta_atk, follow_mask=follow_mask, square_queries=square_queries,
            sanity=sanity, surrogate=surrogate, batch_size=batch_size, data=data, data_root=data_root,
            download=download, out=out, classes_by=classes_by, seed=seed, device=device)
        result, summary = run_eval(
            str(model), options, on_ready=on_ready, progress=on_progress,
            model_options=model_options)
    except KeyboardInterrupt:
        bar.stop()
        raise fail("interrupted (Ctrl-C): nothing was written, eval writes its files when it finishes; run the same "
                   "command again", code=130) from None
    finally:
        bar.stop()
    if summary.get("replaced"):
        console.print(f"[yellow]note:[/] replaced {summary['replaced']} (write elsewhere with --out)")
    print_eval(result, summary, str(model))
    console.print(f"wrote {summary['out']}/eval.csv and eval.json in {summary['wall_seconds']:.0f}s")


def eval_options(*, attacks, eps, threat_model, n, step_size, restarts, random_start, beta_atk, follow_mask,
                 square_queries, sanity, surrogate, batch_size, data, data_root, download, out, classes_by, seed,
                 device):
    """The flags of `chanscope eval` (but the model's) as the workflow's EvalOptions."""
    from chanscope.workflows.evaluate import EvalOptions

    return EvalOptions(
        eps=parse_fraction(eps) if eps is not None else None, threat_model=threat_model,
        n=n, beta_atk=beta_atk, follow_mask=follow_mask, batch_size=batch_size, seed=seed or 0,
        device=device, data=data, data_root=data_root, download=bool(download), classes_by=classes_by,
        out=str(out) if out else None, attacks=attacks,
        step_size=parse_fraction(step_size) if step_size else None, restarts=restarts,
        random_start=random_start, square_queries=square_queries, sanity=sanity,
        surrogate=str(surrogate) if surrogate else None)


def print_eval(result, summary: dict, model: str) -> None:
    from chanscope.workflows.evaluate import verdict

    overall = result.overall()
    n = int(overall.n.iloc[0]) if len(overall) else 0
    norm = summary.get("threat_model", "linf")
    table = Table(title=f"robust accuracy, {model} ({n} images, {norm} eps {budget(summary['eps'], norm)})")
    for col in ("attack", "loss", "steps", "step", "restarts", "natural %", "robust %", f"max {norm}", "s"):
        table.add_column(col, justify="right")
    for _, r in overall.iterrows():
        top = r.attack.split(":")[0]
        gradient_based = top not in ("aa", "aa-ref", "autoattack", "square")
        table.add_row(r.attack, r.loss if gradient_based else "-", str(r.steps) if gradient_based else "-",
                      budget(r.step_size, norm) if gradient_based else "-",
                      str(r.restarts) if gradient_based else "-", f"{r.natural_acc:.1f}", f"{r.robust_acc:.1f}",
                      budget(result.max_linf.get(top, 0), norm), f"{result.seconds.get(r.attack, 0):.0f}")
    console.print(table)
    per_class = result.table.pivot_table(index="class", columns="attack", values="robust_acc", sort=False)
    ct = Table(title="robust accuracy per class (%)")
    ct.add_column("class")
    for a in per_class.columns:
        ct.add_column(a, justify="right")
    for cls, r in per_class.iterrows():
        ct.add_row(str(cls), *[f"{v:.1f}" for v in r.values])
    console.print(ct)
    if result.sanity:
        st = Table(title="gradient-masking checks")
        for col in ("check", "result", "numbers"):
            st.add_column(col)
        for c in result.sanity:
            nums = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in c["numbers"].items())
            st.add_row(c["check"], "[green]pass[/]" if c["passed"] else "[red]FAIL[/]", nums)
        console.print(st)
        console.print(f"verdict: {verdict(result.sanity)}")
