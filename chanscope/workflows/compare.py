"""`chanscope compare`: the channel-wise defences and their baselines under one protocol.

Every method gets the same budget (a scale), warm-start rule (AT and TRADES from the standard model; CAS,
CIFS and FSR from their own architecture trained naturally), seeds and validation split; every model the
same evaluation (natural, FGSM, PGD, CW, the adaptive attack through the mask where the model has
auxiliary heads, AutoAttack and the reference AutoAttack on a subset, the gradient-masking checks) and
the activation study (FSR also on its robust and non-robust parts). `compare.csv` has one row per method
and seed; `compare_intervals.csv` per method (column `under`) natural accuracy, robust accuracy under the
standard attack (the attack each method's own paper reports: PGD on the final logits;
CIFS: on the joint loss; CAS: on the joint loss from a random start), under CW and under the adaptive worst
case (per image, over every attack), in %, and the NR over-activation of the activation study (a fraction
of the natural magnitude), each with a 95% interval over test images and seeds, and each minus AT's
(paired); `compare.md` shows them as tables with the advantage rule's findings; `figures/compare.png` draws
the standard attack and the adaptive worst case side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from chanscope.errors import check_positive_int
from chanscope.io import atomic_write_bytes, atomic_write_csv
from chanscope.names import DEFAULT_METHODS
from chanscope.scales import scale_named
from chanscope.workflows.compare_tables import intervals, markdown, own_attacks, summarise
from chanscope.workflows.pipeline import plan
from chanscope.workflows.protocol import models_for
from chanscope.workflows.records import StudyRecord, refuse_other_options
from chanscope.workflows.runs import locks_out, writable_dir
from chanscope.workflows.study import Stage, Study, check_runs

__all__ = ["run_compare", "seed_part", "DEFAULT_METHODS"]


@locks_out
def run_compare(out: str | Path, methods: str = DEFAULT_METHODS, *, scale: str = "cpu", seeds: int = 2,
                seed: int = 0, data: str | None = None, data_root: str | None = None, device: str | None = None,
                bf16: bool | None = None, progress: Callable[[str, int, int], None] | None = None,
                on_stage: Callable[[str, str, float], None] | None = None,
                time_limit: float | None = None, threat_model: str | None = None, jobs: int = 1
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or continue) the comparison into `out`; returns (compare.csv, compare_intervals.csv).
    threat_model: linf or l2 (every training, attack and activation study under it; L2 at eps 0.5); None: the
    folder's, else linf.
    jobs: run the seeds in this many processes at a time (`seed_jobs`, as `chanscope series --jobs`), each with
    cores / jobs threads; same folders and records as one process."""
    from chanscope.errors import check_threat_model
    from chanscope.workflows import seed_jobs

    if threat_model is not None:
        threat_model = check_threat_model(threat_model)
    check_positive_int(jobs, "jobs")
    ms = [m.strip() for m in methods.split(",") if m.strip()]
    scale_named(scale)
    models_for(ms)  # unknown methods are refused before the folder is made
    out = writable_dir(out)
    record = StudyRecord.load(out / "compare.json")
    seed_jobs.merge_seed_records(record)  # what the seeds' processes of a cut --jobs run finished
    made = record.made_with()
    threat_model = threat_model or made.get("threat_model", "linf")
    opts = {"data": data or "embedded", "seed": seed, "scale": scale, "bf16": bf16, "threat_model": threat_model}
    if record.stages or record.options:
        refuse_other_options(made, opts, "comparison")
    record.options = {**opts, "methods": ms, "seeds": seeds}
    stages = _stages(out, ms, scale, seeds, seed, data, data_root, device, bf16, progress, threat_model)
    check_runs(stages)  # a run folder trained with another recipe (e.g. copied in) is refused, not taken
    record.save()  # before any stage: a cut training is of these options
    spec = {"out": str(out), "methods": ms, "scale": scale, "seeds": seeds, "seed": seed, "data": data,
            "data_root": data_root, "device": device, "bf16": bf16, "threat_model": threat_model}
    seed_jobs.run_seeds(Study(record, stages), spec, jobs, on_stage, time_limit)
    df, iv = summarise(out, ms, scale, seeds, seed), intervals(out, ms, scale, seeds, seed)
    atomic_write_csv(out / "compare.csv", df)
    atomic_write_csv(out / "compare_intervals.csv", iv)
    (out / "compare.md").unlink(missing_ok=True)  # never a table of an earlier state beside these CSVs
    if len(iv):
        atomic_write_bytes(out / "compare.md", markdown(df, iv, own_attacks(scale, ms)).encode())
    record.save()
    if len(iv):
        from chanscope.workflows.plots import compare_plot

        compare_plot(iv, out / "figures")
    return df, iv


def _stages(out: Path, ms: list[str], scale: str, seeds: int, seed: int, data: str | None, data_root: str | None,
            device: str | None, bf16: bool | None, progress: Callable[[str, int, int], None] | None,
            threat_model: str) -> list[Stage]:
    return plan(out, scale, data=data, data_root=data_root, seed=seed, seeds=seeds, device=device,
                eval_models=ms, progress=progress, bf16=bf16, controls=False, methods=ms, threat_model=threat_model)


def seed_part(spec: dict, progress: Callable[[str, int, int], None] | None = None) -> list[Stage]:
    """The stages of the seed a `--jobs` worker runs, from the spec `run_compare` gives `seed_jobs`."""
    stages = _stages(Path(spec["out"]), spec["methods"], spec["scale"], spec["seeds"], spec["seed"], spec["data"],
                     spec["data_root"], spec["device"], spec["bf16"], progress, spec["threat_model"])
    return Study(StudyRecord(Path(spec["out"]) / "compare.json"), stages).part(spec["index"]).stages
