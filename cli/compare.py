"""`chanscope compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chanscope.names import DEFAULT_METHODS

from ._console import StageDisplay, console
from ._options import Bf16Opt, DataOpt, DataRootOpt, DeviceOpt, SeedOpt, StudyThreatOpt, TimeLimitOpt


def compare_command(
    methods: Annotated[str, typer.Option(help="Comma list of methods: at, trades, cas, cifs, fsr.")]
    = DEFAULT_METHODS,
    scale: Annotated[str, typer.Option(help="The budget every method gets (a scale: smoke, cpu, ...).")] = "cpu",
    seeds: Annotated[int, typer.Option(help="Seeds (--seed, --seed + 1, ...).")] = 2,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    out: Annotated[Path, typer.Option(help="Comparison folder (a study folder of every method).")]
    = Path("runs/compare"),
    time_limit: TimeLimitOpt = None,
    bf16: Bf16Opt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    threat_model: StudyThreatOpt = None,
    jobs: Annotated[int, typer.Option(
        help="Train and evaluate this many seeds at once, each in its own process with cores / jobs threads "
        "(logs: <out>/compare-seed<s>.log); same folders as one process.")] = 1,
) -> None:
    """Train and evaluate the defences under one protocol: compare.csv, intervals, a figure; resumable."""
    from chanscope.workflows.compare import run_compare
    from chanscope.workflows.compare_tables import NR_OVER, advantage

    df, iv = StageDisplay().run(out, run_compare, methods=methods, scale=scale, seeds=seeds, seed=seed or 0,
                                data=data, data_root=data_root, device=device, bf16=bf16, time_limit=time_limit,
                                threat_model=threat_model, jobs=jobs)
    console.print(df.to_string(index=False))
    if len(iv):
        nr = iv.under == NR_OVER  # a fraction of the natural magnitude, not a percentage
        console.print(iv[~nr].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        if nr.any():
            console.print(iv[nr].to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
        for r in advantage(iv).itertuples():
            console.print(f"{r.method.upper()} against AT: {r.finding}", highlight=False)
    made = "compare.md and figures/compare.png" if len(iv) else "no table yet (no seed has every method evaluated)"
    console.print(f"wrote {out}/compare.csv, compare_intervals.csv, compare.json; {made}")
