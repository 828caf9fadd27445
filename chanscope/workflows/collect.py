"""Reading a finished study: what its runs measured, as tidy tables with the run's identity (model name, seed)
as columns, and as the per-image records the verdicts read. Reports, the series' and the comparison's tables
and the figures are drawn from these; nothing here writes.

Runs are given as {RunId: folder}; a plain name (a run folder outside a study, `chanscope report a b`) is that
model of a single seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from chanscope.io import read_json
from chanscope.observe.verdicts import Seed
from chanscope.workflows.activations import read_examples
from chanscope.workflows.jobs import RunId

__all__ = ["as_ids", "attack_named", "overall_accuracy", "accuracy_table", "load_seeds", "ACCURACY_COLUMNS"]

Runs = Mapping[RunId, Path] | Mapping[str, Path]


def as_ids(runs: Runs) -> dict[RunId, Path]:
    """Runs keyed by RunId; a plain name is that model of the first (single) seed."""
    return {k if isinstance(k, RunId) else RunId(0, k): Path(v) for k, v in runs.items()}


def attack_named(names, prefix: str) -> str | None:
    """The first attack among `names` (eval columns or overall_accuracy keys) whose name starts with `prefix`
    ('cw' finds cw20), components such as 'adaptive20:final' aside; None if there is none."""
    return next((k for k in names if k.startswith(prefix) and ":" not in k), None)


def overall_accuracy(run: Path) -> dict[str, float]:
    """attack -> robust accuracy (all classes) of a run's eval.csv and aa/eval.csv, with "natural" and
    "n:<attack>" (images)."""
    out: dict[str, float] = {}
    for sub in ("", "aa"):
        p = Path(run) / sub / "eval.csv"
        if p.is_file():
            ev = pd.read_csv(p)
            ev = ev[ev["class"] == "all"]
            for r in ev.itertuples():
                out[r.attack] = r.robust_acc
                out.setdefault("natural", r.natural_acc)
                out.setdefault(f"n:{r.attack}", r.n)
    return out


ACCURACY_COLUMNS = ["model", "run", "seed", "attack", "natural_acc", "robust_acc", "n"]


def accuracy_table(runs: Runs) -> pd.DataFrame:
    """One row per run and attack (eval.csv and aa/eval.csv, all classes): the run's label, name and seed, the
    attack, natural and robust accuracy in %, and the images."""
    rows = []
    for rid, folder in as_ids(runs).items():
        for sub in ("", "aa"):
            p = folder / sub / "eval.csv"
            if p.is_file():
                ev = pd.read_csv(p)
                for r in ev[ev["class"] == "all"].itertuples():
                    rows.append({"model": rid.label, "run": rid.name, "seed": rid.seed, "attack": r.attack,
                                 "natural_acc": r.natural_acc, "robust_acc": r.robust_acc, "n": r.n})
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def load_seeds(runs: Runs) -> list[Seed]:
    """The per-image records of the runs, one Seed per seed of the study (in order), each keyed by model
    name."""
    groups: dict[int, Seed] = {}
    for rid, run in as_ids(runs).items():
        seed = groups.setdefault(rid.index, Seed())
        if (run / "examples.npz").is_file():
            seed.act[rid.name] = read_examples(run / "examples.npz")
            seed.act_attack[rid.name] = read_json(run / "activations.json").get("attack", {}).get("name", "?")
        if (run / "eval_examples.csv").is_file():
            seed.ev[rid.name] = pd.read_csv(run / "eval_examples.csv")
    return [groups[k] for k in sorted(groups)]
