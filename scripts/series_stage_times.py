"""Stage times of a budget series whose seeds ran as separate processes: the stage records of each seed's
series.json (and of a study linked in as a budget, from its pipeline.json) merged into one JSON with the
minutes per budget, printed and written.

    python scripts/series_stage_times.py --seed-run runs/series-s0 --seed-run runs/series-s1 \\
        --study 5000x8x3=runs/cpu-2seeds --out results/series-cpu/stages.json

Seed k of the list is the series' seed k (its stages are named `seed<k>/...` from k = 1 on); a study keeps
only the stages the series would run at its budget (`chanscope.workflows.series.stage_names`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chanscope.workflows.series import stage_names


def merge(seed_runs: list[Path], studies: dict[str, Path]) -> dict:
    stages = {}
    for k, run in enumerate(seed_runs):
        for name, rec in json.loads((run / "series.json").read_text())["stages"].items():
            budget, kind, model = name.split(" ", 2)
            stages[f"{budget} {kind} {f'seed{k}/' if k else ''}{model}"] = rec
    for budget, study in studies.items():
        keep = set(stage_names(budget, seeds=max(len(seed_runs), 1)))
        for name, rec in json.loads((study / "pipeline.json").read_text())["stages"].items():
            if f"{budget} {name}" in keep:
                stages[f"{budget} {name}"] = rec
    minutes: dict[str, float] = {}
    for name, rec in stages.items():
        minutes[name.split(" ")[0]] = minutes.get(name.split(" ")[0], 0.0) + rec["seconds"] / 60
    return {"stages": stages, "minutes_per_budget": {b: round(m, 1) for b, m in minutes.items()},
            "minutes": round(sum(minutes.values()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-run", type=Path, action="append", default=[], help="a seed's series folder, in order")
    ap.add_argument("--study", action="append", default=[], help="BUDGET=FOLDER of a study linked in as a budget")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rec = merge(a.seed_run, {b: Path(f) for b, f in (s.split("=", 1) for s in a.study)})
    a.out.write_text(json.dumps(rec, indent=1) + "\n")
    print(rec["minutes_per_budget"], "total", rec["minutes"], "min")


if __name__ == "__main__":
    main()
