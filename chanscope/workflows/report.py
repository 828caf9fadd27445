"""`chanscope report`: one markdown file with configs, evaluation, alignment tables, the verdict on
each of the paper's observations with the numbers that decide it, figures, commands and wall times."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from chanscope.io import atomic_write_bytes, atomic_write_csv, read_json
from chanscope.observe import verdicts
from chanscope.observe.analysis import most_and_least_robust
from chanscope.workflows.activations import read_examples
from chanscope.workflows.collect import Runs, accuracy_table, as_ids, load_seeds
from chanscope.workflows.jobs import RunId
from chanscope.workflows.plots import (
    class_alignment,
    class_robustness,
    images_used,
    nr_channels,
    read_run_csv,
    training_curves,
)
from chanscope.workflows.records import StudyRecord

__all__ = ["observations", "write_report", "write_outputs", "markdown_table", "model_flags"]


def _fmt(v, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, (float, np.floating)) else str(v)


def _num(v) -> str | None:
    """A setting as written (0.125 stays 0.125; a table's fixed decimals would print 0)."""
    return None if v is None else f"{v:g}"


def markdown_table(df: pd.DataFrame, nd: int = 1) -> str:
    """A DataFrame as a markdown table, numbers with `nd` decimals."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(_fmt(v, nd) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def observations(runs: Runs) -> list[dict]:
    """Verdicts on the paper's observations 1-4 (chanscope.observe.verdicts) from runs of models named standard,
    at, cifs, random (of one or several seeds); the most and least robust AT class come from the first seed's
    classes.csv, as in the class-alignment figure."""
    ids = as_ids(runs)
    obs = verdicts.observations(load_seeds(ids))
    at = ids.get(RunId(0, "at"))
    if at is not None and (at / "classes.csv").is_file():
        ca = pd.read_csv(at / "classes.csv")
        hi, lo = most_and_least_robust(ca)
        best, worst = ca[ca.class_name == hi].iloc[0], ca[ca.class_name == lo].iloc[0]
        for o in obs:
            if o["id"] == "3":
                o["numbers"] += (f"; most robust {best.class_name} ({best.adv_acc:.1f}%, alignment "
                                 f"{best.spearman_adv:+.2f}), least robust {worst.class_name} ({worst.adv_acc:.1f}%, "
                                 f"{worst.spearman_adv:+.2f}) ({images_used(at)})")
    return obs


READS = {"1": ("standard", "at"), "2": ("at", "random"), "3": ("at",), "4": ("at", "cifs")}  # models a verdict reads


def model_flags(runs: Runs) -> dict[str, list[str]]:
    """Per model name (seeds merged), what makes a verdict that reads it weak: natural accuracy within 5 points
    of chance, predictions on one or two classes, gradient-masking checks that fail. Controls are judged by
    their validity instead (the Controls section)."""
    flags: dict[str, list[str]] = {}
    for rid, r in as_ids(runs).items():
        model, name = rid.name, rid.label
        if model == "random" or not (r / "examples.npz").is_file():
            continue
        ex = read_examples(r / "examples.npz")
        k = ex["relevance"].shape[0]
        acc = 100.0 * float(np.mean(ex["nat_ok"]))
        if acc <= 100.0 / k + 5:
            flags.setdefault(model, []).append(f"{name} is at chance (natural accuracy {acc:.1f}%)")
        if "pred_nat" in ex and len(np.unique(ex["pred_nat"])) <= 2:
            flags.setdefault(model, []).append(f"{name} predicts {len(np.unique(ex['pred_nat']))} class(es) only")
        sanity = read_json(r / "sanity" / "eval.json")
        if sanity.get("verdict") not in (None, "pass") and any(not c["passed"] for c in sanity.get("sanity") or []):
            flags.setdefault(model, []).append(f"{name} fails a gradient-masking check")
    return flags


def _observation_lines(obs: list[dict], n_seeds: int, flags: dict[str, list[str]] | None = None,
                       scale_note: str | None = None) -> list[str]:
    lines = ["## The paper's observations", ""]
    if scale_note:
        lines += [scale_note, ""]
    lines += [f"Each rule is stated so that it can fail; [a, b] are 95% intervals (bootstrap over test images, "
              f"paired between models of a seed, and over {n_seeds} seed{'s' if n_seeds != 1 else ''}).", ""]
    for o in obs:
        weak = [f for m in READS.get(o["id"].rstrip("'"), ()) for f in (flags or {}).get(m, [])]
        care = " (read with care: see the warning)" if weak else ""
        lines += [f"### {o['observation']}: **{o['verdict']}**{care}", ""]
        if weak:
            lines += [f"- **Warning**: {'; '.join(weak)}."]
        lines += [f"- Rule: {o['rule']}.", f"- Numbers: {o['numbers']}.", f"- Control: {o['control']}.",
                  f"- What it shows: {o['what it shows']}.", ""]
    return lines


def _models_lines(runs: dict[str, Path]) -> list[str]:  # runs by label, here and below
    rows = []
    for name, r in runs.items():
        cfg = read_json(r / "config.json")
        c = cfg.get("config", {})
        m = pd.read_csv(r / "metrics.csv") if (r / "metrics.csv").is_file() else pd.DataFrame()
        rows.append({"model": name, "method": c.get("method"), "natural only": c.get("natural"),
                     "arch": c.get("arch"), "width": _num(c.get("width")), "seed": c.get("seed"),
                     "threat model": c.get("threat_model", "linf"), "eps": _num(c.get("eps")),
                     "epochs": f"{len(m)}/{c['epochs']}" if "epochs" in c else None,
                     "train images": cfg.get("data", {}).get("n_train"),
                     "val images": cfg.get("validation", {}).get("n", 0), "PGD steps": c.get("steps"),
                     "init": Path(c["init"]).parent.name if c.get("init") else "-",
                     "train s": float(m.seconds.sum()) if len(m) else None})
    lines = ["## Models", ""]
    lines += ([markdown_table(pd.DataFrame(rows), 0), ""] if rows
              else ["No model has been trained yet; run again to continue.", ""])
    data = next((read_json(r / "config.json").get("data", {}) for r in runs.values() if (r / "config.json").is_file()),
                {})
    if data:
        lines += [f"Data: {data.get('source')} ({'; '.join(data.get('notes', []))})", ""]
    return lines


def _eval_lines(runs: dict[RunId, Path]) -> list[str]:
    lines = []
    acc = accuracy_table(runs)  # each run's eval.csv read once
    if len(acc):
        wide = acc.pivot_table(index="model", columns="attack", values="robust_acc", sort=False)
        nat = acc.groupby("model", sort=False).natural_acc.first().rename("natural")
        table = pd.concat([nat, wide], axis=1).rename_axis("model").reset_index()
        lines += ["## Robust accuracy (%, all classes)", "", markdown_table(table), ""]
        ns = acc.groupby("attack", sort=False).n.last()
        lines += ["Test images per attack: " + ", ".join(f"{k} {int(v)}" for k, v in ns.items()), ""]
    san = []
    for name, r in ((rid.label, r) for rid, r in runs.items()):
        j = read_json(r / "sanity" / "eval.json")
        for c in j.get("sanity") or []:
            san.append({"model": name, "check": c["check"], "result": "pass" if c["passed"] else "FAIL",
                        "numbers": ", ".join(f"{k} {_fmt(v)}" for k, v in c["numbers"].items())})
        if j.get("sanity"):
            san.append({"model": name, "check": "verdict", "result": j.get("verdict"), "numbers": ""})
    if san:
        lines += ["## Gradient-masking checks", "", markdown_table(pd.DataFrame(san)), ""]
    return lines


def _alignment_lines(runs: dict[str, Path]) -> list[str]:
    al = []
    for name, r in runs.items():
        if (r / "classes.csv").is_file():
            cl = pd.read_csv(r / "classes.csv")
            al.append(cl.assign(model=name)[["model", "class_name", "nat_acc", "adv_acc", "cosine_adv_nat",
                                              "nr_over_rel", "pr_under_rel", "spearman_nat", "spearman_adv",
                                              "n_nr"]])
    if not al:
        return []
    meta = [read_json(r / "activations.json") for r in runs.values() if (r / "classes.csv").is_file()]
    what = sorted({f"layer {m.get('layer', '?')}, {m.get('relevance', '?')} relevance, attack "
                   f"{(m.get('attack') or {}).get('name', '?')}" for m in meta})
    return [f"## Per-class alignment ({'; '.join(what)})", "",
            "nat_acc and adv_acc here come from the activations stage (" + "; ".join(
                f"{name}: {images_used(r)}" for name, r in runs.items() if (r / "classes.csv").is_file())
            + "), the robust accuracy tables above from the eval stage.", "",
            markdown_table(pd.concat(al, ignore_index=True), 3), ""]


def _control_lines(runs: dict[RunId, Path]) -> list[str]:
    """Each random control's validity (chanscope.observe.verdicts.control_validity): a verdict reads a control
    only where it is valid in every seed."""
    rows = []
    for rid, r in runs.items():
        if rid.name != "random" or not (r / "examples.npz").is_file():
            continue
        name = rid.label
        v = verdicts.control_validity(read_examples(r / "examples.npz"))
        how = read_json(r / "config.json").get("control", "")
        rows.append({"control": name, "valid": "yes" if v.valid else "NO", "prediction entropy": v.entropy,
                     "predictions the attack changed %": 100 * v.flipped, "loss increase": v.loss_increase,
                     "natural acc %": v.accuracy, "why": v.why, "what it is": how})
    if not rows:
        return []
    return ["## Controls", "",
            f"A control is valid when its predictions spread over the classes (normalised entropy >= "
            f"{verdicts.CONTROL_MIN_ENTROPY}) and the attack changes at least "
            f"{100 * verdicts.CONTROL_MIN_FLIPPED:.0f}% of them and raises the loss; a verdict that needs an "
            "invalid control says \"control invalid\".", "",
            markdown_table(pd.DataFrame(rows), 2), ""]


def _scale_note(record: StudyRecord | None) -> str | None:
    """What the study's scale can show, from its record (reproduce: the scale's own description)."""
    from chanscope.scales import SCALES

    name = record.options.get("scale", record.notes.get("scale")) if record else None
    if name not in SCALES:
        return None
    sc = SCALES[name]
    threat = record.options.get("threat_model", "linf")
    note = f"Scale `{name}`: {sc.about}. Threat model: {'L2, eps 0.5' if threat == 'l2' else 'L-inf, eps 8/255'}."
    if name == "smoke":
        note += (" **These verdicts check that the pipeline runs end to end; at this scale the models are barely "
                 "trained, so the verdicts say nothing about the paper.**")
    return note


def write_report(runs: list[Path] | Runs, out: Path, figures: Path | None = None,
                 record: StudyRecord | None = None) -> str:
    """Write the markdown report to `out` and return it. runs: run folders (each called by its folder name, one
    seed) or a study's {RunId: folder}."""
    ids = as_ids(runs if isinstance(runs, Mapping) else {Path(r).name: r for r in runs})
    byname = {rid.label: r for rid, r in ids.items()}
    lines = ["# chanscope report", "", *_models_lines(byname), *_eval_lines(ids), *_alignment_lines(byname)]
    lines += _control_lines(ids)
    obs = observations(ids)
    if obs:
        lines += _observation_lines(obs, len(load_seeds(ids)), model_flags(ids), _scale_note(record))
    if figures is not None and figures.is_dir():
        lines += ["## Figures", ""]
        for png in sorted(figures.glob("*.png")):
            rel = png.relative_to(out.parent) if png.is_relative_to(out.parent) else png
            lines += [f"![{png.stem}]({rel})", ""]
    if record and record.stages:
        st = pd.DataFrame([{"stage": k, "seconds": v["seconds"], "command": f"`{v['command']}`"}
                           for k, v in record.stages.items()])
        versions = json.dumps(record.notes.get("versions", {}))
        lines += ["## Commands and wall times", "", markdown_table(st, 0), "",
                  f"Total {st.seconds.sum() / 60:.1f} min; versions: {versions}", ""]
    text = "\n".join(lines)
    atomic_write_bytes(out, text.encode())
    return text


