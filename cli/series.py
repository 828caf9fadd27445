"""`chanscope series`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chanscope.workflows.series import DEFAULT_BUDGETS, SERIES_COLUMNS, run_series
from chanscope.workflows.training import TrainInterrupted

from ._console import StageDisplay, console
from ._options import DataOpt, DataRootOpt, DeviceOpt, SeedOpt


def series_command(
    budgets: Annotated[str, typer.Option(
        help="Comma list of IMAGESxEPOCHSxSTEPS (training subset, epochs, training PGD steps), on the cpu "
        "scale's recipe otherwise.")] = DEFAULT_BUDGETS,
    seeds: Annotated[int, typer.Option(help="Seeds per budget (--seed, --seed + 1, ...).")] = 2,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    out: Annotated[Path, typer.Option(help="Series folder; a budget is a study folder inside it.")]
    = Path("runs/series"),
    time_limit: Annotated[Optional[float], typer.Option(
        help="Minutes: start no new stage after this; a rerun continues.")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast of training.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """AT against warm-started CIFS at several training budgets and seeds: series.csv and a figure; resumable."""
    show = StageDisplay()
    try:
        with show.bar:
            df = run_series(out, budgets, seeds=seeds, seed=seed or 0, data=data, data_root=data_root, device=device,
                            bf16=bf16, progress=show.on_progress, on_stage=show.on_stage,
                            time_limit=time_limit * 60 if time_limit is not None else None)
    except (TrainInterrupted, KeyboardInterrupt):
        raise show.interrupted(out) from None
    console.print(df[[c for c in SERIES_COLUMNS if c not in ("train_eval_nat_acc",)]].to_string(index=False))
    console.print(f"wrote {out}/series.csv, series.json and figures/series.png")
