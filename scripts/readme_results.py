"""Print the Results tables of docs/results.md from a reproduction folder and ablation folders (no training).

    python scripts/readme_results.py runs/reproduce-cpu runs/ablation-warm runs/ablation-warm-topk ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from chanscope.observe.verdicts import relgap
from chanscope.workflows.collect import load_seeds, overall_accuracy
from chanscope.workflows.report import markdown_table, observations


def main(study: str, *ablations: str) -> None:
    out = Path(study)
    rec = json.loads((out / "pipeline.json").read_text())
    models = [m for m in ("standard", "at", "cifs", "cas", "cifs-scratch") if (out / m / "eval.csv").is_file()]
    rows = []
    for m in models:
        o = overall_accuracy(out / m)
        s = json.loads((out / m / "sanity" / "eval.json").read_text()) if (out / m / "sanity" / "eval.json").is_file() \
            else {}
        rows.append({"model": m, "natural": o.get("natural"), "FGSM": o.get("fgsm"), "PGD-20": o.get("pgd20"),
                     "CW-20": o.get("cw20"), "adaptive-20 (worst case)": o.get("adaptive20"),
                     "AutoAttack (100 img)": o.get("aa"),
                     "sanity": "pass" if s.get("sanity") and all(c["passed"] for c in s["sanity"]) else
                     ("FAIL" if s.get("sanity") else "-")})
    print("### Robust accuracy (%, 500 test images; AutoAttack on 100)\n")
    print(markdown_table(pd.DataFrame(rows)))
    print()
    al = []
    for m in models:
        if (out / m / "classes.csv").is_file():
            c = pd.read_csv(out / m / "classes.csv")
            al.append({"model": m, "cosine(adv, nat)": c.cosine_adv_nat.mean(),
                       "mean abs gap / mean nat": relgap(load_seeds({m: out / m})[0].act[m]),
                       "NR over-activation (rel)": c.nr_over_rel.mean(),
                       "PR under-activation (rel)": c.pr_under_rel.mean(),
                       "Spearman nat": c.spearman_nat.mean(), "Spearman adv": c.spearman_adv.mean(),
                       "NR channels": c.n_nr.mean()})
    print("### Alignment (penultimate layer, means over classes, 1,000 test images, PGD-20)\n")
    print(markdown_table(pd.DataFrame(al), 3))
    print()
    print("### The paper's observations\n")
    for o in observations({m: out / m for m in [*models, "random"]}):
        print(f"- **{o['observation']}: {o['verdict']}.** {o['numbers']}. Control: {o['control']}.")
    print()
    st = pd.DataFrame([{"stage": k, "minutes": v["seconds"] / 60} for k, v in rec["stages"].items()])
    print(f"### Wall time per stage (total {st.minutes.sum():.0f} min)\n")
    print(markdown_table(st, 1))
    print()
    for ablation in ablations:
        _ablation(Path(ablation))


def _ablation(folder: Path) -> None:
    """One row per cell and seed: the evaluated best.pt, its epoch, and the last epoch's training numbers."""
    df = pd.read_csv(folder / "ablation.csv")
    rows = []
    for r in df.itertuples():
        run = folder / r.run
        last = pd.read_csv(run / "metrics.csv").iloc[-1]
        best = json.loads((run / "summary.json").read_text())["best_epoch"]
        rows.append({"setting": r.setting, "seed": r.seed, "natural %": r.natural_acc,
                     f"{r.attack} %": r.robust_acc, "best epoch": best,
                     "last epoch: acc on training batches %": last.train_acc,
                     "last epoch: test natural %": last.test_nat_acc})
    print(f"### {folder.name}\n")
    print(markdown_table(pd.DataFrame(rows)))
    g = df.groupby("setting", sort=False).robust_acc.agg(["mean", "min", "max", "count"]).reset_index()
    print()
    print(markdown_table(g.rename(columns={"mean": "robust mean", "min": "min", "max": "max", "count": "seeds"})))
    print()

if __name__ == "__main__":
    main(*sys.argv[1:])
