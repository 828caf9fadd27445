"""Observations over a population of models: does a channel statistic predict robust accuracy?

Per model, the observations' statistics are computed from the activation study's per-image records (the same
functions the verdicts read) with 95% bootstrap intervals over its test images. Across models, each statistic's
Spearman correlation with robust accuracy, the same with natural accuracy partialled out (and with natural
accuracy and architecture), a bootstrap interval over models and a permutation p-value. A statistic "predicts
robustness beyond natural accuracy" only when the partial correlation's interval excludes 0 and the permutation
test (Holm-adjusted over the statistics) rejects; a population too small to tell says so instead of a verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanscope.observe.verdicts import _ranks, alignment, class_accuracy, cosine, nr_over, relgap

__all__ = ["STATISTICS", "model_statistics", "across_models", "residual_rank_corr", "MIN_MODELS"]

MIN_MODELS = 6  # fewer models than this: no across-model verdict
ALPHA = 0.05


def _align_mean(ex: dict[str, np.ndarray], w: np.ndarray | None = None) -> float:
    """Observation 3's quantity: mean over classes of the per-class Spearman alignment of adversarial
    magnitude with relevance."""
    return float(np.nanmean(alignment(ex, w)))


def _align_spread(ex: dict[str, np.ndarray], w: np.ndarray | None = None) -> float:
    """Observation 3 between classes: mean alignment of the more robust half of the classes minus that of the
    less robust half (classes ranked by their robust accuracy in this model)."""
    a = alignment(ex, w)
    rob = class_accuracy(ex, w, "adv_ok")
    ok = np.isfinite(a) & np.isfinite(rob)
    if ok.sum() < 2:
        return float("nan")
    order = np.argsort(rob[ok], kind="stable")
    half = len(order) // 2
    return float(np.mean(a[ok][order[-half:]]) - np.mean(a[ok][order[:half]]))


# name -> (function of per-image records and image weights, what it is)
STATISTICS = {
    "cosine": (cosine, "obs. 1: cosine of adversarial and natural class-mean magnitudes"),
    "relgap": (relgap, "obs. 1: mean |adversarial - natural| magnitude / mean natural"),
    "nr_over": (nr_over, "obs. 2: relative rise of NR channels' magnitude under attack"),
    "align": (_align_mean, "obs. 3: mean per-class alignment (Spearman) of magnitude with relevance"),
    "align_spread": (_align_spread, "obs. 3: alignment of the more robust classes minus the less robust"),
}


def model_statistics(ex: dict[str, np.ndarray], n_boot: int = 200, rng: int = 0) -> dict[str, float]:
    """One model's statistics with 95% intervals over its images (resampled within each class): columns
    `<stat>`, `<stat>_lo`, `<stat>_hi`, plus natural and robust accuracy (%) of the records' images."""
    gen = np.random.default_rng(rng)
    y = ex["y"]
    out: dict[str, float] = {"natural_acc": 100 * float(np.mean(ex["nat_ok"])),
                             "robust_acc": 100 * float(np.mean(ex["adv_ok"]))}
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    weights = []
    for _ in range(n_boot):
        pick = np.concatenate([gen.choice(idx, len(idx)) for idx in by_class])
        weights.append(np.bincount(pick, minlength=len(y)).astype(float))
    for name, (f, _) in STATISTICS.items():
        point = f(ex, None)
        draws = np.array([f(ex, w) for w in weights])
        lo, hi = np.nanpercentile(draws, [2.5, 97.5]) if np.isfinite(draws).any() else (np.nan, np.nan)
        out |= {name: point, f"{name}_lo": float(lo), f"{name}_hi": float(hi)}
    return out


def residual_rank_corr(a: np.ndarray, r: np.ndarray, covariates: list[np.ndarray] | None = None,
                       ranked_target: bool = False) -> float:
    """Spearman correlation of a and r; with covariates, of their ranks after both are residualised (least
    squares) on the covariates' columns (ranks of numeric ones, one-hot columns of categorical ones, given
    already encoded)."""
    ra = _ranks(np.asarray(a, float))
    rr = np.asarray(r, float) if ranked_target else _ranks(np.asarray(r, float))
    z = np.ones((len(ra), 1))
    if covariates:
        z = np.column_stack([z, *covariates])
    ea = ra - z @ np.linalg.lstsq(z, ra, rcond=None)[0]
    er = rr - z @ np.linalg.lstsq(z, rr, rcond=None)[0]
    d = np.linalg.norm(ea) * np.linalg.norm(er)
    return float(ea @ er / d) if d > 1e-9 else float("nan")


