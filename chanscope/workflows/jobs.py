"""The jobs a study is made of, as data: train a model, make a random control, evaluate a model, record its
activations. Each job knows whether it is done, runs itself, and names the `chanscope` command that does the
same (`argv`), derived from its fields (a field's name is its flag), never written by hand, so that a
recorded stage reruns as pasted.

A `RunId` names a run of a study by its model and seed; the folder and the label ('at', 'seed1/at') are
derived from it, never parsed back.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from chanscope.errors import ChanscopeError
from chanscope.train.config import TrainConfig, build_config
from chanscope.workflows.options import ActivationOptions, EvalOptions, RunOptions

__all__ = ["RunId", "TrainJob", "ControlJob", "EvalJob", "ActivationJob", "Job", "command_line", "FLAG_OF"]

Progress = Callable[[str, int, int], None] | None


@dataclass(frozen=True, order=True)
class RunId:
    """One run of a study: `index` 0 is the study's first seed, whose runs live in the study folder itself;
    further seeds' runs live in `seed<seed>/`."""

    index: int
    name: str  # standard, at, cifs-nat, cifs, random, ...
    seed: int = 0

    @property
    def label(self) -> str:
        return self.name if self.index == 0 else f"seed{self.seed}/{self.name}"

    def folder(self, study: Path) -> Path:
        return Path(study) / self.label


def command_line(cmd: str, **opts: Any) -> str:
    """The `chanscope` command line that passes `opts` (option names as the Python API spells them): None
    left out, True a bare flag, False `--no-` flag, lists comma-joined, tuples as the flag repeated,
    multiples of 1/255 as k/255."""
    def value(v: Any) -> str:
        if isinstance(v, float) and 0 < v < 1 and abs(v * 255 - round(v * 255)) < 1e-6:
            return f"{round(v * 255)}/255"
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    parts = ["chanscope", *cmd.split()]
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, tuple):
            parts += [a for item in v for a in (flag, value(item))]
            continue
        parts += [flag] if v is True else [f"--no-{k.replace('_', '-')}"] if v is False else [flag, value(v)]
    return shlex.join(parts)


# option fields whose flag has another name; a list field of these is the flag repeated
FLAG_OF = {"layers": "layer"}


_ALWAYS = ("seed", "attack", "attacks")  # named even at their defaults: what a reader looks for first


def _flags(options: RunOptions) -> dict[str, Any]:
    """The flags that give `options`: every field that differs from its default, and the seed and attacks."""
    default = type(options)()
    out = {}
    for f in fields(options):
        v = getattr(options, f.name)
        if v != getattr(default, f.name) or f.name in _ALWAYS:
            out[FLAG_OF.get(f.name, f.name)] = tuple(v) if f.name in FLAG_OF and v is not None else v
    return out


def _measured_as(record: Path, run: Path, asked: str, o: RunOptions) -> bool:
    """Whether a measurement's record (eval.json, activations.json) is this job's: it exists, is newer than the
    model it measured, and ran the job's attacks on its number of images with its seed (another command may
    have written into the run folder since: then the job runs again)."""
    try:
        rec = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    best = run / "best.pt"
    if best.is_file() and best.stat().st_mtime > record.stat().st_mtime:
        return False
    specs = rec.get("attacks") if "attacks" in rec else [rec.get("attack") or {}]
    data = rec.get("data") or {}
    n = data["n_requested"] if "n_requested" in data else data.get("n_eval", data.get("n_used"))
    follow = all(a.get("follow_mask") == bool(o.follow_mask) for a in specs
                 if a.get("kind") == "adaptive" or "attack" in rec)
    return ([a.get("name") for a in specs] == asked.split(",") and rec.get("seed") == o.seed and follow
            and (o.n is None or n == o.n))


# training options `chanscope train` takes as flags, in the order a recorded command names them
TRAIN_FLAGS = ("arch", "width", "data", "data_root", "subset", "val_n", "epochs", "batch_size", "lr", "milestones",
               "threat_model", "eps", "step_size", "steps", "beta", "probes", "train_label", "topk", "mask",
               "select_stages", "eval_n", "tau", "lam_sep", "lam_rec", "layout", "compile", "cuda_graphs")
_TRAIN_OWN = ("method", "natural", "preset", "seed", "device", "bf16", "init")  # named by every command


