"""`chanscope activations`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

import chanscope
from chanscope.activations import study_activations
from chanscope.analysis import CHANNEL_COLUMNS, CLASS_COLUMNS
from chanscope.attacks.suite import parse_attacks
from chanscope.errors import ChanscopeError, check_positive_int, parse_fraction
from chanscope.hooks import default_layer, resolve_layers
from chanscope.io import atomic_write_csv, atomic_write_json
from chanscope.relevance import RELEVANCE_METHODS
from chanscope.runs import data_of_run, run_dir_of, test_subset, writable_dir
from chanscope.train.loop import versions

from ._console import console, progress
from ._options import DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, EpsOpt, SeedOpt


def activations_command(
    model: Annotated[Path, typer.Option(help="Checkpoint (.pt) or run folder.")],
    layer: Annotated[Optional[list[str]], typer.Option(help="Module name(s) (repeatable); default: penultimate.")]
    = None,
    attack: Annotated[str, typer.Option(help="Any attack of `chanscope eval` (pgd20, cw20, fgsm, aa, ...).")]
    = "pgd20",
    relevance: Annotated[str, typer.Option(help=f"One of: {', '.join(RELEVANCE_METHODS)}.")] = "gradient",
    relevance_on: Annotated[str, typer.Option(help="Score relevance on natural or adversarial inputs.")]
    = "natural",
    eps: EpsOpt = "8/255",
    n: Annotated[Optional[int], typer.Option(help="Class-balanced test images (default: all).")] = None,
    threshold: Annotated[float, typer.Option(help="Active: magnitude > threshold x the input's largest.")] = 1e-2,
    beta_atk: Annotated[float, typer.Option(help="Joint-loss beta for adaptive attacks.")] = 2.0,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 250,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the run's).")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Record per-class channel magnitudes on natural vs adversarial inputs, with channel relevance."""
    t0 = time.time()
    if relevance not in RELEVANCE_METHODS:
        raise ChanscopeError(f"unknown relevance {relevance!r}; known: {', '.join(RELEVANCE_METHODS)}")
    if relevance_on not in ("natural", "adversarial"):
        raise ChanscopeError(f"--relevance-on must be natural or adversarial, not {relevance_on!r}")
    check_positive_int(batch_size, "batch size")
    spec = parse_attacks(attack, parse_fraction(eps))
    if len(spec) != 1:
        raise ChanscopeError("--attack takes one attack, e.g. pgd20")
    net = chanscope.load_model(model, device)
    ds = data_of_run(model, data, data_root, bool(download))
    x, y = test_subset(ds, n, seed or 0)
    layers = list(layer) if layer else [default_layer(net, x[:1].to(next(net.parameters()).device))]
    resolve_layers(net, layers)
    out_dir = writable_dir(out or run_dir_of(model))
    console.print(f"[bold]chanscope activations[/] {model}: layers {', '.join(layers)}, {len(y)} images of "
                  f"{ds.name}, attack {spec[0].name}, relevance {relevance}")
    bar = progress()
    with bar:
        task = bar.add_task("images", total=len(y), info="")
        results, seconds = study_activations(
            net, x, y, ds.classes, layers, spec[0], relevance=relevance, relevance_on=relevance_on,
            threshold=threshold, batch_size=batch_size, beta_atk=beta_atk, seed=seed or 0,
            progress=lambda done, total: bar.update(task, completed=done))
    for res in results:
        suffix = "" if len(results) == 1 else f"-{res.layer}"
        table = Table(title=f"classes{suffix}.csv: {res.layer} ({relevance} relevance, {spec[0].name})")
        cols = {"class_name": "class", "n": "n", "nat_acc": "nat%", "adv_acc": "adv%", "cosine_adv_nat": "cos",
                "mean_abs_gap": "|gap|", "nr_over_abs": "NR over", "nr_over_rel": "NR rel", "pr_under_abs": "PR under",
                "spearman_nat": "rho nat", "spearman_adv": "rho adv", "n_pr": "#PR", "n_nr": "#NR"}
        for head in cols.values():
            table.add_column(head, justify="right")
        for _, r in res.classes.iterrows():
            table.add_row(*[(f"{r[c]:.1f}" if c.endswith("acc") else f"{r[c]:.3f}") if isinstance(r[c], float)
                            else str(r[c]) for c in cols])
        console.print(table)
        atomic_write_csv(out_dir / f"channels{suffix}.csv", res.channels[CHANNEL_COLUMNS])
        atomic_write_csv(out_dir / f"classes{suffix}.csv", res.classes[CLASS_COLUMNS])
        atomic_write_json(out_dir / f"activations{suffix}.json", {
            "layer": res.layer, "attack": spec[0].to_dict(), "relevance": relevance, "relevance_on": relevance_on,
            "threshold": threshold, "data": ds.describe() | {"n_used": len(y)}, "model": str(model),
            "arch": getattr(net, "arch", None), "model_kwargs": getattr(net, "model_kwargs", None),
            "seed": seed or 0, "seconds": round(seconds, 1), "wall_seconds": round(time.time() - t0, 1),
            "versions": versions()})
    names = ", ".join(f"{p}{'' if len(results) == 1 else '-<layer>'}" for p in ("channels.csv", "classes.csv",
                                                                                  "activations.json"))
    console.print(f"wrote {names} in {out_dir} ({time.time() - t0:.0f}s)")
