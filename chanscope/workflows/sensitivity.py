"""`chanscope sensitivity`: does an observation's answer depend on how it is measured?

For the models of a study (standard, AT, the random control, and any other method it holds), per seed, the
adversarial images are made once per (model, attack) and every layer of the grid is recorded on the same
walk; relevance (on natural images, so independent of the attack) is scored once per (model, layer,
relevance). Each grid cell (layer x relevance x attack) then gets the observations' statistics and verdicts
(`chanscope.observe.grid`), beside the random control's value in the same cell. Resumable: each (seed,
model, attack) walk and each model's relevance are kept in `<out>/cache/` and never made again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from chanscope.errors import ChanscopeError
from chanscope.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, read_json
from chanscope.observe.grid import Cell, grid_table, logit_explanation
from chanscope.observe.verdicts import Seed
from chanscope.workflows.activations import read_examples, study_activations, write_examples
from chanscope.workflows.runs import folder_lock, writable_dir

__all__ = ["run_sensitivity", "sensitivity_grid", "GRID_ATTACKS", "GRID_RELEVANCES", "GridPlan", "grid_markdown"]

GRID_RELEVANCES = ("gradient", "grad-x-act", "ablation")
GRID_ATTACKS = ("pgd20", "cw20", "tpgd20")  # cross-entropy, CW margin, targeted toward the likeliest wrong class
MODELS = ("standard", "at", "random", "cifs", "trades", "cas", "fsr")


@dataclass
class GridPlan:
    """What a grid measures; `passes` counts the attack walks, `relevance_passes` the relevance scorings."""

    seeds: list[dict[str, nn.Module | str]]  # per seed: model name -> model or checkpoint path
    layers: list[str]
    relevances: list[str]
    attacks: list[str]
    n: int
    threat_model: str = "linf"  # the study's; its attacks at its default budget (8/255, L2 0.5)

    def spec(self, attack: str, follow: bool | str = False):
        """The attack `attack` under the plan's threat model."""
        from chanscope.attacks.suite import parse_attacks
        from chanscope.errors import DEFAULT_EPS

        return parse_attacks(attack, DEFAULT_EPS[self.threat_model], follow=follow,
                             threat_model=self.threat_model)

    @property
    def passes(self) -> int:
        return sum(len(s) for s in self.seeds) * len(self.attacks)

    @property
    def relevance_passes(self) -> int:
        return sum(len(s) for s in self.seeds) * len(self.layers) * len(self.relevances)


def default_layers(model: nn.Module) -> list[str]:
    """Every stage output of a chanscope ResNet and the classifier's input."""
    stages = getattr(model, "stage_names", None)
    if not stages:
        raise ChanscopeError("this model has no stage names; name the grid's layers with `layer`")
    return list(stages) + ["linear:in"]


def _relevance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, layer: str, method: str,
               batch_size: int) -> np.ndarray:
    """(classes, channels) mean relevance of `layer` to each class on natural images x."""
    from chanscope.observe.relevance import LayerRelevance, RelevanceAccumulator

    dev = next(model.parameters()).device
    acc, scores = RelevanceAccumulator(k), LayerRelevance(model, layer, method)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        acc.update(scores(xb, yb), yb)
    return acc.mean().numpy().astype(np.float32)


