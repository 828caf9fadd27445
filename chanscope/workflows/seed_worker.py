"""One seed of a study run with `--jobs N` (`chanscope reproduce`, `series`, `compare`) in a process of its own
(`python -m chanscope.workflows.seed_worker '<spec>'`, started by `seed_jobs`): its stages, stop requests and
progress lines. Only this module imports both the planners (`pipeline`, `series`, `compare`) and the process runner
(`seed_jobs`), so neither imports the other."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chanscope.errors import ChanscopeError
from chanscope.workflows import compare, pipeline, series
from chanscope.workflows.seed_jobs import _PASSED_ON, STOP, seed_record
from chanscope.workflows.study import Study, StudyRecord, run_study

# the study's record's name -> its planner's spec -> the stages of the worker's seed
PLANNERS = {"pipeline": pipeline.seed_part, "series": series.seed_part, "compare": compare.seed_part}


def worker(spec: dict) -> None:
    """One seed's stages, in this process; records in its seed record, events and progress on stdout."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)  # held by the study while it started this process
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even where the study ignores it
    signal.signal(STOP, _on_stop)
    _stop_when_orphaned(spec["parent"])
    import torch

    out, s, planner = Path(spec["out"]), spec["seed"] + spec["index"], spec["planner"]
    stages = PLANNERS[planner](spec, _progress())
    names = {st.name for st in stages}
    record = StudyRecord.load(seed_record(out, s, planner))
    study = StudyRecord.load(out / f"{planner}.json").stages
    # seconds add up over cut runs, as in one process
    record.stages = {**{n: r for n, r in study.items() if n in names}, **record.stages}
    limit = None if spec["deadline"] is None else max(0.0, spec["deadline"] - time.time())
    print(f"seed {s}: {len(stages)} stages, {torch.get_num_threads()} thread(s)", flush=True)
    run_study(Study(record, stages), _say_unless_stopped, limit)


_stop_asked = threading.Event()


def _on_stop(signum=None, frame=None) -> None:  # noqa: ARG001
    """A stop request: a Ctrl-C now (a training saves its state at the next batch, as for a user's), and no
    further stage, even when the Ctrl-C came as the training finished anyway."""
    _stop_asked.set()
    signal.raise_signal(signal.SIGINT)


def _say_unless_stopped(name: str, status: str, secs: float) -> None:
    """A stage's event on stdout; a stage about to run stops instead once a stop was asked for."""
    if status == "running" and _stop_asked.is_set():
        raise KeyboardInterrupt("asked to stop before this stage")
    print(f"{name}: {status}" + (f" ({secs:.0f}s)" if secs else ""), flush=True)


def _progress() -> Callable[[str, int, int], None]:
    """Progress lines at most once a minute per task (and at its end): a log, not a screen."""
    last: dict[str, float] = {}

    def say(label: str, done: int, total: int) -> None:
        if done >= total or time.time() - last.get(label, 0.0) > 60:
            last[label] = time.time()
            print(f"{label}: {done}/{total}", flush=True)
    return say


def _stop_when_orphaned(parent: int) -> None:
    """A stop request to this worker once its calling process has gone (killed outright)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), STOP)
    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    from chanscope.workflows.training import TrainInterrupted

    try:
        worker(json.loads(sys.argv[1]))
    except ChanscopeError as e:  # bad input or a folder in the way: its one line, as the command says it
        print(f"error: {e}", flush=True)
        sys.exit(2)
    except (TrainInterrupted, KeyboardInterrupt) as e:
        print(f"interrupted: {str(e) or 'stopped'}; the finished stages and trained epochs are kept", flush=True)
        sys.exit(130)
