"""`chanscope ablate`: a grid of CIFS design switches, each cell and seed trained with the same budget,
evaluated the same way, beside a PGD-AT baseline. Each cell is a training and an evaluation stage (AutoAttack a
third), run by the studies' runner: finished stages are skipped, cut trainings resume, and ablation.json records
each stage's command and seconds."""

from __future__ import annotations

import itertools
import json
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from chanscope.errors import ChanscopeError, parse_int_list
from chanscope.io import atomic_write_csv
from chanscope.train.config import TrainConfig, validate
from chanscope.workflows.jobs import TRAIN_FLAGS, EvalJob, RunId, TrainJob
from chanscope.workflows.options import EvalOptions
from chanscope.workflows.runs import writable_dir
from chanscope.workflows.study import Stage, Study, StudyRecord, run_study

__all__ = ["parse_vary", "run_ablation", "ABLATION_COLUMNS"]

KEY_ALIASES = {"cifs.train_label": "train_label", "cifs.topk": "topk", "cifs.mask": "mask",
               "cifs.probes": "probes", "cifs.stages": "select_stages", "cifs.beta": "beta"}
ABLATION_COLUMNS = ["setting", "seed", "run", "natural_acc", "robust_acc", "attack", "aa_acc",
                    "train_eval_pgd_acc", "test_pgd_acc"]


def _convert(field: str, text: str) -> Any:
    """Values are comma-separated in --vary; list fields join their items with '+'."""
    kind = next(t for t in typing.get_args(typing.get_type_hints(TrainConfig)[field]) or
                (typing.get_type_hints(TrainConfig)[field],) if t is not type(None))
    if field == "milestones":
        return parse_int_list(text, f"`vary` {field}", "75+90")
    if field in ("probes", "select_stages"):
        return [v for v in text.split("+") if v]
    if kind is bool:
        return text.lower() in ("1", "true", "yes")
    try:
        return kind(text) if kind in (int, float) else text
    except ValueError:
        raise ChanscopeError(f"`vary` {field}: {text!r} is not a {kind.__name__}") from None


def parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """['cifs.topk=1,2,3', 'cifs.train_label=true,pred'] -> {'topk': [1, 2, 3], 'train_label': [...]}"""
    names = set(TRAIN_FLAGS)  # each cell's training is recorded as a `chanscope train` command
    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ChanscopeError(f"`vary` {item!r}: write key=value1,value2 (e.g. cifs.topk=1,2,3)")
        key, values = item.split("=", 1)
        field = KEY_ALIASES.get(key.strip(), key.strip())
        if field not in names:
            raise ChanscopeError(f"`vary`: unknown key {key!r}; use {', '.join(KEY_ALIASES)} or an option of "
                                 "`chanscope train`")
        vals = [_convert(field, v.strip()) for v in values.split(",") if v.strip()]
        if not vals:
            raise ChanscopeError(f"`vary` {key}: no values")
        out[field] = vals
    return out


def _slug(cell: dict[str, Any]) -> str:
    def s(v: Any) -> str:
        return "+".join(map(str, v)) if isinstance(v, list) else str(v)
    return "_".join(f"{k}={s(v)}" for k, v in cell.items()).replace("/", "-").replace(":", "")


