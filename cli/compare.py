"""`chanscope compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chanscope.workflows.compare import DEFAULT_METHODS, run_compare
from chanscope.workflows.training import TrainInterrupted

from ._console import StageDisplay, console
from ._options import DataOpt, DataRootOpt, DeviceOpt, SeedOpt


def compare_command(
    methods: Annotated[str, typer.Option(help="Comma list of methods: at, trades, cas, cifs, fsr.")]
    = DEFAULT_METHODS,
    scale: Annotated[str, typer.Option(help="The budget every method gets (a scale: smoke, cpu, ...).")] = "cpu",
    seeds: Annotated[int, typer.Option(help="Seeds (--seed, --seed + 1, ...).")] = 2,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    out: Annotated[Path, typer.Option(help="Comparison folder (a study folder of every method).")]
    = Path("runs/compare"),
    time_limit: Annotated[Optional[float], typer.Option(
        help="Minutes: start no new stage after this; a rerun continues.")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast of training.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Train and evaluate the defences under one protocol: compare.csv, intervals, a figure; resumable."""
    show = StageDisplay()
    try:
        with show.bar:
            df, iv = run_compare(out, methods, scale=scale, seeds=seeds, seed=seed or 0, data=data,
                                 data_root=data_root, device=device, bf16=bf16, progress=show.on_progress,
                                 on_stage=show.on_stage,
                                 time_limit=time_limit * 60 if time_limit is not None else None)
    except (TrainInterrupted, KeyboardInterrupt):
        raise show.interrupted(out) from None
    console.print(df.to_string(index=False))
    if len(iv):
        console.print(iv.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    console.print(f"wrote {out}/compare.csv, compare_intervals.csv, compare.json and figures/compare.png")
