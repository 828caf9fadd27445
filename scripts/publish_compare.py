"""Copy a finished comparison's tables into results/: the published files, one flat folder.

usage: python scripts/publish_compare.py RUN_FOLDER RESULTS_FOLDER [FIGURES_FOLDER]

From RUN_FOLDER (a finished `chanscope compare` out): compare.csv/md/json, compare_intervals.csv, and per run
(`seed1/cas` -> `seed1_cas_`) its training metrics, evaluation table, AutoAttack table and gradient-masking
checks; figures/compare.png to FIGURES_FOLDER. Refuses (exit 2) a folder without compare_intervals.csv or a
RESULTS_FOLDER that already has files (move the old ones away first: nothing published is overwritten).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PER_RUN = {"metrics.csv": "metrics.csv", "eval.csv": "eval.csv", "aa/eval.csv": "aa_eval.csv",
           "sanity/eval.csv": "sanity_eval.csv", "classes.csv": "classes.csv"}
TABLES = ("compare.csv", "compare.md", "compare.json", "compare_intervals.csv")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    run, dest = Path(argv[0]), Path(argv[1])
    figs = Path(argv[2]) if len(argv) == 3 else None
    if not (run / "compare_intervals.csv").is_file():
        print(f"error: {run} has no compare_intervals.csv; finish the comparison first", file=sys.stderr)
        return 2
    if dest.exists() and any(dest.iterdir()):
        print(f"error: {dest} already has files; move them away (e.g. to a -superseded folder) first",
              file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    for cfg in sorted(run.glob("**/config.json")):  # a trained run (eval, aa and parts folders have none)
        folder = cfg.parent
        label = folder.relative_to(run).as_posix().replace("/", "_")
        for src, name in PER_RUN.items():
            if (folder / src).is_file():
                shutil.copy2(folder / src, dest / f"{label}_{name}")
    if figs is not None and (run / "figures" / "compare.png").is_file():
        figs.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / "figures" / "compare.png", figs / "compare.png")
    print(f"published {sum(1 for _ in dest.iterdir())} files into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
