"""`chanscope reproduce`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from chanscope.scales import SCALES

from ._console import StageDisplay, console
from ._options import Bf16Opt, DataOpt, DataRootOpt, DeviceOpt, SeedOpt, StudyThreatOpt, TimeLimitOpt


def reproduce(out, **options):
    """The study (`chanscope.workflows.pipeline.reproduce`), imported when it runs, not when the CLI starts."""
    from chanscope.workflows.pipeline import reproduce as run

    return run(out, **options)


def reproduce_command(
    scale: Annotated[Optional[str], typer.Option(
        help=f"One of: {', '.join(SCALES)} (default: the study folder's, else smoke).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    with_cas: Annotated[Optional[bool], typer.Option("--with-cas", help="Also train and study CAS.")] = None,
    cifs_scratch: Annotated[Optional[bool], typer.Option(
        "--cifs-scratch/--no-cifs-scratch", help="Also report CIFS trained from scratch (default yes).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Study folder (default runs/reproduce-<scale>). An existing one continues with the options it was "
        "made with; other data, scale, seed or bf16 are refused.")] = None,
    time_limit: TimeLimitOpt = None,
    bf16: Bf16Opt = None,
    seed: SeedOpt = None,
    seeds: Annotated[Optional[int], typer.Option(
        help="Seeds (--seed, --seed + 1, ...; the others in <out>/seed<s>/); verdicts read their spread. "
        "Default: the folder's, else 1.")] = None,
    only: Annotated[Optional[str], typer.Option(
        help="train: run only the training stages and random controls (start the long compute early; a later "
        "call without --only evaluates and reports).")] = None,
    device: DeviceOpt = None,
    threat_model: StudyThreatOpt = None,
    jobs: Annotated[int, typer.Option(
        help="Train and evaluate this many seeds at once, each in its own process with cores / jobs threads "
        "(logs: <out>/pipeline-seed<s>.log); same folders as one process, the report once all have stopped.")] = 1,
) -> None:
    """Train standard, AT and CIFS (CAS), evaluate, record activations, plot and report; resumable."""
    out = out or Path("runs") / f"reproduce-{scale or 'smoke'}"
    t0 = time.time()
    record = StageDisplay().run(out, reproduce, scale=scale, data=data, data_root=data_root, with_cas=with_cas,
                                cifs_scratch=cifs_scratch, seed=seed, seeds=seeds, only=only, device=device,
                                bf16=bf16, time_limit=time_limit, threat_model=threat_model, jobs=jobs)
    if only:
        console.print(f"trained models in {out} ({time.time() - t0:.0f}s this invocation); run again without --only "
                      "to evaluate, study and report")
        return
    console.print(f"study in {out}: report.md, figures/, results/ ({time.time() - t0:.0f}s this invocation; "
                  f"{sum(s['seconds'] for s in record['stages'].values()):.0f}s of stages in all)")
