"""Running a study: its stages (a name, the run it is of, a typed job), the record of what ran (pipeline.json,
series.json, compare.json: each stage's command, kind, run and seconds) and the one runner every study uses.

A planner (`reproduce`, `compare`, `series`, `ablate`) makes a `Study`: its record and its stages; `run_study`
runs the stages not yet done, in order, and saves each finished one into the record at once, so a cut study
continues where it stopped. A seed run in a process of its own is `run_study` on that seed's `part` of the
same study, into a record of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chanscope.errors import ChanscopeError
from chanscope.workflows.jobs import Job, RunId, TrainJob
from chanscope.workflows.records import StudyRecord

__all__ = ["Stage", "Study", "StudyRecord", "run_study", "run_stages", "check_runs"]

OnStage = Callable[[str, str, float], None] | None


@dataclass
class Stage:
    name: str  # e.g. "train at", "eval seed1/cifs"
    id: RunId  # the run it trains or measures
    kind: str  # train | eval | sanity | aa | activations
    job: Job
    progress: Callable[[str, int, int], None] | None = None

    @property
    def model(self) -> str:
        """The run's label ('at', 'seed1/at'), as the record names it."""
        return self.id.label

    @property
    def command(self) -> str:
        return self.job.argv()

    def done(self) -> bool:
        return self.job.done()

    def run(self) -> None:
        self.job.run(self.name, self.progress)


@dataclass
class Study:
    """A planned study: the record it is kept in (and the options it is made with) and its stages, in order."""

    record: StudyRecord
    stages: list[Stage]

    def part(self, index: int, record: StudyRecord | None = None) -> Study:
        """The stages of the study's seed `index` (its `index`-th seed), into `record` (default: the study's)."""
        return Study(record or self.record, [st for st in self.stages if st.id.index == index])


def run_study(study: Study, on_stage: OnStage = None, time_limit: float | None = None, start: bool = True) -> None:
    """`run_stages` on the study's stages and record."""
    run_stages(study.stages, study.record, on_stage, time_limit, start)


def run_stages(stages: list[Stage], record: StudyRecord, on_stage: OnStage = None,
               time_limit: float | None = None, start: bool = True) -> None:
    """Run the stages not yet done, in order; each finished one is added to the record, saved at once.

    on_stage(name, status, seconds): told before ("running") and after each stage; it may raise to stop.
    time_limit: seconds after which no new stage starts (the finished ones are still reported as skipped).
    start: False reports each stage finished or not and starts none (the record is left as it is)."""
    def say(name: str, status: str, secs: float = 0.0) -> None:
        if on_stage:
            on_stage(name, status, secs)

    started, upgraded = time.time(), False
    for st in stages:
        if not start:
            say(st.name, "finished" if st.done() else "not finished")
            continue
        if time_limit is not None and time.time() - started > time_limit and not st.done():
            say(st.name, "not started (time limit; run again to continue)")
            continue
        if st.done():
            if st.name in record.stages and any(record.stages[st.name].get(k) != v for k, v in _entry(st).items()):
                record.stages[st.name].update(_entry(st))  # a record of an older version: as this one writes
                upgraded = True
            say(st.name, "skipped (complete)")
            continue
        t0 = time.time()
        say(st.name, "running")
        st.run()
        secs = time.time() - t0
        prev = record.stages.get(st.name, {}).get("seconds", 0.0)
        record.stages[st.name] = {"seconds": round(prev + secs, 1), **_entry(st)}
        record.save()
        say(st.name, "done", secs)
    if upgraded:
        record.save()


def _entry(st: Stage) -> dict:
    """What the record keeps of a stage besides its seconds: the command, the kind, the run as its label and
    as columns (name and seed), so that readers of the record never parse the label."""
    return {"command": st.command, "kind": st.kind, "model": st.model, "run": st.id.name, "seed": st.id.seed}


# options a study may run with on any machine: they change how fast, not what, a run trains
FREE_IN_STUDY = {"device", "preset", "download", "data_root", "init", "layout", "cuda_graphs"}


def check_runs(stages: list[Stage]) -> None:
    """Refuse a study folder whose trained runs were made with another recipe (e.g. another scale)."""
    from chanscope.train.config import config_diff
    from chanscope.workflows.training import load_run_config

    for st in stages:
        job = st.job
        if not isinstance(job, TrainJob) or not (job.out / "config.json").is_file():
            continue
        diff = config_diff(load_run_config(job.out), job.config, set(job.config.to_dict()) - FREE_IN_STUDY)
        if diff:
            raise ChanscopeError(f"{job.out} was trained with other options than this study asks for "
                                 f"({'; '.join(diff[:3])}); rerun with the options it was made with, or pick "
                                 "another `out`")
