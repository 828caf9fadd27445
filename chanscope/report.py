"""`chanscope report`: one markdown file with configs, evaluation, alignment tables, the verdict on
each of the paper's observations with the numbers that decide it, figures, commands and wall times."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from chanscope.analysis import most_and_least_robust, spearman
from chanscope.io import atomic_write_bytes, atomic_write_csv
from chanscope.plots import (
    class_alignment,
    class_robustness,
    images_used,
    nr_channels,
    read_run_csv,
    training_curves,
)

__all__ = ["observations", "write_report", "write_outputs"]


def _json(p: Path) -> dict:
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _fmt(v, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, (float, np.floating)) else str(v)


def _num(v) -> str | None:
    """A setting as written (0.125 stays 0.125; a table's fixed decimals would print 0)."""
    return None if v is None else f"{v:g}"


def _md(df: pd.DataFrame, nd: int = 1) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(_fmt(v, nd) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def _overall(run: Path) -> dict[str, float]:
    """attack -> robust accuracy (all classes), with natural accuracy, AutoAttack and n."""
    out: dict[str, float] = {}
    for sub in ("", "aa"):
        p = run / sub / "eval.csv"
        if p.is_file():
            ev = pd.read_csv(p)
            ev = ev[ev["class"] == "all"]
            for r in ev.itertuples():
                out[r.attack] = r.robust_acc
                out.setdefault("natural", r.natural_acc)
                out.setdefault(f"n:{r.attack}", r.n)
    return out


def _se(p: float, n: float) -> float:
    """Binomial standard error of an accuracy in percent."""
    return 100 * math.sqrt(max(p / 100 * (1 - p / 100), 1e-4) / max(n, 1))


def _relgap(run: Path) -> float:
    ch = pd.read_csv(run / "channels.csv")
    return float((ch.mag_adv - ch.mag_nat).abs().mean() / ch.mag_nat.mean())


def observations(runs: dict[str, Path]) -> list[dict]:
    """Verdicts on the paper's observations 1-4 from the runs named standard, at and cifs (if present)."""
    obs = []
    have = {k: v for k, v in runs.items() if (v / "classes.csv").is_file()}
    if "standard" in have and "at" in have:
        cs, ca = pd.read_csv(have["standard"] / "classes.csv"), pd.read_csv(have["at"] / "classes.csv")
        gs, ga = _relgap(have["standard"]), _relgap(have["at"])
        holds = ca.cosine_adv_nat.mean() > cs.cosine_adv_nat.mean() and ga < gs
        obs.append({"observation": "1. AT aligns adversarial with natural activations",
                    "verdict": "holds" if holds else "does not hold",
                    "numbers": f"cosine(adv, nat) standard {cs.cosine_adv_nat.mean():.3f} vs AT "
                               f"{ca.cosine_adv_nat.mean():.3f}; mean abs(adv - nat) / mean nat: standard {gs:.3f} vs "
                               f"AT {ga:.3f}"})
    if "at" in have:
        ca = pd.read_csv(have["at"] / "classes.csv")
        pos = int((ca.nr_over_abs > 0).sum())
        rel = ca.nr_over_rel.mean()
        pr = ca.pr_under_rel.mean()
        verdict = "holds" if rel > 0 and pos >= 0.7 * len(ca) else ("unclear" if rel > 0 else "does not hold")
        obs.append({"observation": "2. Under AT, NR channels are still over-activated by adversarial data",
                    "verdict": verdict,
                    "numbers": f"AT: NR over-activation {ca.nr_over_abs.mean():+.4f} ({rel:+.1%} of natural) on "
                               f"average, positive in {pos}/{len(ca)} classes; PR change {-pr:+.1%}"})
        rho = spearman(ca.spearman_nat.to_numpy(), ca.adv_acc.to_numpy())
        verdict = "holds" if rho >= 0.4 else ("does not hold" if rho <= 0 else "unclear")
        hi, lo = most_and_least_robust(ca)
        best, worst = ca[ca.class_name == hi].iloc[0], ca[ca.class_name == lo].iloc[0]
        obs.append({"observation": "3. Robust classes align magnitude with relevance, non-robust ones do not",
                    "verdict": verdict,
                    "numbers": f"AT, over {len(ca)} classes: rank correlation of (Spearman magnitude~relevance) with "
                               f"robust accuracy = {rho:.2f}; most robust {best.class_name} ({best.adv_acc:.1f}%, "
                               f"rho {best.spearman_nat:.2f}), least robust {worst.class_name} "
                               f"({worst.adv_acc:.1f}%, rho {worst.spearman_nat:.2f})"})
    if "at" in runs and "cifs" in runs:
        oa, oc = _overall(runs["at"]), _overall(runs["cifs"])
        pgd_at = next((k for k in oa if k.startswith("pgd")), None)
        adap = next((k for k in oc if k.startswith("adaptive") and ":" not in k), None)
        if pgd_at and adap and pgd_at in oc:
            a, c = oa[pgd_at], oc[adap]
            se = math.hypot(_se(a, oa[f"n:{pgd_at}"]), _se(c, oc[f"n:{adap}"]))
            diff = c - a
            verdict = "holds" if diff > 2 * se else ("does not hold" if diff < -2 * se else "unclear (within noise)")
            extra = ""
            if (runs["cifs"] / "classes.csv").is_file() and (runs["at"] / "classes.csv").is_file():
                nc = pd.read_csv(runs["cifs"] / "classes.csv").nr_over_rel.mean()
                na = pd.read_csv(runs["at"] / "classes.csv").nr_over_rel.mean()
                extra = f"; NR over-activation CIFS {nc:+.1%} vs AT {na:+.1%}"
            obs.append({"observation": "4. CIFS suppresses NR channels and beats AT at the same budget",
                        "verdict": verdict,
                        "numbers": f"AT {pgd_at} {a:.1f}% vs CIFS worst-case adaptive {c:.1f}% (CIFS {pgd_at} on "
                                   f"final logits {oc[pgd_at]:.1f}%); difference {diff:+.1f} points, 2 SE = "
                                   f"{2 * se:.1f}; natural AT {oa['natural']:.1f}% vs CIFS {oc['natural']:.1f}%"
                                   + extra})
    return obs


def write_report(runs: list[Path], out: Path, figures: Path | None = None, record: dict | None = None) -> str:
    """Write the markdown report to `out` and return it."""
    runs = [Path(r) for r in runs]
    byname = {r.name: r for r in runs}
    lines = ["# chanscope report", ""]
    rows = []
    for r in runs:
        cfg = _json(r / "config.json")
        c = cfg.get("config", {})
        m = pd.read_csv(r / "metrics.csv") if (r / "metrics.csv").is_file() else pd.DataFrame()
        rows.append({"model": r.name, "method": c.get("method"), "natural only": c.get("natural"),
                     "arch": c.get("arch"), "width": _num(c.get("width")),
                     "epochs": f"{len(m)}/{c['epochs']}" if "epochs" in c else None,
                     "train images": cfg.get("data", {}).get("n_train"), "PGD steps": c.get("steps"),
                     "init": Path(c["init"]).parent.name if c.get("init") else "-",
                     "train s": float(m.seconds.sum()) if len(m) else None})
    lines += ["## Models", ""]
    lines += [_md(pd.DataFrame(rows), 0), ""] if rows else ["No model has been trained yet; run again to continue.",
                                                             ""]
    data = next((_json(r / "config.json").get("data", {}) for r in runs if (r / "config.json").is_file()), {})
    if data:
        lines += [f"Data: {data.get('source')} ({'; '.join(data.get('notes', []))})", ""]
    ev_rows = []
    for r in runs:
        o = _overall(r)
        if o:
            ev_rows.append({"model": r.name, "natural": o.get("natural"),
                            **{k: v for k, v in o.items() if not k.startswith("n:") and k != "natural"}})
    if ev_rows:
        ev = pd.DataFrame(ev_rows)
        lines += ["## Robust accuracy (%, all classes)", "", _md(ev), ""]
        ns = {k.split(":", 1)[1]: int(v) for r in runs for k, v in _overall(r).items() if k.startswith("n:")}
        lines += ["Test images per attack: " + ", ".join(f"{k} {v}" for k, v in ns.items()), ""]
    san = []
    for r in runs:
        j = _json(r / "sanity" / "eval.json")
        if j.get("sanity"):
            for c in j["sanity"]:
                san.append({"model": r.name, "check": c["check"], "result": "pass" if c["passed"] else "FAIL",
                            "numbers": ", ".join(f"{k} {_fmt(v)}" for k, v in c["numbers"].items())})
            san.append({"model": r.name, "check": "verdict", "result": j.get("verdict"), "numbers": ""})
    if san:
        lines += ["## Gradient-masking checks", "", _md(pd.DataFrame(san)), ""]
    al = []
    for r in runs:
        if (r / "classes.csv").is_file():
            cl = pd.read_csv(r / "classes.csv")
            al.append(cl.assign(model=r.name)[["model", "class_name", "nat_acc", "adv_acc", "cosine_adv_nat",
                                                "nr_over_rel", "pr_under_rel", "spearman_nat", "spearman_adv",
                                                "n_nr"]])
    if al:
        lines += ["## Per-class alignment (penultimate layer, gradient relevance)", "",
                  "nat_acc and adv_acc here come from the activations stage (" + "; ".join(
                      f"{r.name}: {images_used(r)}" for r in runs if (r / "classes.csv").is_file())
                  + "), the robust accuracy tables above from the eval stage.", "",
                  _md(pd.concat(al, ignore_index=True), 3), ""]
    obs = observations(byname)
    if obs:
        lines += ["## The paper's observations", "", _md(pd.DataFrame(obs)), ""]
    if figures is not None and figures.is_dir():
        lines += ["## Figures", ""]
        for png in sorted(figures.glob("*.png")):
            rel = png.relative_to(out.parent) if png.is_relative_to(out.parent) else png
            lines += [f"![{png.stem}]({rel})", ""]
    if record and record.get("stages"):
        st = pd.DataFrame([{"stage": k, "seconds": v["seconds"], "command": f"`{v['command']}`"}
                           for k, v in record["stages"].items()])
        total = st.seconds.sum()
        lines += ["## Commands and wall times", "", _md(st, 0), "", f"Total {total / 60:.1f} min; "
                  f"versions: {json.dumps(record.get('versions', {}))}", ""]
    text = "\n".join(lines)
    atomic_write_bytes(out, text.encode())
    return text


def write_outputs(out: Path, record: dict, stages: list[str]) -> None:
    """Figures, results CSVs and report.md of a reproduction folder."""
    out = Path(out)
    figs = out / "figures"
    models = [m for m in dict.fromkeys(stages) if (out / m / "channels.csv").is_file()]
    trained_models = [m for m in dict.fromkeys(stages) if (out / m / "config.json").is_file()]
    main = [m for m in ("standard", "at", "cifs") if m in models]
    if main:
        nr_channels([out / m for m in main], figs)
        class_robustness([out / m for m in models if (out / m / "eval.csv").is_file()], figs)
    for m in ("at", "cifs"):
        if m in models:
            class_alignment(out / m, figs, name=f"class_alignment_{m}")
    trained = [out / m for m in trained_models if (out / m / "metrics.csv").is_file()]
    if trained:
        training_curves(trained, figs)
    res = out / "results"
    for m in models:
        for f in ("eval.csv", "classes.csv", "metrics.csv"):
            if (out / m / f).is_file():
                atomic_write_csv(res / f"{m}_{f}", read_run_csv(out / m, f))
    write_report([out / m for m in trained_models], out / "report.md", figs, record)
