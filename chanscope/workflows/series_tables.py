"""The series' tables, drawn from its finished study folders: one row per budget, method and seed
(series.csv), the AT - CIFS gap per budget with intervals, how it changes with budget, and series.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chanscope.observe.verdicts import Interval, Seed, accuracy, interval
from chanscope.scales import Budget
from chanscope.workflows.collect import attack_named, overall_accuracy

__all__ = ["summarise", "gaps", "trend", "trend_sentence", "markdown", "SERIES_COLUMNS"]

SERIES_COLUMNS = ["budget", "compute", "method", "seed", "natural", "pgd20", "cw20", "adaptive", "autoattack",
                  "autoattack_ref", "worst_case", "train_batch_acc", "train_eval_nat_acc", "train_eval_pgd_acc",
                  "label_leak", "seconds"]


def _runs(out: Path, budgets: list[Budget], seeds: int, seed: int):
    for b in budgets:
        for k in range(seeds):
            yield b, seed + k, out / b.label / ("" if k == 0 else f"seed{seed + k}")


def summarise(out: str | Path, budgets: list[Budget], seeds: int, seed: int = 0) -> pd.DataFrame:
    """One row per budget, method and seed that has been evaluated (SERIES_COLUMNS)."""
    from chanscope.observe.verdicts import worst_case

    rows = []
    for b, s, folder in _runs(Path(out), budgets, seeds, seed):
        for method in ("at", "cifs"):
            run = folder / method
            if not (run / "eval.csv").is_file() or not (run / "metrics.csv").is_file():
                continue
            o = overall_accuracy(run)  # eval.csv and aa/eval.csv
            m = pd.read_csv(run / "metrics.csv")
            last = m.iloc[-1]
            adaptive = o.get(attack_named(o, "adaptive"), np.nan)
            ex = run / "eval_examples.csv"
            rows.append({"budget": b.label, "compute": b.compute, "method": method, "seed": s,
                         "natural": o["natural"], "pgd20": o.get("pgd20", np.nan), "cw20": o.get("cw20", np.nan),
                         "adaptive": adaptive, "autoattack": o.get("aa", np.nan),
                         "autoattack_ref": o.get("aa-ref", np.nan),
                         "worst_case": worst_case(pd.read_csv(ex), None) if ex.is_file() else np.nan,
                         "train_batch_acc": float(last.train_acc),
                         "train_eval_nat_acc": float(last.get("train_eval_nat_acc", np.nan)),
                         "train_eval_pgd_acc": float(last.get("train_eval_pgd_acc", np.nan)),
                         "label_leak": float(last.train_acc - last.get("train_eval_pgd_acc", np.nan)),
                         "seconds": round(float(m.seconds.sum()), 1)})
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def gaps(out: str | Path, budgets: list[Budget], seeds: int, seed: int = 0) -> pd.DataFrame:
    """Per budget: worst-case robust accuracy of AT and CIFS and the AT - CIFS gap, each with its 95% interval
    (bootstrap over test images, paired, and over seeds)."""
    from chanscope.observe.verdicts import worst_case

    rows = []
    for b in budgets:
        ss = [Seed(ev=ev) for ev in _evaluated(Path(out), b, seeds, seed)]
        if not ss:
            continue
        stats: dict[str, Interval] = {
            m: interval(ss, lambda s, w, m=m: worst_case(s.ev[m], w), "ev") for m in ("at", "cifs")}
        stats["at - cifs"] = interval(ss, lambda s, w: worst_case(s.ev["at"], w) - worst_case(s.ev["cifs"], w), "ev")
        # the same gap under PGD-20 alone (CIFS's final logits): what an evaluation without the adaptive attack sees
        if all("pgd20" in e for s in ss for e in s.ev.values()):
            stats["at - cifs, pgd20"] = interval(
                ss, lambda s, w: accuracy(s.ev["at"].pgd20.to_numpy(), w) - accuracy(s.ev["cifs"].pgd20.to_numpy(), w),
                "ev")
        for what, iv in stats.items():
            rows.append({"budget": b.label, "compute": b.compute, "what": what, "seeds": len(ss), "value": iv.value,
                         "lo": iv.lo, "hi": iv.hi})
    return pd.DataFrame(rows, columns=["budget", "compute", "what", "seeds", "value", "lo", "hi"])


def _evaluated(out: Path, b: Budget, seeds: int, seed: int) -> list[dict[str, pd.DataFrame]]:
    """AT's and CIFS's per-image records at budget b, one dict per seed that has evaluated both."""
    found = []
    for _, _, folder in _runs(out, [b], seeds, seed):
        ev = {m: folder / m / "eval_examples.csv" for m in ("at", "cifs")}
        if all(p.is_file() for p in ev.values()):
            found.append({m: pd.read_csv(p) for m, p in ev.items()})
    return found


def trend(out: str | Path, budgets: list[Budget], seeds: int, seed: int = 0) -> dict | None:
    """How the AT - CIFS gap (worst-case robust accuracy) changes from the smallest to the largest budget that
    every seed has evaluated: the change with its 95% interval, paired within a seed (a seed evaluates every
    budget on the same test images), and what it says: one method gains on the other only where the interval
    excludes zero; which side of zero each budget's gap lies on is the gap's own interval (series.md). None
    with fewer than two such budgets."""
    from chanscope.observe.verdicts import worst_case

    done = [(b, ev) for b in budgets if len(ev := _evaluated(Path(out), b, seeds, seed)) == seeds]
    if len(done) < 2:
        return None
    (small, e0), (large, e1) = done[0], done[-1]
    ss = [Seed(ev={f"{m}@{k}": e[m] for k, e in (("s", a), ("l", b)) for m in ("at", "cifs")})
          for a, b in zip(e0, e1)]

    def gap(s: Seed, w, k: str) -> float:
        return worst_case(s.ev[f"at@{k}"], w) - worst_case(s.ev[f"cifs@{k}"], w)

    iv = interval(ss, lambda s, w: gap(s, w, "l") - gap(s, w, "s"), "ev")
    g0, g1 = (float(np.mean([gap(s, None, k) for s in ss])) for k in ("s", "l"))
    reading = ("no change the interval can tell apart from zero" if iv.lo <= 0 <= iv.hi else
               "CIFS gains on AT with budget (the AT - CIFS gap falls)" if iv.hi < 0 else
               "AT gains on CIFS with budget (the AT - CIFS gap grows)")
    return {"from": small.label, "to": large.label, "compute_ratio": large.compute / small.compute,
            "gap_from": g0, "gap_to": g1, "change": iv.value, "lo": iv.lo, "hi": iv.hi, "seeds": len(ss),
            "reading": reading}


# series.md's table of means: series.csv's column and its heading
_MEANS = [("natural", "natural"), ("pgd20", "PGD-20"), ("cw20", "CW-20"), ("adaptive", "adaptive"),
          ("autoattack", "AutoAttack"), ("worst_case", "worst case"), ("train_batch_acc", "train batch"),
          ("train_eval_pgd_acc", "train, eval-mode PGD"), ("label_leak", "label leak"),
          ("seconds", "train min (epochs)")]


def markdown(g: pd.DataFrame, tr: dict | None, df: pd.DataFrame | None = None, threat_model: str = "linf") -> str:
    """series.md: per budget the worst-case robust accuracy of AT and CIFS and their gap with 95% intervals,
    the change of the gap from the smallest to the largest budget, and (given series.csv's rows) each method's
    accuracies, label leak and training time, means over seeds."""
    norm = {"linf": "L-inf, eps 8/255", "l2": "L2, eps 0.5"}[threat_model]
    lines = [f"Worst-case robust accuracy in % under {norm} (per image over every attack, the adaptive one through "
             "the mask included), mean over seeds with 95% intervals (test images and seeds).", "",
             "The last column is the gap under PGD-20 alone (CIFS's final logits), as an evaluation without the "
             "adaptive attack would see it.", "",
             "| budget | compute | seeds | AT | CIFS | AT - CIFS | AT - CIFS, PGD-20 only |", "|---" * 7 + "|"]
    for b, rows in g.groupby("budget", sort=False):
        r = rows.set_index("what")
        cells = [f"{r.value[w]:{f}.1f} [{r.lo[w]:{f}.1f}, {r.hi[w]:{f}.1f}]" if w in r.index else "-"
                 for w, f in (("at", ""), ("cifs", ""), ("at - cifs", "+"), ("at - cifs, pgd20", "+"))]
        lines.append(f"| {b} | {int(r.compute.iloc[0]):,} | {int(r.seeds.iloc[0])} | {' | '.join(cells)} |")
    if tr:
        lines += ["", trend_sentence(tr)]
    if df is not None and len(df):
        lines += ["", "Accuracy in % (AutoAttack on the eval subset), label leak in points, training minutes; means "
                  "over the seeds.", "", "| budget | method | seeds | " + " | ".join(h for _, h in _MEANS) + " |",
                  "|---|---|---|" + "---|" * len(_MEANS)]
        for (b, m), rows in df.groupby(["budget", "method"], sort=False):
            cells = [_mean_cell(rows[c] / (60 if c == "seconds" else 1)) for c, _ in _MEANS]
            lines.append(f"| {b} | {m.upper()} | {len(rows)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _mean_cell(v: pd.Series) -> str:
    """The mean over seeds; '-' where no seed has the value yet, the count where only some have it."""
    n = int(v.notna().sum())
    return "-" if n == 0 else f"{v.mean():.1f}" + ("" if n == len(v) else f" ({n} of {len(v)} seeds)")


def trend_sentence(tr: dict) -> str:
    """trend() in one sentence: the gap at both ends, its change with the interval, and what that says."""
    return (f"From {tr['from']} to {tr['to']} ({tr['compute_ratio']:.1f}x the training compute) the gap goes from "
            f"{tr['gap_from']:+.1f} to {tr['gap_to']:+.1f} points: a change of {tr['change']:+.1f} "
            f"[{tr['lo']:+.1f}, {tr['hi']:+.1f}] over {tr['seeds']} seed(s); {tr['reading']}.")
