"""The paper's four observations as rules that can fail (design notes, section 3b).

Every number a verdict reads is recomputed from per-image records (`examples.npz` of the activations stage,
`eval_examples.csv` of the eval stage) and carries a 95% interval: a bootstrap over test images, paired
between models of one seed (they saw the same images in the same order), and over seeds where there are
several (seeds resampled, then images within each). Each rule is a comparison that a control can fail:
the naturally trained model and a randomly initialised network of the same architecture.

With gradient relevance at the penultimate layer the relevance of channel k to class y is W[y, k], and a
cross-entropy attack raises exactly the channels whose W[y, k] is low: "NR channels are over-activated by
adversarial data" is partly true by construction. Only the comparison with the random control says what
adversarial training adds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from chanscope.errors import ChanscopeError

__all__ = ["Seed", "Interval", "interval", "observation_1", "observation_2", "observation_3", "observation_4",
           "observations", "class_means", "nr_over", "nr_selectivity", "alignment", "accuracy", "worst_case",
           "control_validity", "controls_valid", "Validity", "combine_p"]

N_BOOT = 1000
N_PERM = 2000
_DRAWS: ContextVar[tuple[int | None, int | None]] = ContextVar("draws", default=(None, None))


@contextmanager
def draws(n_boot: int | None = None, n_perm: int | None = None) -> Iterator[None]:
    """Bootstrap draws and permutations of every interval and p-value computed inside (None: N_BOOT, N_PERM);
    a grid of many cells takes fewer, and says so."""
    token = _DRAWS.set((n_boot, n_perm))
    try:
        yield
    finally:
        _DRAWS.reset(token)


@dataclass(eq=False)
class Seed:
    """One seed's per-image records: model -> activations examples, model -> eval examples."""

    act: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    ev: dict[str, pd.DataFrame] = field(default_factory=dict)
    act_attack: dict[str, str] = field(default_factory=dict)  # model -> the attack of its activations stage

    def n(self, source: str) -> int:
        per = {m: len(v["y"]) for m, v in self.act.items()} if source == "act" else \
            {m: len(v) for m, v in self.ev.items()}
        if len(set(per.values())) != 1:
            what = "activations (examples.npz)" if source == "act" else "eval (eval_examples.csv)"
            raise ChanscopeError(f"the models of one seed saw different numbers of test images in their {what}: "
                                 + ", ".join(f"{m} {k}" for m, k in per.items())
                                 + "; run the study command again: it remeasures a model whose files another "
                                 "command replaced (or rerun that model's stage as pipeline.json records it)")
        return next(iter(per.values()))


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"

    def pct(self) -> str:
        return f"{self.value:.1f}% [{self.lo:.1f}, {self.hi:.1f}]"


Stat = Callable[[Seed, "np.ndarray | None"], float]


def interval(seeds: list[Seed], stat: Stat, source: str = "act", n_boot: int | None = None, rng: int = 0) -> Interval:
    """The statistic's mean over seeds and its 95% bootstrap interval.

    stat(seed, w) computes the statistic of one seed with image weights w (how often each image was drawn;
    None: every image once); one w serves every model of the seed, so differences between models are paired.
    """
    gen = np.random.default_rng(rng)
    n_boot = n_boot or _DRAWS.get()[0] or N_BOOT
    point = float(np.mean([stat(s, None) for s in seeds]))
    draws = np.empty(n_boot)
    for b in range(n_boot):
        picked = gen.integers(0, len(seeds), len(seeds)) if len(seeds) > 1 else [0]
        vals = []
        for i in picked:
            n = seeds[i].n(source)
            vals.append(stat(seeds[i], np.bincount(gen.integers(0, n, n), minlength=n).astype(np.float64)))
        draws[b] = np.mean(vals)
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return Interval(point, float(lo), float(hi))


