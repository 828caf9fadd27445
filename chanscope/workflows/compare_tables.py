"""The comparison's tables, drawn from its finished study folder: compare.csv (a row per method and seed),
compare_intervals.csv (per method and what it is measured under, with intervals, and each minus AT's), the
advantage rule's findings and compare.md."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chanscope.io import read_json
from chanscope.observe.verdicts import Seed, accuracy, interval, nr_over, worst_case
from chanscope.scales import SCALES
from chanscope.workflows.activations import read_examples
from chanscope.workflows.collect import attack_named, overall_accuracy
from chanscope.workflows.protocol import own_attack

__all__ = ["summarise", "intervals", "advantage", "markdown", "COMPARE_COLUMNS", "NR_OVER", "own_attacks"]

COMPARE_COLUMNS = ["method", "seed", "natural", "standard_attack", "standard", "cw", "adaptive", "worst_case",
                   "autoattack", "autoattack_ref", "masking_checks", "train_seconds"]


def _standard_attack(scale: str, method: str = "at") -> str:
    """The attack `method`'s own paper evaluates it with, at the scale's PGD steps: PGD on the final logits'
    cross-entropy (AT, TRADES, FSR), on the joint loss from the clean image (CIFS's official scripts), on the
    joint loss from a random start (CAS's own code)."""
    pgd = next(a for a in SCALES[scale].eval_attacks.split(",") if re.fullmatch(r"pgd\d+(r\d+)?", a))
    return own_attack(method, pgd)


def own_attacks(scale: str, methods: list[str]) -> str:
    return ", ".join(f"{m.upper()} {_standard_attack(scale, m)}" for m in methods)


def _folders(out: Path, seeds: int, seed: int):
    for k in range(seeds):
        yield seed + k, out if k == 0 else out / f"seed{seed + k}"


def summarise(out: str | Path, methods: list[str], scale: str, seeds: int, seed: int = 0) -> pd.DataFrame:
    """One row per method and seed that has been evaluated (COMPARE_COLUMNS)."""
    rows = []
    for s, folder in _folders(Path(out), seeds, seed):
        for m in methods:
            std = _standard_attack(scale, m)
            run = folder / m
            if not (run / "eval.csv").is_file():
                continue
            o = overall_accuracy(run)
            ex = run / "eval_examples.csv"
            metrics = pd.read_csv(run / "metrics.csv") if (run / "metrics.csv").is_file() else None
            rows.append({"method": m, "seed": s, "natural": o["natural"], "standard_attack": std,
                         "standard": o.get(std, np.nan),
                         "cw": o.get(attack_named(o, "cw"), np.nan),
                         "adaptive": o.get(attack_named(o, "adaptive"), np.nan),
                         "worst_case": worst_case(pd.read_csv(ex), None) if ex.is_file() else np.nan,
                         "autoattack": o.get("aa", np.nan), "autoattack_ref": o.get("aa-ref", np.nan),
                         "masking_checks": _masking_checks(run),
                         "train_seconds": round(float(metrics.seconds.sum()), 1) if metrics is not None else np.nan})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _masking_checks(run: Path) -> str:
    """The gradient-masking checks of a run in a word: pass, the checks that failed, or '-' (not run)."""
    checks = read_json(run / "sanity" / "eval.json").get("sanity") or []
    failed = [c["check"] for c in checks if not c["passed"]]
    if not checks:
        return "-"
    return ("FAIL: " + "; ".join(failed)) if failed else "pass"


def intervals(out: str | Path, methods: list[str], scale: str, seeds: int, seed: int = 0) -> pd.DataFrame:
    """Per method: natural accuracy, robust accuracy under the standard attack, CW (where every run has it)
    and the adaptive worst case, the NR over-activation (where every run has its activation study), and each
    minus AT's (paired: the models of a seed see the same test images), with 95% intervals over images and
    seeds."""
    ss = []
    for _, folder in _folders(Path(out), seeds, seed):
        ev = {m: folder / m / "eval_examples.csv" for m in methods}
        if all(p.is_file() for p in ev.values()):
            ss.append(Seed(ev={m: pd.read_csv(p) for m, p in ev.items()}))
    if not ss:
        return pd.DataFrame(columns=["method", "under", "seeds", "value", "lo", "hi"])

    def share(prefix: str):
        def stat(s: Seed, w, m: str) -> float:
            return accuracy(s.ev[m][attack_named(s.ev[m].columns, prefix)].to_numpy(), w)
        return stat

    owns = {m: share(_standard_attack(scale, m)) for m in methods}  # each method under its own paper's attack

    def own(s: Seed, w, m: str) -> float:
        return owns[m](s, w, m)

    stats = {"natural": share("natural"), "standard attack": own,
             "adaptive worst case": lambda s, w, m: worst_case(s.ev[m], w)}
    if all(attack_named(e.columns, "cw") for s in ss for e in s.ev.values()):
        stats["cw"] = share("cw")
    rows = _rows(ss, methods, stats, "ev")
    act = _with_activations(Path(out), seeds, seed, methods)
    if act:
        rows += _rows(act, methods, {NR_OVER: lambda s, w, m: nr_over(s.act[m], w)}, "act")
    return pd.DataFrame(rows)


NR_OVER = "NR over-activation"  # the activation study's statistic (observation 2): adversarial over natural


def _rows(ss: list[Seed], methods: list[str], stats: dict, source: str) -> list[dict]:
    rows = []
    for m in methods:
        for under, f in stats.items():
            iv = interval(ss, lambda s, w, m=m, f=f: f(s, w, m), source)
            rows.append({"method": m, "under": under, "seeds": len(ss), "value": iv.value, "lo": iv.lo, "hi": iv.hi})
            if "at" in methods and m != "at":
                d = interval(ss, lambda s, w, m=m, f=f: f(s, w, m) - f(s, w, "at"), source)
                rows.append({"method": f"{m} - at", "under": under, "seeds": len(ss), "value": d.value, "lo": d.lo,
                             "hi": d.hi})
    return rows


def _with_activations(out: Path, seeds: int, seed: int, methods: list[str]) -> list[Seed]:
    """Every seed's activation examples of each method (each under its own study attack), or none where a
    method of a seed has not been studied yet."""
    paths = [{m: f / m / "examples.npz" for m in methods} for _, f in _folders(out, seeds, seed)]
    if not all(p.is_file() for ps in paths for p in ps.values()):
        return []
    return [Seed(act={m: read_examples(p) for m, p in ps.items()}) for ps in paths]


def _side(lo: float, hi: float) -> str:
    if np.isnan(lo) or np.isnan(hi):
        return "unknown"
    return "ahead" if lo > 0 else "behind" if hi < 0 else "level"


def advantage(iv: pd.DataFrame) -> pd.DataFrame:
    """Per method against AT: its difference under the standard attack and under the adaptive worst case, where
    each interval puts it (ahead: above zero, behind: below, level: it includes zero) and what that says.

    A method keeps its advantage only if it is ahead under both; ahead under the standard attack alone is an
    advantage the adaptive attack takes away."""
    rows = []
    for m in [m[: -len(" - at")] for m in dict.fromkeys(iv.method) if m.endswith(" - at")]:
        d = iv[iv.method == f"{m} - at"].set_index("under")
        std, adp = (d.loc[u] for u in ("standard attack", "adaptive worst case"))
        s, a = _side(std.lo, std.hi), _side(adp.lo, adp.hi)
        if s == "ahead":
            finding = {"ahead": "keeps its advantage under the adaptive attack",
                       "level": "ahead under the standard attack only: the adaptive attack removes it",
                       "behind": "ahead under the standard attack, behind under the adaptive attack"}.get(
                a, f"ahead under the standard attack, {a} under the adaptive attack")
        elif a == "ahead":
            finding = f"ahead under the adaptive attack only ({s} under the standard attack)"
        else:
            finding = f"no advantage: {s} under the standard attack, {a} under the adaptive attack"
        rows.append({"method": m, "standard_minus_at": std.value, "standard_lo": std.lo, "standard_hi": std.hi,
                     "adaptive_minus_at": adp.value, "adaptive_lo": adp.lo, "adaptive_hi": adp.hi,
                     "standard": s, "adaptive": a, "finding": finding})
    return pd.DataFrame(rows)


def _cell(iv: pd.DataFrame, m: str, under: str) -> str:
    """One interval of compare_intervals.csv as a table cell: accuracies in % to 0.1, NR over-activation (a
    fraction of the natural magnitude) to 0.001, differences signed."""
    r = iv[(iv.method == m) & (iv.under == under)]
    if not len(r):
        return "-"
    r = r.iloc[0]
    f = ("+" if " - " in m or under == NR_OVER else "") + (".3f" if under == NR_OVER else ".1f")
    return f"{r.value:{f}} [{r.lo:{f}}, {r.hi:{f}}]"


def markdown(df: pd.DataFrame, iv: pd.DataFrame, standard_attack: str) -> str:
    """compare.md: per method the accuracies and the NR over-activation with intervals, AutoAttack and the
    gradient-masking checks per seed, and the differences to AT with what they say."""
    seeds = int(iv.seeds.max()) if len(iv) else 0
    lines = [f"Accuracy in %, mean over {seeds} seed(s) with 95% intervals (test images and seeds); "
             f"standard attack: the attack each method's own paper reports ({standard_attack}); "
             "worst case: per image over every attack, "
             "the adaptive ones included; AutoAttack on a subset, per seed; masking checks: the gradient-masking "
             "checks per seed; NR over-activation: the activation study's (adversarial - natural) / natural "
             "magnitude of the NR channels, each model under its own study attack.", "",
             "| method | natural | standard attack | CW | adaptive worst case | AutoAttack | masking checks "
             "| NR over-activation |", "|---|---|---|---|---|---|---|---|"]
    for m in [m for m in dict.fromkeys(iv.method) if " - " not in m]:
        rows = df[df.method == m]
        aa = "" if rows.autoattack.isna().all() else " / ".join(  # one entry per seed, '-' where not run
            "-" if np.isnan(v) else f"{v:.1f}" for v in rows.autoattack)
        checks = " / ".join(rows.masking_checks.fillna("-").astype(str)) if "masking_checks" in rows else ""
        cells = [_cell(iv, m, u) for u in ("natural", "standard attack", "cw", "adaptive worst case")]
        lines.append(f"| {m.upper()} | {' | '.join(cells)} | {aa or '-'} | {checks or '-'} | {_cell(iv, m, NR_OVER)} |")
    adv = advantage(iv)
    if len(adv):
        lines += ["", "| method - AT | standard attack | adaptive worst case | finding | NR over-activation |",
                  "|---|---|---|---|---|"]
        for r in adv.itertuples():
            d = r.method + " - at"
            lines.append(f"| {r.method.upper()} | {_cell(iv, d, 'standard attack')} | "
                         f"{_cell(iv, d, 'adaptive worst case')} | {r.finding} | {_cell(iv, d, NR_OVER)} |")
    return "\n".join(lines) + "\n"
