"""Alignment metrics of the channel-wise study (pure functions on per-class statistics).

channels_table: one row per (class, channel); classes_table: one row per class, computed from the
channels table only, so plots and reports reuse exactly these numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["channels_table", "classes_table", "CHANNEL_COLUMNS", "CLASS_COLUMNS", "cosine", "spearman",
           "most_and_least_robust", "percent"]

CHANNEL_COLUMNS = ["layer", "class", "class_name", "channel", "relevance", "pr_nr", "mag_nat", "mag_adv",
                   "std_nat", "std_adv", "freq_nat", "freq_adv", "n"]
CLASS_COLUMNS = ["layer", "class", "class_name", "n", "nat_acc", "adv_acc", "cosine_adv_nat", "mean_abs_gap",
                 "nr_over_abs", "nr_over_rel", "pr_under_abs", "pr_under_rel", "spearman_nat", "spearman_adv",
                 "n_pr", "n_nr"]


def percent(k: int, n: int) -> float:
    """k of n as a percentage with two decimals: exact to one image in 10,000, and free of float32 noise."""
    return round(100.0 * k / n, 2)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def channels_table(layer: str, classes: list[str], relevance: np.ndarray, mag_nat: np.ndarray,
                   mag_adv: np.ndarray, std_nat: np.ndarray, std_adv: np.ndarray, freq_nat: np.ndarray,
                   freq_adv: np.ndarray, counts: np.ndarray) -> pd.DataFrame:
    """Arrays are (classes, channels) except counts (classes,)."""
    k, c = relevance.shape
    cls = np.repeat(np.arange(k), c)
    df = pd.DataFrame({
        "layer": layer, "class": cls, "class_name": np.asarray(classes, dtype=object)[cls],
        "channel": np.tile(np.arange(c), k), "relevance": relevance.ravel(),
        "pr_nr": np.where(relevance.ravel() > 0, "PR", "NR"),
        "mag_nat": mag_nat.ravel(), "mag_adv": mag_adv.ravel(), "std_nat": std_nat.ravel(),
        "std_adv": std_adv.ravel(), "freq_nat": freq_nat.ravel(), "freq_adv": freq_adv.ravel(),
        "n": np.repeat(counts.astype(int), c),
    })
    return df[CHANNEL_COLUMNS]


def _rel(diff: float, base: float) -> float:
    return diff / base if base > 0 else float("nan")


def classes_table(channels: pd.DataFrame, nat_acc: dict[int, float], adv_acc: dict[int, float]) -> pd.DataFrame:
    """Per-class alignment metrics from a channels table.

    cosine_adv_nat, mean_abs_gap: of the adversarial vs natural magnitude vectors (observation 1).
    nr_over_abs: mean of (mag_adv - mag_nat) over NR channels; nr_over_rel: that / mean mag_nat over NR
    (observation 2). pr_under_*: the same with (mag_nat - mag_adv) over PR channels.
    spearman_nat/adv: rank correlation of magnitude with relevance over channels (observation 3).
    """
    rows = []
    for (layer, c), g in channels.groupby(["layer", "class"], sort=True):
        nat, adv, rel = g.mag_nat.to_numpy(), g.mag_adv.to_numpy(), g.relevance.to_numpy()
        nr, pr = g.pr_nr.to_numpy() == "NR", g.pr_nr.to_numpy() == "PR"
        nr_over = float((adv[nr] - nat[nr]).mean()) if nr.any() else float("nan")
        pr_under = float((nat[pr] - adv[pr]).mean()) if pr.any() else float("nan")
        rows.append({
            "layer": layer, "class": int(c), "class_name": g.class_name.iloc[0], "n": int(g.n.iloc[0]),
            "nat_acc": nat_acc.get(int(c), float("nan")), "adv_acc": adv_acc.get(int(c), float("nan")),
            "cosine_adv_nat": cosine(adv, nat), "mean_abs_gap": float(np.abs(adv - nat).mean()),
            "nr_over_abs": nr_over, "nr_over_rel": _rel(nr_over, float(nat[nr].mean()) if nr.any() else 0.0),
            "pr_under_abs": pr_under, "pr_under_rel": _rel(pr_under, float(nat[pr].mean()) if pr.any() else 0.0),
            "spearman_nat": spearman(nat, rel), "spearman_adv": spearman(adv, rel),
            "n_pr": int(pr.sum()), "n_nr": int(nr.sum()),
        })
    return pd.DataFrame(rows, columns=CLASS_COLUMNS)


def most_and_least_robust(classes: pd.DataFrame, column: str = "adv_acc") -> tuple[str, str]:
    """Class names with the highest and the lowest robust accuracy in a classes table; a tie goes to the class
    listed first (lowest label). Every figure and report picks its robust/non-robust pair here."""
    order = classes.reset_index(drop=True)
    return (str(order.class_name.iloc[int(order[column].to_numpy().argmax())]),
            str(order.class_name.iloc[int(order[column].to_numpy().argmin())]))