def write_outputs(out: Path, record: StudyRecord, runs: list[RunId]) -> None:
    """Figures (first seed), results CSVs and report.md of a study folder `out`, of its runs `runs`."""
    out = Path(out)
    figs = out / "figures"
    runs = list(dict.fromkeys(runs))
    studied = [r for r in runs if (r.folder(out) / "channels.csv").is_file()]
    trained = [r for r in runs if (r.folder(out) / "config.json").is_file()]
    first = {r.name: r.folder(out) for r in studied if r.index == 0}
    main = [first[m] for m in ("standard", "at", "cifs", "random") if m in first]
    if main:
        nr_channels(main, figs)
    evaluated = [f for f in first.values() if (f / "eval.csv").is_file()]
    if evaluated:
        class_robustness(evaluated, figs)
    for m in ("at", "cifs"):
        if m in first:
            class_alignment(first[m], figs, name=f"class_alignment_{m}")
    curves = [r.folder(out) for r in trained if r.index == 0 and (r.folder(out) / "metrics.csv").is_file()]
    if curves:
        training_curves(curves, figs)
    for r in studied:
        for f in ("eval.csv", "classes.csv", "metrics.csv"):
            if (r.folder(out) / f).is_file():
                atomic_write_csv(out / "results" / f"{r.label.replace('/', '_')}_{f}", read_run_csv(r.folder(out), f))
    write_report({r: r.folder(out) for r in trained}, out / "report.md", figs, record)
