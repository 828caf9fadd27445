"""`chanscope ablate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._console import console
from ._options import DataOpt, DeviceOpt


def ablate_command(
    base: Annotated[Path, typer.Option(help="A CIFS run folder or its config.json.")],
    vary: Annotated[list[str], typer.Option(help="key=v1,v2 (repeat): cifs.train_label, cifs.topk, cifs.mask, "
                                                 "cifs.probes (a+b), cifs.stages (a+b), cifs.beta, or any option.")],
    seeds: Annotated[int, typer.Option(help="Seeds per cell.")] = 1,
    scale: Annotated[Optional[str], typer.Option(help="Budget of a reproduce scale (smoke, cpu, gpu, paper).")] = None,
    attack: Annotated[str, typer.Option(help="Evaluation attack.")] = "pgd20",
    n: Annotated[Optional[int], typer.Option(help="Test images for the attack.")] = None,
    aa_n: Annotated[int, typer.Option(help="AutoAttack on this many fixed test images (0: skip).")] = 0,
    baseline: Annotated[bool, typer.Option(help="Also train the PGD-AT baseline with the same budget.")] = True,
    baseline_init: Annotated[Optional[str], typer.Option(
        help="Warm start of the AT baseline (needed when --base has init), e.g. a natural standard model.")] = None,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Ablation folder.")] = Path("runs/ablation"),
    device: DeviceOpt = None,
) -> None:
    """Train and evaluate a grid of CIFS switches (same budget, several seeds) beside PGD-AT."""
    from chanscope.workflows.ablate import parse_vary, run_ablation

    grid = parse_vary(vary)
    df = run_ablation(base, grid, out, seeds=seeds, scale=scale, data=data, attack=attack, n=n, aa_n=aa_n,
                      baseline=baseline, baseline_init=baseline_init, device=device,
                      on_stage=lambda name, status, secs: console.print(f"{name}: {status}", highlight=False))
    summary = df.groupby("setting", sort=False).agg(natural=("natural_acc", "mean"), robust=("robust_acc", "mean"),
                                                    spread=("robust_acc", lambda v: v.max() - v.min()),
                                                    seeds=("seed", "count")).reset_index()
    table = Table(title=f"ablation ({attack}), {out}/ablation.csv")
    for c in ("setting", "natural %", "robust %", "robust spread", "seeds"):
        table.add_column(c, justify="right")
    for r in summary.itertuples():
        table.add_row(r.setting, f"{r.natural:.1f}", f"{r.robust:.1f}", f"{r.spread:.1f}", str(r.seeds))
    console.print(table)
