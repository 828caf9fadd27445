"""One seed of a budget series in a process of its own (`chanscope series --jobs N` starts one per seed).

    python -m chanscope.workflows._series_worker '<json spec>'

The spec names the series folder, budgets, base scale (its settings), seeds, first seed, this process's seed
index and the run options. Its stage records go to `<out>/series-seed<s>.json`, which the series merges
into series.json; its stage events and progress go to stdout (the series sends them to
`<out>/series-seed<s>.log`).
"""

from __future__ import annotations

import json
import sys
import time

from chanscope.errors import ChanscopeError
from chanscope.workflows.pipeline import SCALES, Scale, read_record, run_stages
from chanscope.workflows.series import parse_budgets, seed_record, seed_stages


def main(spec: dict) -> None:
    out, s = spec["out"], spec["seed"] + spec["index"]
    base = Scale(**spec["scale"])
    SCALES[base.name] = base  # the scale exactly as the series' process has it (its recipe names it as preset)
    stages = seed_stages(out, parse_budgets(spec["budgets"]), base, spec["seeds"], spec["seed"], spec["index"],
                         spec["data"], spec["data_root"], spec["device"], spec["bf16"], _progress())
    path = seed_record(out, s)
    run_stages(stages, read_record(path), path, lambda n, st, t: print(f"{n}: {st}" + (f" ({t:.0f}s)" if t else ""),
                                                                        flush=True), spec["time_limit"])


def _progress():
    """Progress lines at most once a minute per task (and at its end): a log, not a screen."""
    last: dict[str, float] = {}

    def say(label: str, done: int, total: int) -> None:
        if done >= total or time.time() - last.get(label, 0.0) > 60:
            last[label] = time.time()
            print(f"{label}: {done}/{total}", flush=True)
    return say


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except ChanscopeError as e:  # bad input or a folder in the way: its one line, as the command would say it
        print(f"error: {e}", flush=True)
        sys.exit(2)