# ------------------------------------------------------------------------------------ per-image statistics
def class_means(ex: dict[str, np.ndarray], w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean natural and adversarial magnitudes (classes, channels) under image weights w; NaN rows
    for classes a resample left without images (statistics average over the classes present)."""
    key = (ex["y"], ex["mag_nat"], ex["mag_adv"], ex["relevance"], w)
    hit = _LAST.get("means")
    if hit is not None and all(a is b for a, b in zip(hit[0], key)):  # the same draw asked again
        return hit[1]
    out = _class_means(ex, w)
    _LAST["means"] = (key, out)
    return out


_LAST: dict[str, tuple] = {}  # class_means' last (its arrays and weights, result): by identity, never contents


def _class_means(ex: dict[str, np.ndarray], w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    k = ex["relevance"].shape[0]
    w = np.ones(len(ex["y"])) if w is None else w
    counts = np.bincount(ex["y"], weights=w, minlength=k)[:, None]
    c = ex["mag_nat"].shape[1]
    cell = (ex["y"][:, None] * c + np.arange(c)).ravel()  # (class, channel) of every image's magnitudes
    # per-class sums by bincount, not a matmul: BLAS threads on a busy CPU made this a hundred times slower
    sums = [np.bincount(cell, weights=(ex[key] * w[:, None]).ravel(), minlength=k * c).reshape(k, c)
            for key in ("mag_nat", "mag_adv")]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0: a class without images
        return sums[0] / counts, sums[1] / counts


def class_accuracy(ex: dict[str, np.ndarray], w: np.ndarray | None, key: str) -> np.ndarray:
    k = ex["relevance"].shape[0]
    w = np.ones(len(ex["y"])) if w is None else w
    hit = np.bincount(ex["y"], weights=w * ex[key], minlength=k)
    return 100.0 * hit / np.bincount(ex["y"], weights=w, minlength=k).clip(min=1e-12)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(min=1e-12)


def cosine(ex: dict[str, np.ndarray], w: np.ndarray | None = None) -> float:
    """Observation 1: mean over classes of cosine(adversarial, natural) magnitude vectors."""
    nat, adv = class_means(ex, w)
    return float(np.nanmean(_cosine_rows(adv, nat)))


def relgap(ex: dict[str, np.ndarray], w: np.ndarray | None = None) -> float:
    """Observation 1: mean |adversarial - natural| magnitude over classes and channels / mean natural."""
    nat, adv = class_means(ex, w)
    return float(np.nanmean(np.abs(adv - nat)) / max(np.nanmean(nat), 1e-12))


def nr_over(ex: dict[str, np.ndarray], w: np.ndarray | None = None, nr: np.ndarray | None = None) -> float:
    """Observation 2: mean over classes of (mean over NR channels of adv - nat) / (mean over NR of nat).

    nr: (classes, channels) bool, default relevance < 0 (the permutation null passes shuffled ones)."""
    nat, adv = class_means(ex, w)
    return float(np.nanmean(_nr_over_rows(nat, adv, ex["relevance"] < 0 if nr is None else nr)))


def _nr_over_rows(nat: np.ndarray, adv: np.ndarray, nr: np.ndarray) -> np.ndarray:
    """Per class: mean over its NR channels of (adv - nat) / mean over them of nat; NaN for a class without NR
    channels (or without images)."""
    cnt = nr.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        over = ((adv - nat) * nr).sum(1) / cnt
        base = (nat * nr).sum(1) / cnt
    return np.where(cnt > 0, over / np.clip(base, 1e-12, None), np.nan)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share), along the last axis."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def alignment(ex: dict[str, np.ndarray], w: np.ndarray | None = None, kind: str = "adv") -> np.ndarray:
    """Observation 3: per class, Spearman correlation over channels of magnitude (adversarial by default)
    with relevance."""
    nat, adv = class_means(ex, w)
    ra, rr = _ranks(adv if kind == "adv" else nat), _ranks(ex["relevance"])
    ra, rr = ra - ra.mean(1, keepdims=True), rr - rr.mean(1, keepdims=True)
    return (ra * rr).sum(1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rr, axis=1)).clip(min=1e-12)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / d) if d > 0 else float("nan")


def _partial(ra: np.ndarray, rr: np.ndarray, rz: np.ndarray) -> float:
    """Correlation of ranks ra and rr after both are residualised on ranks rz."""
    rz = rz - rz.mean()
    den = max(float(rz @ rz), 1e-12)
    ea, er = ra - ra.mean(), rr - rr.mean()
    return _pearson(ea - rz * (ea @ rz) / den, er - rz * (er @ rz) / den)


def partial_rank_corr(a: np.ndarray, r: np.ndarray, z: np.ndarray) -> float:
    """Rank correlation of a and r with the ranks of z partialled out (both residualised on rank(z))."""
    return _partial(_ranks(a), _ranks(r), _ranks(z))


def permutation_p(stat: Callable[[np.ndarray], float], r: np.ndarray, n_perm: int | None = None,
                  rng: int = 0) -> float:
    """One-sided p-value of stat(r) against stat over random permutations of r (add-one)."""
    gen = np.random.default_rng(rng)
    n_perm = n_perm or _DRAWS.get()[1] or N_PERM
    obs = stat(r)
    if not np.isfinite(obs):  # e.g. a partial correlation of collinear ranks: no evidence either way
        return float("nan")
    null = np.array([stat(gen.permutation(r)) for _ in range(n_perm)])
    return float((1 + np.sum((null >= obs) | ~np.isfinite(null))) / (n_perm + 1))  # undefined counts against


# ---------------------------------------------------------------------------------- controls and p-values
CONTROL_MIN_ENTROPY = 0.5  # normalised entropy of the predicted classes (0: one class for every image, 1: uniform)
CONTROL_MIN_FLIPPED = 0.2  # fraction of test images whose prediction the attack changes


@dataclass(frozen=True)
class Validity:
    """Whether a control network can serve as one: a classifier whose predictions spread over the classes and
    that the attack moves. A network that predicts one class for every image, or that no attack changes, shows
    no effect of the attack by construction, so no comparison with it says anything."""

    entropy: float  # normalised entropy of the natural predictions' class histogram
    flipped: float  # fraction of images whose predicted class the attack changed
    loss_increase: float  # mean cross-entropy under attack minus natural
    accuracy: float  # natural accuracy (%)
    valid: bool
    why: str  # what failed, or "valid"

    def __str__(self) -> str:
        return (f"{'valid' if self.valid else 'INVALID (' + self.why + ')'}: prediction entropy {self.entropy:.2f}, "
                f"attack changed {100 * self.flipped:.0f}% of predictions, loss +{self.loss_increase:.2f}, natural "
                f"accuracy {self.accuracy:.1f}%")


def control_validity(ex: dict[str, np.ndarray]) -> Validity:
    """A control's validity from its activation study's per-image records (pred_nat, pred_adv, loss_nat,
    loss_adv); records made before these were kept are invalid ("not recorded")."""
    if not all(k in ex for k in ("pred_nat", "pred_adv", "loss_nat", "loss_adv")):
        return Validity(float("nan"), float("nan"), float("nan"), float("nan"), False,
                        "validity not recorded: rerun its activation study")
    k = ex["relevance"].shape[0]
    freq = np.bincount(ex["pred_nat"], minlength=k) / max(1, len(ex["pred_nat"]))
    nz = freq[freq > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(k)) if k > 1 else 0.0
    flipped = float(np.mean(ex["pred_nat"] != ex["pred_adv"]))
    rise = float(np.mean(ex["loss_adv"] - ex["loss_nat"]))
    fails = [f"entropy {entropy:.2f} < {CONTROL_MIN_ENTROPY}" if entropy < CONTROL_MIN_ENTROPY else "",
             f"the attack changes {100 * flipped:.0f}% < {100 * CONTROL_MIN_FLIPPED:.0f}% of predictions"
             if flipped < CONTROL_MIN_FLIPPED else "",
             "the attack does not raise the loss" if not rise > 0 else ""]
    fails = [f for f in fails if f]
    return Validity(entropy, flipped, rise, 100.0 * float(np.mean(ex["nat_ok"])), not fails,
                    "; ".join(fails) or "valid")


def combine_p(ps: list[float]) -> float:
    """Fisher's combination of independent one-sided p-values (one per seed): -2 sum log p ~ chi2(2k). A mean
    of p-values is not a p-value; NaN (no evidence from a seed) makes the combination NaN."""
    from scipy.stats import chi2

    ps = [float(p) for p in ps]
    if not ps or any(not np.isfinite(p) for p in ps):
        return float("nan")
    return float(chi2.sf(-2.0 * np.sum(np.log(np.clip(ps, 1e-300, 1.0))), 2 * len(ps)))


# -------------------------------------------------------------------------------------------- the rules
def _need(seeds: list[Seed], models: tuple[str, ...], source: str = "act") -> bool:
    return bool(seeds) and all(m in (s.act if source == "act" else s.ev) for s in seeds for m in models)


def _row(number: str, title: str, verdict: str, rule: str, numbers: str, control: str, shows: str) -> dict:
    """An observation's verdict; `id` is its number (1, 2, 3, 3', 4), `observation` number and title."""
    return {"id": number, "observation": f"{number}. {title}", "verdict": verdict, "rule": rule, "numbers": numbers,
            "control": control,
            "what it shows": shows}


def controls_valid(seeds: list[Seed], model: str = "random") -> tuple[bool, str]:
    """Whether `model` is a valid control in every seed, and each seed's validity in words."""
    vs = [control_validity(s.act[model]) for s in seeds]
    return all(v.valid for v in vs), "; ".join(f"seed {i}: {v}" for i, v in enumerate(vs))