def _key(source, plan: GridPlan, *extra) -> str:
    """What a cached walk depends on: the images, the layers, the model file as it is now (retrained or remade:
    another key), and the walk's own choices."""
    import hashlib
    import json

    stat = None
    if isinstance(source, (str, Path)) and Path(source).is_file():
        st = Path(source).stat()
        stat = [st.st_size, st.st_mtime_ns]
    blob = json.dumps([plan.n, plan.layers, str(source) if isinstance(source, (str, Path)) else None, stat, *extra])
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _walks(model: nn.Module, name: str, x, y, classes, plan: GridPlan, cache: Path | None, seed: int,
           batch_size: int, say: Callable[[str], None], source=None) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(attack, layer) -> per-image records of one model (relevance: gradient), each walk cached."""
    from chanscope.attacks.suite import has_probes

    out: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for attack in plan.attacks:
        extra = (attack, seed) if plan.threat_model == "linf" else (attack, seed, plan.threat_model)
        path = cache / f"{name}-{attack}-{_key(source, plan, *extra)}.npz" if cache else None
        if path is not None and path.is_file():
            flat = read_examples(path)
        else:
            spec = plan.spec(attack, follow="all" if has_probes(model) else False)[0]
            t0 = time.time()
            results, _ = study_activations(model, x, y, classes, plan.layers, spec, batch_size=batch_size, seed=seed)
            flat = {f"{r.layer}|{k}": v for r in results for k, v in r.examples.items()}
            if path is not None:
                write_examples(path, flat)
            say(f"{name} under {attack}: {time.time() - t0:.0f}s")
        for layer in plan.layers:
            out[(attack, layer)] = {k.split("|", 1)[1]: v for k, v in flat.items() if k.split("|", 1)[0] == layer}
    return out


def _relevances(model: nn.Module, name: str, x, y, k: int, plan: GridPlan, cache: Path | None,
                batch_size: int, source=None, seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    path = cache / f"{name}-relevance-{_key(source, plan, seed)}.npz" if cache else None
    have = read_examples(path) if path is not None and path.is_file() else {}
    out = {}
    for layer in plan.layers:
        for method in plan.relevances:
            key = f"{layer}|{method}"
            if key not in have:
                have[key] = _relevance(model, x, y, k, layer, method, batch_size)
                if path is not None:
                    write_examples(path, have)
            out[(layer, method)] = have[key]
    return out


def sensitivity_grid(plan: GridPlan, data, *, device: str | None = None, cache: Path | None = None,
                     batch_size: int = 250, say: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """The grid's table (`chanscope.observe.grid.GRID_COLUMNS`) for the models of `plan` on `data` (a data spec
    as `--data` takes it, a Dataset or an (images, labels) pair; `plan.n` class-balanced test images per seed,
    drawn with the seed's index)."""
    from chanscope.workflows.notebook import _model, as_images

    cells: dict[Cell, list[Seed]] = {}
    weights: list[dict[str, np.ndarray]] = []  # per seed, each model's classifier weights W
    for si, models in enumerate(plan.seeds):
        per_model = {}
        weights.append({})
        images = None  # one seed's models see the same images: drawn once
        sub = cache / f"seed{si}" if cache else None
        if sub:
            sub.mkdir(parents=True, exist_ok=True)
        for name, m in models.items():
            net = _model(m, device, {})
            lin = getattr(net, "linear", None)
            if isinstance(lin, nn.Linear):
                weights[-1][name] = lin.weight.detach().cpu().numpy()
            images = images or as_images(data, net, plan.n, si)
            x, y, classes, _ = images
            walks = _walks(net, name, x, y, classes, plan, sub, si, batch_size, say, source=m)
            rel = _relevances(net, name, x, y, len(classes), plan, sub, batch_size, source=m, seed=si)
            per_model[name] = (walks, rel)
        for layer in plan.layers:
            for method in plan.relevances:
                for attack in plan.attacks:
                    act = {name: {**walks[(attack, layer)], "relevance": rel[(layer, method)]}
                           for name, (walks, rel) in per_model.items()}
                    cells.setdefault(Cell(layer, method, attack), []).append(
                        Seed(act=act, act_attack={name: attack for name in act}))
    df = grid_table(cells)
    head = "linear:in"  # the classifier's input: logits = W m + b, where W and the logit change explain a part
    parts = [logit_explanation(cells[Cell(head, "gradient", a)], weights).assign(attack=a)
             for a in plan.attacks if Cell(head, "gradient", a) in cells]
    df.attrs["explained"] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return df


def _study_models(study: Path) -> list[dict[str, str]]:
    """Per seed of a study folder (the first in it, the others in seed<k>/), its models' best.pt."""
    folders = [study] + sorted((p for p in study.glob("seed*") if p.is_dir()), key=lambda p: int(p.name[4:] or 0))
    seeds = []
    for f in folders:
        found = {m: str(f / m / "best.pt") for m in MODELS if (f / m / "best.pt").is_file()}
        if found:
            seeds.append(found)
    if not seeds or not all({"at", "random"} <= set(s) for s in seeds):
        raise ChanscopeError(f"{study} holds no study with an AT model and its random control in every seed; give "
                             "the folder of `chanscope reproduce` (its `out`)")
    return seeds


