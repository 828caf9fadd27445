"""Robust accuracy per model and attack, mean over seeds with 95% intervals (images and seeds)."""
import sys
from pathlib import Path
import numpy as np, pandas as pd
from chanscope.observe.verdicts import Seed, interval, worst_case
out = Path(sys.argv[1])
folders = [out, out / "seed1"]
def acc(col):
    def f(s, w, m):
        ok = s.ev[m][col].to_numpy(); w = np.ones(len(ok)) if w is None else w
        return float(100 * (ok * w).sum() / w.sum())
    return f
rows = []
for m in ("standard", "at", "cifs"):
    ss = [Seed(ev={m: pd.read_csv(f / m / "eval_examples.csv")}) for f in folders]
    aa = [Seed(ev={m: pd.read_csv(f / m / "aa" / "eval_examples.csv")}) for f in folders]
    r = {"model": m}
    for col in ("natural", "fgsm", "pgd20", "cw20", "adaptive20r2"):
        r[col] = interval(ss, lambda s, w, m=m, col=col: acc(col)(s, w, m), "ev").pct()
    r["worst case"] = interval(ss, lambda s, w, m=m: worst_case(s.ev[m], w), "ev").pct()
    for col in ("aa", "aa-ref"):
        r[col + " (100)"] = interval(aa, lambda s, w, m=m, col=col: acc(col)(s, w, m), "ev").pct()
    rows.append(r)
df = pd.DataFrame(rows)
print("| " + " | ".join(df.columns) + " |"); print("|" + "---|" * len(df.columns))
for r in df.itertuples(index=False): print("| " + " | ".join(map(str, r)) + " |")