def observation_1(seeds: list[Seed]) -> dict | None:
    """AT aligns adversarial with natural activations: its relative gap |adv - nat| / nat falls below the
    standard model's by more than the interval of the paired difference. The cosine of the two magnitude
    vectors is reported beside it, but does not decide: it is near 1 for every model (random networks too)."""
    if not _need(seeds, ("standard", "at")):
        return None
    cos = {m: interval(seeds, lambda s, w, m=m: cosine(s.act[m], w)) for m in ("standard", "at")}
    gap = {m: interval(seeds, lambda s, w, m=m: relgap(s.act[m], w)) for m in ("standard", "at")}
    d_cos = interval(seeds, lambda s, w: cosine(s.act["at"], w) - cosine(s.act["standard"], w))
    d_gap = interval(seeds, lambda s, w: relgap(s.act["at"], w) - relgap(s.act["standard"], w))
    verdict = "holds" if d_gap.hi < 0 else "does not hold" if d_gap.lo > 0 else "unclear"
    ctl = ""
    if _need(seeds, ("random",)):
        ok, why = controls_valid(seeds)
        ctl = (f"; random network ({'valid' if ok else 'control invalid'}): relative gap "
               f"{interval(seeds, lambda s, w: relgap(s.act['random'], w))}, cosine "
               f"{interval(seeds, lambda s, w: cosine(s.act['random'], w))}")
    return _row("1", "AT aligns adversarial with natural activations", verdict,
                "AT - standard relative gap |adv - nat| / nat: interval below 0 (the cosine, near 1 for every model, "
                "is reported, not decisive)",
                f"relative gap standard {gap['standard']}, AT {gap['at']}, AT - standard {d_gap}; cosine standard "
                f"{cos['standard']}, AT {cos['at']}, AT - standard {d_cos}",
                "the standard model is the control" + ctl,
                "whether AT's adversarial channel magnitudes stay closer to the natural ones than a standard "
                "model's on the same images; not why, nor whether it holds at other layers")