def grid_markdown(df: pd.DataFrame) -> str:
    """sensitivity.md: per observation, one row per cell with AT's and the control's value and the verdict."""
    lines = ["Each cell: the statistic of AT and of the random control with 95% intervals (test images and seeds); "
             "`inside`: the paired AT - control interval includes 0 (AT not told apart from the control); the "
             "verdict is the observation's rule in this cell.", ""]
    for obs, g in df.groupby("observation", sort=True):
        lines += [f"## Observation {obs}: {g.statistic.iloc[0]}", "",
                  "| layer | relevance | attack | AT | random control | inside | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for r in g.itertuples():
            ctl = f"{r.control_value:+.3f} [{r.control_lo:+.3f}, {r.control_hi:+.3f}]" + (
                "" if r.control_valid else " (invalid)")
            lines.append(f"| {r.layer} | {r.relevance} | {r.attack} | {r.value:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] | "
                         f"{ctl} | {'yes' if r.control_inside else 'no'} | {r.verdict} |")
        lines.append("")
    return "\n".join(lines)


def explained_markdown(ex: pd.DataFrame) -> str:
    """The NR over-activation at the classifier's input, measured and as W and the logit change alone explain it."""
    if not len(ex):
        return ""
    lines = ["## Observation 2 at the classifier's input: what W and the logit change explain", "",
             "NR over-activation measured, and computed from the minimum-norm feature change with the attack's logit "
             "change (W^+ W dm; docs/analysis.md), with 95% intervals; share = explained / measured.", "",
             "| attack | model | measured | explained by W and the logit change | share |", "|---|---|---|---|---|"]
    for r in ex.itertuples():
        lines.append(f"| {r.attack} | {r.model} | {r.measured:+.3f} [{r.measured_lo:+.3f}, {r.measured_hi:+.3f}] | "
                     f"{r.explained:+.3f} [{r.explained_lo:+.3f}, {r.explained_hi:+.3f}] | {r.share:.2f} |")
    return "\n".join(lines) + "\n"


def run_sensitivity(study: str | Path, out: str | Path | None = None, *, layers: list[str] | None = None,
                    relevances: list[str] | None = None, attacks: list[str] | None = None, n: int = 500,
                    device: str | None = None, on_plan: Callable[[GridPlan], None] | None = None,
                    say: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """The grid over a `chanscope reproduce` folder into `out` (default `<study>/sensitivity`):
    sensitivity.csv, sensitivity.md, sensitivity.json, figures/sensitivity.png and, where the grid has the
    classifier's input, sensitivity_explained.csv (observation 2 as W and the logit change explain it); returns
    the table."""
    from chanscope.models.sources import load_model
    from chanscope.names import RELEVANCE_METHODS
    from chanscope.workflows.runs import data_of_run

    study = Path(study)
    seeds = _study_models(study)
    rel = list(relevances or GRID_RELEVANCES)
    bad = [r for r in rel if r not in RELEVANCE_METHODS]
    if bad:
        raise ChanscopeError(f"unknown relevance {bad[0]!r}; known: {', '.join(RELEVANCE_METHODS)}")
    atk = list(attacks or GRID_ATTACKS)
    record = read_json(study / "pipeline.json") if (study / "pipeline.json").is_file() else {}
    threat = (record.get("options") or {}).get("threat_model", "linf")  # the study's own threat model
    for a in atk:  # before a model is read
        if len(GridPlan([], [], rel, atk, n, threat).spec(a)) != 1:
            raise ChanscopeError(f"`attacks` takes attacks one by one, e.g. pgd20,cw20; got {a!r}")
    first = load_model(seeds[0]["at"], "cpu")
    plan = GridPlan(seeds, list(layers or default_layers(first)), rel, atk, n, threat)
    data = data_of_run(seeds[0]["at"])
    out = writable_dir(out or study / "sensitivity")
    with folder_lock(out):
        if on_plan:
            on_plan(plan)
        t0 = time.time()
        df = sensitivity_grid(plan, data, device=device, cache=out / "cache", say=say)
        atomic_write_csv(out / "sensitivity.csv", df)
        explained = df.attrs.get("explained", pd.DataFrame())
        if len(explained):
            atomic_write_csv(out / "sensitivity_explained.csv", explained)
        atomic_write_bytes(out / "sensitivity.md", (grid_markdown(df) + explained_markdown(explained)).encode())
        atomic_write_json(out / "sensitivity.json", {"study": str(study), "layers": plan.layers,
                                                     "relevances": rel, "attacks": atk, "n": n,
                                                     "seeds": len(seeds), "passes": plan.passes,
                                                     "threat_model": plan.threat_model,
                                                     "wall_seconds": round(time.time() - t0, 1)})
        from chanscope.workflows.plots import sensitivity_plot

        sensitivity_plot(df, out / "figures")
    return df
