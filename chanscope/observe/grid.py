"""The observations on a grid of analysis choices: which layer, which relevance definition, which attack.

Each cell holds, per seed, every model's per-image records at one layer under one attack with one relevance;
the observations' statistics and verdicts are those of `chanscope.observe.verdicts` applied to the cell, each
beside the random control's value of the same statistic in the same cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from chanscope.observe import verdicts
from chanscope.observe.verdicts import Seed, interval

__all__ = ["Cell", "GRID_COLUMNS", "cell_rows", "grid_table", "explained_by_logits", "logit_explanation"]

GRID_COLUMNS = ["layer", "relevance", "attack", "observation", "statistic", "model", "value", "lo", "hi",
                "control", "control_value", "control_lo", "control_hi", "control_valid", "control_inside",
                "verdict", "seeds"]


@dataclass(frozen=True)
class Cell:
    layer: str
    relevance: str
    attack: str


def _gap(ex: dict[str, np.ndarray], w: np.ndarray | None) -> float:
    """Observation 3's halves: alignment of the robust half of the classes minus the non-robust half's."""
    rob, non = verdicts._halves(ex)
    al = verdicts.alignment(ex, w)
    return float(np.nanmean(al[rob]) - np.nanmean(al[non]))


# observation -> (statistic's name, the statistic of one model, the model it is about, its control)
STATISTICS = {
    "1": ("relative gap |adv - nat| / nat, minus the standard model's", verdicts.relgap, "at", "random"),
    "2": ("NR selectivity (NR over-activation / mean relative change)", verdicts.nr_selectivity, "at", "random"),
    "3": ("alignment, robust half - non-robust half", _gap, "at", "random"),
}


def cell_rows(cell: Cell, seeds: list[Seed]) -> list[dict]:
    """One row per observation the cell's models allow: the statistic of AT and of the random control (for
    observation 1 each minus the standard model's, paired), both with 95% intervals over images and seeds,
    whether AT is not told apart from the control (`control_inside`: the paired AT - control interval includes
    0), and the observation's verdict in this cell."""
    rows = []
    valid, _ = verdicts.controls_valid(seeds) if verdicts._need(seeds, ("random",)) else (False, "")
    found = {o["id"]: o for o in verdicts.observations(seeds)}
    for obs, (what, stat, model, control) in STATISTICS.items():
        need = (model, control) + (("standard",) if obs == "1" else ())
        if not verdicts._need(seeds, need):
            continue

        def of(m: str, stat=stat, obs=obs):
            if obs == "1":
                return lambda s, w: stat(s.act[m], w) - stat(s.act["standard"], w)
            return lambda s, w: stat(s.act[m], w)

        v, c = interval(seeds, of(model)), interval(seeds, of(control))
        d = interval(seeds, lambda s, w, a=of(model), b=of(control): a(s, w) - b(s, w))  # paired
        o = found.get(obs)
        rows.append({"layer": cell.layer, "relevance": cell.relevance, "attack": cell.attack, "observation": obs,
                     "statistic": what, "model": model, "value": v.value, "lo": v.lo, "hi": v.hi,
                     "control": control, "control_value": c.value, "control_lo": c.lo, "control_hi": c.hi,
                     "control_valid": bool(valid), "control_inside": bool(d.lo <= 0 <= d.hi),
                     "verdict": o["verdict"] if o else "-", "seeds": len(seeds)})
    return rows


GRID_BOOT, GRID_PERM = 200, 500  # draws per interval and permutations per p-value in a grid (many cells)


def grid_table(cells: dict[Cell, list[Seed]], n_boot: int = GRID_BOOT, n_perm: int = GRID_PERM) -> pd.DataFrame:
    """The tidy table of a grid: one row per layer x relevance x attack x observation (GRID_COLUMNS), every
    interval from n_boot bootstrap draws and every p-value from n_perm permutations."""
    with verdicts.draws(n_boot, n_perm):
        rows = [r for cell, seeds in cells.items() for r in cell_rows(cell, seeds)]
    return pd.DataFrame(rows, columns=GRID_COLUMNS)


def explained_by_logits(ex: dict[str, np.ndarray], weight: np.ndarray) -> dict[str, np.ndarray]:
    """The records as if the attack had changed the features only as much as its logit change demands: at the
    classifier's input (logits z = W m + b) each image's feature change dm is replaced by the minimum-norm change
    with the same logit change, W^+ W dm (its projection onto the row space of W). What survives is the part of
    the NR over-activation that W and the logit change alone explain (docs/analysis.md)."""
    w = np.asarray(weight, dtype=np.float64)
    proj = np.linalg.pinv(w) @ w  # (C, C): onto the span of the classifier's rows
    dm = ex["mag_adv"].astype(np.float64) - ex["mag_nat"].astype(np.float64)
    return {**ex, "mag_adv": (ex["mag_nat"] + dm @ proj).astype(np.float32)}


def logit_explanation(seeds: list[Seed], weights: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Per model: NR over-activation measured and as explained by W and the attack's logit change alone, and
    the share explained (explained / measured), with 95% intervals; `weights[i][model]` is seed i's W."""
    rows = []
    for m in seeds[0].act:
        if not all(m in s.act and m in w for s, w in zip(seeds, weights)):
            continue
        proj = [Seed(act={m: explained_by_logits(s.act[m], w[m])}) for s, w in zip(seeds, weights)]
        meas = interval(seeds, lambda s, w_, m=m: verdicts.nr_over(s.act[m], w_))
        expl = interval(proj, lambda s, w_, m=m: verdicts.nr_over(s.act[m], w_))
        rows.append({"model": m, "measured": meas.value, "measured_lo": meas.lo, "measured_hi": meas.hi,
                     "explained": expl.value, "explained_lo": expl.lo, "explained_hi": expl.hi,
                     "share": expl.value / meas.value if meas.value else float("nan"), "seeds": len(seeds)})
    return pd.DataFrame(rows)
