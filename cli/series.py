"""`chanscope series`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chanscope.names import DEFAULT_BUDGETS

from ._console import StageDisplay, console
from ._options import Bf16Opt, DataOpt, DataRootOpt, DeviceOpt, SeedOpt, StudyThreatOpt, TimeLimitOpt


def series_command(
    budgets: Annotated[str, typer.Option(
        help="Comma list of IMAGESxEPOCHSxSTEPS (training subset, epochs, training PGD steps), on the cpu "
        "scale's recipe otherwise (training PGD step 3/255 up to 3 steps, 2/255 above).")] = DEFAULT_BUDGETS,
    seeds: Annotated[int, typer.Option(help="Seeds per budget (--seed, --seed + 1, ...).")] = 2,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    out: Annotated[Path, typer.Option(help="Series folder; a budget is a study folder inside it.")]
    = Path("runs/series"),
    time_limit: TimeLimitOpt = None,
    bf16: Bf16Opt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    summary_only: Annotated[bool, typer.Option(
        "--summary-only", help="Start nothing: summarise the finished stages (e.g. while separate processes "
        "still train some seeds) and list the unfinished ones.")] = False,
    threat_model: StudyThreatOpt = None,
    jobs: Annotated[int, typer.Option(
        help="Train and evaluate this many seeds at once, each in its own process with cores / jobs threads "
        "(logs: <out>/series-seed<s>.log); same folders as one process.")] = 1,
) -> None:
    """AT against warm-started CIFS at several training budgets and seeds: series.csv and a figure; resumable."""
    from chanscope.workflows.series import SERIES_COLUMNS, run_series

    df = StageDisplay().run(out, run_series, budgets=budgets, seeds=seeds, seed=seed or 0, data=data,
                            data_root=data_root, device=device, bf16=bf16, time_limit=time_limit,
                            summary_only=summary_only, jobs=jobs,
                            threat_model=threat_model)
    if len(df):
        console.print(df[[c for c in SERIES_COLUMNS if c not in ("train_eval_nat_acc",)]].to_string(index=False))
    else:
        console.print("no model of the series is evaluated yet")
    if df.attrs.get("trend"):  # the change of the gap from the smallest to the largest budget
        console.print(df.attrs["trend"], highlight=False)
    console.print(f"wrote {', '.join(f'{out}/{f}' for f in df.attrs['written'])}", highlight=False)