def _nr_null_p(ex: dict[str, np.ndarray], n_perm: int | None = None, rng: int = 0) -> float:
    """Relevance-sign permutation null: NR labels shuffled across channels within each class (same count)."""
    gen = np.random.default_rng(rng)
    n_perm = n_perm or min(1000, _DRAWS.get()[1] or 1000)
    nr = ex["relevance"] < 0
    obs = nr_over(ex)  # class_means keeps the class means of ex: the permutations below do not recompute them
    null = [nr_over(ex, None, np.array([gen.permutation(row) for row in nr])) for _ in range(n_perm)]
    return float((1 + np.sum(np.array(null) >= obs)) / (n_perm + 1))


def nr_selectivity(ex: dict[str, np.ndarray], w: np.ndarray | None = None) -> float:
    """Observation 2 beyond the attack's overall reach: NR over-activation in units of the model's mean relative
    change of every channel (relgap). 1: NR channels move as much as the average channel; a network the attack
    moves more overall has a larger NR over-activation for that reason alone, not a larger selectivity."""
    return nr_over(ex, w) / max(relgap(ex, w), 1e-12)


def pr_over(ex: dict[str, np.ndarray], w: np.ndarray | None = None) -> float:
    """The NR statistic on the PR channels (relevance > 0): the within-model comparison of observation 2."""
    return nr_over(ex, w, ex["relevance"] > 0)