def _freedman_lane(a: np.ndarray, r: np.ndarray, cov: list[np.ndarray], gen: np.random.Generator,
                   n_perm: int) -> np.ndarray:
    """The partial correlation's null (Freedman and Lane 1983): rank(r)'s residuals on the covariates permuted
    and added back to its fitted values, so that the covariates' relation to r is kept under the null."""
    rr = _ranks(np.asarray(r, float))
    z = np.column_stack([np.ones(len(rr)), *cov])
    fit = z @ np.linalg.lstsq(z, rr, rcond=None)[0]
    res = rr - fit
    return np.array([residual_rank_corr(a, fit + gen.permutation(res), cov, ranked_target=True)
                     for _ in range(n_perm)])


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values (NaN left out and kept NaN)."""
    ps = np.asarray(ps, float)
    ok = np.flatnonzero(np.isfinite(ps))
    out = np.full(len(ps), np.nan)
    order = ok[np.argsort(ps[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * ps[j]))
        out[j] = running
    return out.tolist()


def _one_hot(groups: pd.Series) -> np.ndarray | None:
    """Columns for all but one group (the intercept is the first); None for a single group."""
    levels = sorted(groups.astype(str).unique())
    if len(levels) < 2:
        return None
    return np.column_stack([(groups.astype(str) == g).to_numpy(float) for g in levels[1:]])


def _covariates(df: pd.DataFrame, group: str | None = None) -> list[np.ndarray]:
    """Natural accuracy's ranks, and one-hot columns of the categorical column `group` (arch, method)."""
    cov = [_ranks(df["natural_acc"].to_numpy(float))]
    oh = _one_hot(df[group]) if group and group in df else None
    return cov + ([oh] if oh is not None else [])


def _partial(d: pd.DataFrame, name: str, target: str, group: str | None, gen: np.random.Generator, n_boot: int,
             n_perm: int) -> tuple[float, float, float, float]:
    """Partial rank correlation of statistic and target given the covariates, its bootstrap interval over
    models and its two-sided Freedman-Lane permutation p."""
    a, r, n = d[name].to_numpy(float), d[target].to_numpy(float), len(d)
    cov = _covariates(d, group)
    part = residual_rank_corr(a, r, cov)
    boots = []
    for _ in range(n_boot):
        i = gen.integers(0, n, n)
        boots.append(residual_rank_corr(a[i], r[i], _covariates(d.iloc[i].reset_index(drop=True), group)))
    lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if np.isfinite(boots).any() else (np.nan, np.nan)
    null = _freedman_lane(a, r, cov, gen, n_perm)
    tol = 1e-12
    p = float((1 + np.sum(~(np.abs(null) < abs(part) - tol))) / (n_perm + 1)) if np.isfinite(part) else np.nan
    return part, float(lo), float(hi), p


def across_models(df: pd.DataFrame, target: str = "robust_acc", n_boot: int = 1000, n_perm: int = 2000,
                  rng: int = 0, min_models: int = MIN_MODELS) -> pd.DataFrame:
    """Per statistic of STATISTICS present in df (one row per model, with natural_acc, target and optionally
    arch and method): rank correlation with the target, partial on natural accuracy (interval over models,
    permutation p-value, two-sided, Freedman-Lane), the p-values Holm-adjusted over the statistics, partial on
    natural accuracy and architecture, and the verdict (interval excludes 0 and adjusted p < 0.05). With two or
    more training methods also the partial on natural accuracy and method, with its interval and p
    (`partial_method*`, `p_method`): whether the statistic predicts robustness within method families, not only
    between them; reported beside the verdict, not part of it."""
    rows = []
    gen = np.random.default_rng(rng)
    gen_m = np.random.default_rng([rng, 1])  # its own draws: the natural-accuracy numbers stay as without it
    methods = "method" in df and df["method"].astype(str).nunique() > 1
    nan = float("nan")
    for name in [s for s in STATISTICS if s in df]:
        d = df[np.isfinite(df[name].to_numpy(float)) & np.isfinite(df[target].to_numpy(float))].reset_index(drop=True)
        n = len(d)
        row = {"statistic": name, "what": STATISTICS[name][1], "n_models": n, "rho": nan, "partial": nan,
               "partial_lo": nan, "partial_hi": nan, "p_perm": nan, "partial_arch": nan, "partial_method": nan,
               "partial_method_lo": nan, "partial_method_hi": nan, "p_method": nan}
        if n < 3:
            rows.append(row)
            continue
        a, r = d[name].to_numpy(float), d[target].to_numpy(float)
        part, lo, hi, p = _partial(d, name, target, None, gen, n_boot, n_perm)
        row |= {"rho": residual_rank_corr(a, r), "partial": part, "partial_lo": lo, "partial_hi": hi,
                "p_perm": p, "partial_arch": residual_rank_corr(a, r, _covariates(d, "arch"))}
        if methods:
            pm, lo_m, hi_m, p_m = _partial(d, name, target, "method", gen_m, n_boot, n_perm)
            row |= {"partial_method": pm, "partial_method_lo": lo_m, "partial_method_hi": hi_m, "p_method": p_m}
        rows.append(row)
    df_out = pd.DataFrame(rows)
    df_out["p_holm"] = holm(df_out["p_perm"].tolist())  # five statistics tested at once
    df_out["verdict"] = [_verdict(r, min_models) for r in df_out.to_dict("records")]
    return df_out


def _verdict(row: dict, min_models: int) -> str:
    n = row["n_models"]
    if n < min_models:
        return f"too few models ({n} < {min_models})"
    if not np.isfinite(row["partial"]):
        return "undefined (statistic collinear with natural accuracy)"
    excludes = row["partial_lo"] > 0 or row["partial_hi"] < 0
    if excludes and row["p_holm"] < ALPHA:
        sign = "higher" if row["partial"] > 0 else "lower"
        return f"predicts robust accuracy beyond natural accuracy ({sign} is more robust)"
    return "no evidence beyond natural accuracy"