def base_config(base: str | Path, scale: str | None = None, data: str | None = None) -> TrainConfig:
    p = Path(base)
    p = p / "config.json" if p.is_dir() else p
    if not p.is_file():
        raise ChanscopeError(f"`base` {base}: no such config.json; give a run folder or its config.json")
    try:
        cfg = TrainConfig.from_dict(json.loads(p.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ChanscopeError(f"`base` {p} is not a chanscope config ({e})") from None
    if scale is not None:
        from chanscope.scales import scale_named

        sc = scale_named(scale)
        cfg = replace(cfg, **sc.train, preset=sc.name)
    if data is not None:
        cfg = replace(cfg, data=data)
    return cfg


def grid_cells(cfg0: TrainConfig, vary: dict[str, list[Any]], baseline: bool = True,
               baseline_init: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(setting name, config overrides) of every cell, the AT baseline last."""
    keys = list(vary)
    cells: list[tuple[str, dict[str, Any]]] = []
    for combo in itertools.product(*(vary[k] for k in keys)):
        cell = dict(zip(keys, combo))
        cells.append((_slug(cell), cell))
    if baseline:
        if cfg0.init and not baseline_init:
            raise ChanscopeError("`base` warm-starts CIFS (init); give the AT baseline its own warm start with "
                                 "`baseline_init` (a naturally trained standard model), or `no_baseline`")
        cells.append(("AT baseline", {"method": "at", "init": baseline_init}))
    return cells


def plan_ablation(cfg0: TrainConfig, cells: list[tuple[str, dict[str, Any]]], out: Path, seeds: int, attack: str,
                  n: int | None, aa_n: int, device: str | None) -> list[tuple[str, Path, list[Stage]]]:
    """(setting, run folder, its stages: train, eval, AutoAttack) of every cell and seed."""
    planned = []
    for setting, cell in cells:
        for k in range(seeds):
            cfg = replace(cfg0, **cell, seed=cfg0.seed + k, device=device)
            validate(cfg)
            run = out / f"{'at-baseline' if setting == 'AT baseline' else setting}-s{cfg.seed}"
            rid = RunId(0, run.name, cfg.seed)
            common = {"eps": cfg.eps, "data": cfg.data, "data_root": cfg.data_root, "seed": cfg.seed,
                      "device": device}
            stages = [Stage(f"train {run.name}", rid, "train", TrainJob(cfg, run)),
                      Stage(f"eval {run.name}", rid, "eval", EvalJob(run, EvalOptions(attacks=attack, n=n, **common)))]
            if aa_n:
                stages.append(Stage(f"autoattack {run.name}", rid, "aa",
                                    EvalJob(run, EvalOptions(attacks="aa", n=aa_n, out=str(run / "aa"), **common))))
            TrainJob(cfg, run).argv()  # a training `chanscope train` cannot name is refused before any cell runs
            planned.append((setting, run, stages))
    return planned


def _row(setting: str, run: Path, seed: int, attack: str) -> dict[str, Any]:
    ev = pd.read_csv(run / "eval.csv")
    row = ev[(ev.attack == attack) & (ev["class"] == "all")].iloc[0]
    aa = float("nan")
    if (run / "aa" / "eval.csv").is_file():
        a = pd.read_csv(run / "aa" / "eval.csv")
        aa = float(a[a["class"] == "all"].robust_acc.iloc[0])
    m = pd.read_csv(run / "metrics.csv").iloc[-1]
    return {"setting": setting, "seed": seed, "run": run.name, "natural_acc": row.natural_acc,
            "robust_acc": row.robust_acc, "attack": attack, "aa_acc": aa,
            "train_eval_pgd_acc": m.get("train_eval_pgd_acc", float("nan")), "test_pgd_acc": m.test_pgd_acc}


def run_ablation(base: str | Path, vary: dict[str, list[Any]], out: str | Path, *, seeds: int = 1,
                 scale: str | None = None, data: str | None = None, attack: str = "pgd20", n: int | None = None,
                 aa_n: int = 0, baseline: bool = True, baseline_init: str | None = None, device: str | None = None,
                 on_stage: Callable[[str, str, float], None] | None = None) -> pd.DataFrame:
    """Train and evaluate every cell x seed (and the AT baseline); write ablation.csv, ablation.json (each
    stage's command and seconds) and ablation.png.

    A base config with `init` warm-starts every CIFS cell from that checkpoint; the AT baseline then needs
    its own architecture's warm start (`baseline_init`, e.g. the naturally trained standard model), so both
    sides get the same recipe. Without `init` both train from scratch.
    """
    from chanscope.workflows.plots import ablation_plot

    out = Path(out)
    cfg0 = base_config(base, scale, data)
    if cfg0.method not in ("cifs", "cas"):
        raise ChanscopeError(f"`base` is a {cfg0.method!r} run; the switches act on a cifs (or cas) config")
    planned = plan_ablation(cfg0, grid_cells(cfg0, vary, baseline, baseline_init), out, seeds, attack, n, aa_n,
                            device)
    out = writable_dir(out)
    record, rows = StudyRecord.load(out / "ablation.json"), []
    for setting, run, stages in planned:
        run_study(Study(record, stages), on_stage)
        rows.append(_row(setting, run, stages[0].id.seed, attack))
        atomic_write_csv(out / "ablation.csv", pd.DataFrame(rows, columns=ABLATION_COLUMNS))
    df = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    ablation_plot(df, out)
    return df
