"""Run one seed's stages of a `chanscope reproduce` study (all but the trainings, which
scripts/train_study_seed.sh runs) as a process of its own, so two seeds share two cores; its record goes to
OUT/pipeline-seed<K>.json. `--merge` adds those records to OUT/pipeline.json, after which `chanscope reproduce`
on OUT finds every stage done and writes the report with each stage's command and seconds.

    OMP_NUM_THREADS=1 python scripts/study_seed.py runs/cpu --index 0 --scale cpu --seeds 2 --data D
    python scripts/study_seed.py runs/cpu --merge
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chanscope.workflows.jobs import TrainJob
from chanscope.workflows.pipeline import plan
from chanscope.workflows.study import Study, StudyRecord, run_study


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--index", type=int, default=0, help="which seed of the study: 0 is the first")
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--data", default=None)
    ap.add_argument("--threat-model", default="linf")
    ap.add_argument("--merge", action="store_true")
    a = ap.parse_args()
    if a.merge:
        record = StudyRecord.load(a.out / "pipeline.json")
        for p in sorted(a.out.glob("pipeline-seed*.json")):
            record.stages.update(StudyRecord.load(p).stages)
        record.save()
        print(f"{record.path}: {len(record.stages)} stages")
        return
    measured = [st for st in plan(a.out, a.scale, data=a.data, cifs_scratch=False, seeds=a.seeds,
                                  threat_model=a.threat_model) if not isinstance(st.job, TrainJob)]
    study = Study(StudyRecord(a.out / "pipeline.json"), measured)  # only its stages: the record is the seed's
    part = study.part(a.index, StudyRecord.load(a.out / f"pipeline-seed{a.index}.json"))
    run_study(part, lambda n, s, t: print(f"{n}: {s} {t:.0f}s", flush=True))


if __name__ == "__main__":
    main()