@dataclass
class TrainJob:
    """Train `config` into the run folder `out` (a cut training resumes from its last.pt)."""

    config: TrainConfig
    out: Path

    def done(self) -> bool:
        m = self.out / "metrics.csv"
        return (self.out / "summary.json").is_file() and m.is_file() and len(pd.read_csv(m)) >= self.config.epochs

    def run(self, title: str, progress: Progress = None) -> None:
        from chanscope.workflows.training import fit

        n = self.config.epochs
        cb = (lambda e, i, k, loss: progress(f"{title} epoch {e + 1}/{n}", i, k)) if progress else None
        fit(self.config, self.out, resume=(self.out / "last.pt").is_file(), on_batch=cb)

    def argv(self) -> str:
        """Its method and preset, every flag whose value differs from the preset's, seed, device, bf16, init."""
        cfg = self.config
        base = build_config(cfg.preset, method=cfg.method, threat_model=cfg.threat_model)  # L2: the scaled recipe
        diff = {k: getattr(cfg, k) for k in TRAIN_FLAGS if getattr(cfg, k) != getattr(base, k)}
        if cfg.threat_model != "linf":
            diff = {"threat_model": cfg.threat_model, **diff}
        hidden = [k for k in cfg.to_dict() if k not in TRAIN_FLAGS + _TRAIN_OWN and getattr(cfg, k) != getattr(base, k)]
        if hidden:
            raise ChanscopeError(f"training option(s) {hidden} have no `chanscope train` flag; a study cannot "
                                 "record them as a command")
        return command_line("train", method=cfg.method, natural=cfg.natural or None, preset=cfg.preset, **diff,
                            seed=cfg.seed, device=cfg.device, bf16=cfg.bf16, init=cfg.init, out=str(self.out))


@dataclass
class ControlJob:
    """The random control of a study: the architecture of the trained run `like` (its planned `config`) as the
    seed initialises it, never trained, into `out`."""

    like: Path
    config: TrainConfig
    out: Path

    def done(self) -> bool:
        """Made by this version: its BatchNorm statistics estimated on training images (a control of an older
        version, with the initial statistics, predicts one class and is made again)."""
        try:
            return (self.out / "best.pt").is_file() and "bn_images" in json.loads(
                (self.out / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False

    def run(self, title: str, progress: Progress = None) -> None:
        from chanscope.workflows.training import random_control

        random_control(self.config, self.out)

    def argv(self) -> str:
        return command_line("control", like=str(self.like), out=str(self.out))


@dataclass
class EvalJob:
    """One `chanscope eval` of the run `run`'s best.pt, into the run folder or `options.out`."""

    run_dir: Path
    options: EvalOptions

    @property
    def model(self) -> str:
        return str(self.run_dir / "best.pt")

    def done(self) -> bool:
        folder = Path(self.options.out) if self.options.out else self.run_dir
        return _measured_as(folder / "eval.json", self.run_dir, self.options.attacks or "", self.options)

    def run(self, title: str, progress: Progress = None) -> None:
        from chanscope.workflows.evaluate import run_eval

        cb = (lambda attack, d, t: progress(f"{title}: {attack}", d, t)) if progress else None
        run_eval(self.model, self.options, progress=cb)

    def argv(self) -> str:
        return command_line("eval", model=self.model, **_flags(self.options))


@dataclass
class ActivationJob:
    """One `chanscope activations` of the run `run`'s best.pt; `record` is the activations JSON it writes."""

    run_dir: Path
    options: ActivationOptions
    record: str = "activations.json"

    @property
    def model(self) -> str:
        return str(self.run_dir / "best.pt")

    def done(self) -> bool:
        folder = Path(self.options.out) if self.options.out else self.run_dir
        return _measured_as(folder / self.record, self.run_dir, self.options.attack, self.options)

    def run(self, title: str, progress: Progress = None) -> None:
        from chanscope.workflows.activations import run_activations

        cb = (lambda d, t: progress(title, d, t)) if progress else None
        run_activations(self.model, self.options, progress=cb, owned=True)

    def argv(self) -> str:
        return command_line("activations", model=self.model, **_flags(self.options))


Job = TrainJob | ControlJob | EvalJob | ActivationJob