def observation_2(seeds: list[Seed]) -> dict | None:
    """Under AT the NR channels are over-activated by adversarial data, beyond what the attack does to any
    network: AT's NR over-activation is above 0, and its NR selectivity (NR over-activation over the mean
    relative change of all channels) above a valid random control's (paired), both by more than the interval.
    With an invalid control (one class predicted, or an attack that changes nothing) the verdict is
    "control invalid" unless AT's own interval already says "does not hold"."""
    if not _need(seeds, ("at", "random")):
        return None
    v = {m: interval(seeds, lambda s, w, m=m: nr_over(s.act[m], w)) for m in ("at", "random", "standard")
         if _need(seeds, (m,))}
    sel = {m: interval(seeds, lambda s, w, m=m: nr_selectivity(s.act[m], w)) for m in v}
    diff = interval(seeds, lambda s, w: nr_over(s.act["at"], w) - nr_over(s.act["random"], w))
    d_sel = interval(seeds, lambda s, w: nr_selectivity(s.act["at"], w) - nr_selectivity(s.act["random"], w))
    within = interval(seeds, lambda s, w: nr_over(s.act["at"], w) - pr_over(s.act["at"], w))
    ps = [_nr_null_p(s.act["at"]) for s in seeds]
    ok, why = controls_valid(seeds)
    if v["at"].hi < 0:
        verdict = "does not hold"
    elif not ok:
        verdict = "control invalid"
    else:
        verdict = ("holds" if v["at"].lo > 0 and d_sel.lo > 0 else
                   "does not hold" if d_sel.hi < 0 else "unclear")
    std = f"; standard model {v['standard']}, selectivity {sel['standard']}" if "standard" in v else ""
    return _row("2", "Under AT, NR channels are still over-activated by adversarial data", verdict,
                "AT's NR over-activation interval above 0 and AT - random NR selectivity (NR over-activation / the "
                "mean relative change of all channels) interval above 0, with the random network a valid control",
                f"NR over-activation (relative to natural) AT {v['at']}, AT - random {diff}; NR selectivity AT "
                f"{sel['at']}, random {sel['random']}, AT - random {d_sel}; within AT, NR - PR over-activation "
                f"{within}; relevance-sign permutation null for AT: p = {combine_p(ps):.4f} (Fisher over "
                f"{len(ps)} seed(s): {', '.join(f'{p:.4f}' for p in ps)})",
                f"random network {v['random']} ({why}){std}",
                "whether AT singles out NR channels more than a network of random features under the same attack; "
                "part of the effect is built into gradient relevance and a CE attack")


