"""`--jobs N` of a study with several seeds (`chanscope reproduce`, `series`, `compare`): its seeds in
processes of their own, N at a time.

The calling process starts one worker per seed (`python -m chanscope.workflows.seed_worker '<spec>'`) with
cores / N threads unless OMP_NUM_THREADS is set; the spec names the planner as the study's record is named
(`pipeline`, `series`, `compare`), whose `seed_part(spec)` gives the worker its seed's stages, in the folders
one process would make. The worker logs to `<out>/<planner>-seed<s>.log` and keeps its stage records in
`<out>/<planner>.seed<s>.json`; only the calling process writes the study's record (pipeline.json,
series.json, compare.json), merging those records when the workers have stopped (or, after a cut run, when
the study starts again). Ctrl-C, SIGTERM and SIGHUP of the calling process are passed on to each worker as a
stop request (SIGUSR1: a Ctrl-C, so that a training saves its state, and no further stage), and a worker
whose calling process has gone stops the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chanscope.accel.threads import share_cpu
from chanscope.errors import ChanscopeError
from chanscope.workflows.study import Study, StudyRecord, run_study

OnStage = Callable[[str, str, float], None] | None
STOP = getattr(signal, "SIGUSR1", None)  # the request to a worker: stop as after Ctrl-C, start no other stage


def cores() -> int:
    """The cores this process may run on (its affinity, where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def seed_record(out: str | Path, s: int, planner: str = "series") -> Path:
    """Where the worker of seed `s` keeps its stage records until the study merges them (a name no earlier
    version left behind: the per-seed scripts of the cpu study wrote pipeline-seed<k>.json and never removed
    them)."""
    return Path(out) / f"{planner}.seed{s}.json"


def merge_seed_records(record: StudyRecord) -> None:
    """Move every worker's stage records beside the study's record (e.g. series.json) into it (saved before
    each worker's file is removed)."""
    stem = record.path.stem
    legacy = sorted(record.path.parent.glob("series-seed*.json")) if stem == "series" else []  # earlier series
    for path in legacy + sorted(record.path.parent.glob(f"{stem}.seed*.json")):  # (they were always merged)
        record.stages.update(StudyRecord.load(path).stages)
        record.save()
        path.unlink()


def run_seeds(study: Study, spec: dict, jobs: int, on_stage: OnStage, time_limit: float | None) -> None:
    """The study's stages: in this process, or with jobs > 1 and several seeds (`spec["seeds"]`), its seeds in
    `jobs` worker processes at a time, none started after `time_limit` seconds (the planners' `--jobs`)."""
    if jobs > 1 and spec["seeds"] > 1:
        deadline = None if time_limit is None else time.time() + time_limit
        run_in_processes(study, {**spec, "deadline": deadline}, min(jobs, spec["seeds"]), on_stage)
    else:
        run_study(study, on_stage, time_limit)


def run_in_processes(study: Study, spec: dict, jobs: int, on_stage: OnStage) -> None:
    """Run the study's seeds in workers (spec: the planner, as its record is named, and what its `seed_part`
    reads), merge their records, report every stage finished or not."""
    from chanscope.data import load_data

    if STOP is None:
        raise ChanscopeError("--jobs needs POSIX signals (Linux, macOS); run the seeds without it")
    load_data(spec["data"], spec["data_root"])  # bad data: one error here; an archive decoded once for all seeds
    spec = {**spec, "planner": study.record.path.stem, "parent": os.getpid()}
    failed = _run_workers(study.record.path.parent, spec, jobs, on_stage)
    merge_seed_records(study.record)
    run_study(study, on_stage, start=False)
    if failed:
        said = "; ".join(f"seed {w.seed}: {w.error()} (log {w.log})" for w in sorted(failed, key=lambda w: w.seed))
        raise ChanscopeError(f"{said}; the other seeds' finished stages are kept: mend it and run the same "
                             "command again")


@dataclass
class _Worker:
    seed: int
    proc: subprocess.Popen
    log: Path
    offset: int  # the log's length before this run: its error is after it

    def error(self) -> str:
        """The worker's error line of this run (else its last line)."""
        with open(self.log, errors="replace") as fh:
            fh.seek(self.offset)
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.startswith("error:")]
        return (said or lines or ["(nothing in its log)"])[-1]


def _run_workers(out: Path, spec: dict, jobs: int, on_stage: OnStage) -> list[_Worker]:
    """Keep `jobs` workers running until every seed has run (or the deadline has passed); the failed ones."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores() // jobs))
    env = share_cpu({**os.environ, "OMP_NUM_THREADS": threads})
    pending, running, failed = list(range(spec["seeds"])), [], []
    with _stop_signals_interrupt():
        try:
            while pending or running:
                while pending and len(running) < jobs and (spec["deadline"] is None or time.time() < spec["deadline"]):
                    _start(out, spec, pending.pop(0), env, running)
                    if on_stage:
                        w = running[-1]
                        on_stage(f"seed {w.seed}", f"running ({env['OMP_NUM_THREADS']} thread(s); log {w.log})", 0.0)
                if not running:  # the time limit has passed: the pending seeds are not started
                    break
                time.sleep(0.5)
                for w in [w for w in running if w.proc.poll() is not None]:
                    running.remove(w)
                    if w.proc.returncode:
                        failed.append(w)
        finally:
            _stop([w.proc for w in running])
    return failed


def _start(out: Path, spec: dict, k: int, env: dict, running: list[_Worker]) -> None:
    s = spec["seed"] + k
    log = out / f"{spec['planner']}-seed{s}.log"
    cmd = [sys.executable, "-m", "chanscope.workflows.seed_worker", json.dumps({**spec, "index": k})]
    offset = log.stat().st_size if log.is_file() else 0
    with open(log, "a") as fh, _signals_held():  # a stop signal now waits until the worker is on the list
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running.append(_Worker(s, proc, log, offset))  # own session: a terminal's Ctrl-C is passed on by _stop


def _stop(procs: list[subprocess.Popen]) -> None:
    """Ask each worker still running to stop (`_on_stop`: it saves its training state) and wait for them; a
    further Ctrl-C (or SIGTERM) asks again, and a second request stops a worker at once."""
    asked = False
    while True:
        try:
            if not asked:
                asked = True
                for proc in procs:
                    proc.send_signal(STOP)
            for proc in procs:
                proc.wait()
            return
        except KeyboardInterrupt:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(STOP)


_PASSED_ON = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends (the worker unblocks them in itself)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP as Ctrl-C while workers run, so that they are stopped, not left behind (a signal
    this process ignores, as under nohup, stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    old = {sig: signal.getsignal(sig) for sig in _PASSED_ON if sig != signal.SIGINT}
    for sig, h in old.items():
        if h is not signal.SIG_IGN:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
