"""Print the README's Results tables from a reproduction folder and an ablation folder (no training).

    python scripts/readme_results.py runs/reproduce-cpu runs/ablation-cpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from chanscope.report import _md, _overall, _relgap, observations


def main(study: str, ablation: str | None = None) -> None:
    out = Path(study)
    rec = json.loads((out / "pipeline.json").read_text())
    models = [m for m in ("standard", "at", "cifs", "cas", "cifs-scratch") if (out / m / "eval.csv").is_file()]
    rows = []
    for m in models:
        o = _overall(out / m)
        s = json.loads((out / m / "sanity" / "eval.json").read_text()) if (out / m / "sanity" / "eval.json").is_file() \
            else {}
        rows.append({"model": m, "natural": o.get("natural"), "FGSM": o.get("fgsm"), "PGD-20": o.get("pgd20"),
                     "CW-20": o.get("cw20"), "adaptive-20 (worst case)": o.get("adaptive20"),
                     "AutoAttack (100 img)": o.get("aa"),
                     "sanity": "pass" if s.get("sanity") and all(c["passed"] for c in s["sanity"]) else
                     ("FAIL" if s.get("sanity") else "-")})
    print("### Robust accuracy (%, 500 test images; AutoAttack on 100)\n")
    print(_md(pd.DataFrame(rows)))
    print()
    al = []
    for m in models:
        if (out / m / "classes.csv").is_file():
            c = pd.read_csv(out / m / "classes.csv")
            al.append({"model": m, "cosine(adv, nat)": c.cosine_adv_nat.mean(),
                       "mean abs gap / mean nat": _relgap(out / m),
                       "NR over-activation (rel)": c.nr_over_rel.mean(),
                       "PR under-activation (rel)": c.pr_under_rel.mean(),
                       "Spearman nat": c.spearman_nat.mean(), "Spearman adv": c.spearman_adv.mean(),
                       "NR channels": c.n_nr.mean()})
    print("### Alignment (penultimate layer, means over classes, 1,000 test images, PGD-20)\n")
    print(_md(pd.DataFrame(al), 3))
    print()
    print("### The paper's observations\n")
    print(_md(pd.DataFrame(observations({m: out / m for m in models}))))
    print()
    st = pd.DataFrame([{"stage": k, "minutes": v["seconds"] / 60} for k, v in rec["stages"].items()])
    print(f"### Wall time per stage (total {st.minutes.sum():.0f} min)\n")
    print(_md(st, 1))
    print()
    if ablation and (Path(ablation) / "ablation.csv").is_file():
        df = pd.read_csv(Path(ablation) / "ablation.csv")
        g = df.groupby("setting", sort=False).agg(
            natural=("natural_acc", "mean"), robust=("robust_acc", "mean"),
            robust_min=("robust_acc", "min"), robust_max=("robust_acc", "max"),
            train_eval_pgd=("train_eval_pgd_acc", "mean"), seeds=("seed", "count")).reset_index()
        print("### Ablation (PGD-20 on 500 test images, mean over seeds, min-max)\n")
        print(_md(g))


if __name__ == "__main__":
    main(*sys.argv[1:3])