def _halves(ex: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Classes ordered by robust accuracy on all images (ties: lower label first): robust half, the rest."""
    acc = class_accuracy(ex, None, "adv_ok")
    order = sorted(range(len(acc)), key=lambda c: (-acc[c], c))
    half = len(order) // 2
    return np.array(order[:half]), np.array(order[half:])


def _per_seed(values: list[float], ps: list[float]) -> str:
    out = ", ".join(f"{v:+.2f} (p = {p:.4f})" for v, p in zip(values, ps))
    finite = [v for v in values if np.isfinite(v)]
    split = len(finite) > 1 and min(finite) < 0 < max(finite)
    return out + ("; the seeds disagree in sign" if split else "")


def observation_3(seeds: list[Seed], model: str = "at") -> list[dict] | None:
    """Robust classes align magnitude with relevance, non-robust ones do not. Two rows:

    3 (as the paper states it): the robust half's alignment (adversarial magnitudes) is above 0 and above the
    non-robust half's, and over classes alignment rises with robust accuracy (rank correlation, permutation
    p-values of the seeds combined by Fisher's method, < 0.05).
    3' (stricter than the paper): the same with natural accuracy controlled (partial rank correlation), since
    per-class alignment tracks how well a class was learned as much as its robustness."""
    if not _need(seeds, (model,)):
        return None
    def part(which: int):  # the halves are chosen on all of a seed's images, then held fixed in every draw
        return lambda s, w: float(np.nanmean(alignment(s.act[model], w)[_halves(s.act[model])[which]]))

    rob, non = interval(seeds, part(0)), interval(seeds, part(1))
    gap = interval(seeds, lambda s, w: part(0)(s, w) - part(1)(s, w))
    per = [(alignment(s.act[model]), class_accuracy(s.act[model], None, "adv_ok"),
            class_accuracy(s.act[model], None, "nat_ok")) for s in seeds]
    ranks = [(_ranks(a), _ranks(r), _ranks(n)) for a, r, n in per]  # permuting r permutes its ranks
    rhos = [_pearson(a, r) for a, r, _ in ranks]
    p_rhos = [permutation_p(lambda rr, a=a: _pearson(a, rr), r) for a, r, _ in ranks]
    parts = [_partial(a, r, n) for a, r, n in ranks]
    p_parts = [permutation_p(lambda rr, a=a, n=n: _partial(a, rr, n), r) for a, r, n in ranks]
    p_rho, p_part = combine_p(p_rhos), combine_p(p_parts)
    rho_nat = float(np.mean([_pearson(a, n) for a, _, n in ranks]))
    halves = f"robust half {rob}, non-robust half {non}, difference {gap}"
    base = "does not hold" if rob.hi <= 0 or gap.hi <= 0 else None

    def verdict(p: float) -> str:
        return base or ("holds" if rob.lo > 0 and gap.lo > 0 and p < 0.05 else "unclear")

    shows = ("with 10 classes a permutation p-value is coarse, and the halves are chosen on the same images; "
             "seeds' p-values are combined by Fisher's method (independent seeds), never averaged")
    return [
        _row("3", "Robust classes align magnitude with relevance, non-robust ones do not", verdict(p_rho),
             "robust half's alignment interval above 0, robust - non-robust interval above 0, and the rank "
             "correlation of alignment with robust accuracy over classes has combined permutation p < 0.05",
             f"alignment = Spearman(adversarial magnitude, relevance) over channels, {model}: {halves}; rank corr. "
             f"with robust accuracy {float(np.mean(rhos)):+.2f}, Fisher p = {p_rho:.4f}; per seed "
             f"{_per_seed(rhos, p_rhos)}",
             "none beyond the halves (the paper's claim)", "whether alignment tracks robustness over classes; "
             + shows),
        _row("3'", "... beyond natural accuracy (stricter than the paper)", verdict(p_part),
             "as 3, with the partial rank correlation (natural accuracy controlled) in place of the rank correlation",
             f"{model}: {halves}; rank corr. with natural accuracy {rho_nat:+.2f}; partial (natural controlled) "
             f"{float(np.mean(parts)):+.2f}, Fisher p = {p_part:.4f}; per seed {_per_seed(parts, p_parts)}",
             "natural accuracy as the confound (partial correlation)",
             "whether alignment tracks robustness beyond how well a class was learned; " + shows)]


def accuracy(ok: np.ndarray, w: np.ndarray | None) -> float:
    """Accuracy (%) of per-image correctness `ok` (0/1), images weighted by w (None: every image once)."""
    w = np.ones(len(ok)) if w is None else w
    return float(100.0 * (ok * w).sum() / w.sum())


def worst_case(ev: pd.DataFrame, w: np.ndarray | None) -> float:
    """Robust accuracy (%) under the worst case per image over every attack in an eval (components aside)."""
    attacks = [c for c in ev.columns if c not in ("label", "natural") and ":" not in c]
    return accuracy(ev[attacks].to_numpy().min(1) if attacks else ev["natural"].to_numpy(), w)


def observation_4(seeds: list[Seed]) -> dict | None:
    """CIFS suppresses NR channels (its NR over-activation under its own adaptive attack is below AT's) and
    beats AT at the same budget (worst case per image over each model's attacks, paired)."""
    if not (_need(seeds, ("at", "cifs"), "ev") and _need(seeds, ("at", "cifs"))):
        return None
    nr = interval(seeds, lambda s, w: nr_over(s.act["cifs"], w) - nr_over(s.act["at"], w))
    acc = {m: interval(seeds, lambda s, w, m=m: worst_case(s.ev[m], w), "ev") for m in ("at", "cifs")}
    diff = interval(seeds, lambda s, w: worst_case(s.ev["cifs"], w) - worst_case(s.ev["at"], w), "ev")
    attacks = {(s.act_attack.get("at"), s.act_attack.get("cifs")) for s in seeds}
    matched = all(a == c and a is not None for a, c in attacks)
    suppress = ("unclear (attacks not matched)" if not matched else
                "holds" if nr.hi < 0 else "does not hold" if nr.lo > 0 else "unclear")
    beats = "holds" if diff.lo > 0 else "does not hold" if diff.hi < 0 else "unclear"
    verdict = ("holds" if suppress == beats == "holds" else
               "does not hold" if "does not hold" in (suppress, beats) else "unclear")
    atk = seeds[0].act_attack
    return _row("4", "CIFS suppresses NR channels and beats AT at the same budget", verdict,
                "CIFS - AT NR over-activation interval below 0 (both under the same attack objective) and CIFS - AT "
                "worst-case "
                "robust accuracy interval above 0 (paired images)",
                f"suppresses: {suppress}, CIFS - AT NR over-activation {nr} (CIFS under {atk.get('cifs', '?')}, AT "
                f"under {atk.get('at', '?')}); beats: {beats}, worst-case robust accuracy AT {acc['at'].pct()}, "
                f"CIFS {acc['cifs'].pct()}, difference {diff.value:+.1f} points [{diff.lo:+.1f}, {diff.hi:+.1f}]",
                "AT at the same budget and warm start",
                "the comparison at this budget and these attacks; a larger budget or a stronger adaptive attack "
                "may change it")


def observations(seeds: list[Seed]) -> list[dict]:
    """Every observation whose models are present, in the paper's order (3 as two rows: as the paper states it,
    and beyond natural accuracy)."""
    out: list[dict] = []
    for f in (observation_1, observation_2, observation_3, observation_4):
        o = f(seeds)
        out += o if isinstance(o, list) else [o] if o is not None else []
    return out


INTERVAL_COLUMNS = ["nat_acc", "adv_acc", "cosine_adv_nat", "nr_over_rel", "spearman_adv"]


def class_intervals(ex: dict[str, np.ndarray], n_boot: int | None = None, rng: int = 0) -> pd.DataFrame:
    """Per class, 95% bootstrap intervals (over the class's test images) of the classes.csv numbers a verdict
    reads: columns <name>_lo and <name>_hi for each of INTERVAL_COLUMNS."""
    gen = np.random.default_rng(rng)
    n_boot = n_boot or _DRAWS.get()[0] or N_BOOT
    k, n = ex["relevance"].shape[0], len(ex["y"])
    draws = np.full((n_boot, len(INTERVAL_COLUMNS), k), np.nan)
    nr = ex["relevance"] < 0
    for b in range(n_boot):
        w = np.zeros(n)
        for c in range(k):  # resample within each class: every class keeps its number of images
            idx = np.flatnonzero(ex["y"] == c)
            if len(idx):
                w += np.bincount(gen.choice(idx, len(idx)), minlength=n)
        nat, adv = class_means(ex, w)
        draws[b] = [class_accuracy(ex, w, "nat_ok"), class_accuracy(ex, w, "adv_ok"), _cosine_rows(adv, nat),
                    _nr_over_rows(nat, adv, nr), alignment(ex, w)]
    lo, hi = np.nanpercentile(draws, 2.5, axis=0), np.nanpercentile(draws, 97.5, axis=0)
    cols = {}
    for i, name in enumerate(INTERVAL_COLUMNS):
        cols[f"{name}_lo"], cols[f"{name}_hi"] = lo[i], hi[i]
    return pd.DataFrame({"class": np.arange(k), **cols})
