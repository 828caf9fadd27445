"""Robust accuracy of a two-seed study per model and attack: the mean over seeds with a 95% interval
(bootstrap over test images and seeds), as a markdown table.

    python scripts/accuracy_intervals.py runs/cpu-2seeds
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from chanscope.observe.verdicts import Seed, accuracy, interval, worst_case
from chanscope.workflows.report import markdown_table

ATTACKS = ("natural", "fgsm", "pgd20", "cw20")


def column(model: str, col: str):
    """The statistic for interval(): a seed's accuracy (%) of `model` under one eval column."""
    return lambda s, w: accuracy(s.ev[model][col].to_numpy(), w)


def _named(cols, prefix: str) -> str | None:
    """The eval column of the attack family `prefix` (adaptive20r7, joint20, ...), components left out."""
    return next((c for c in cols if c.startswith(prefix) and ":" not in c), None)


def main(out: Path) -> None:
    folders = [out, out / "seed1"]
    rows = []
    for m in ("standard", "at", "cifs"):
        ss = [Seed(ev={m: pd.read_csv(f / m / "eval_examples.csv")}) for f in folders]
        aa = [Seed(ev={m: pd.read_csv(f / m / "aa" / "eval_examples.csv")}) for f in folders]
        cols = list(ss[0].ev[m].columns)
        row = {"model": m}
        for col in ATTACKS:  # L2 studies: the single step is fgm
            col = col if col in cols else {"fgsm": "fgm"}.get(col, col)
            row[col] = interval(ss, column(m, col), "ev").pct()
        ada, own = _named(cols, "adaptive"), _named(cols, "joint")
        row["adaptive (runs per image)"] = f"{interval(ss, column(m, ada), 'ev').pct()} ({ada})"
        row["own evaluation"] = f"{interval(ss, column(m, own), 'ev').pct()} ({own})" if own else "-"
        row["worst case"] = interval(ss, lambda s, w, m=m: worst_case(s.ev[m], w), "ev").pct()
        for col in ("aa", "aa-ref"):
            row[f"{col} (100)"] = interval(aa, column(m, col), "ev").pct()
        rows.append(row)
    print(markdown_table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
