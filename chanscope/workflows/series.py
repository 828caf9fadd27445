"""`chanscope series`: AT against warm-started CIFS at several training budgets, several seeds each.

A budget is `IMAGESxEPOCHSxSTEPS` (training subset, epochs, PGD steps of the training attack), on the cpu
scale's recipe otherwise; its compute is images x epochs x (steps + 1). Each budget is a study folder
(`<out>/<budget>/`, further seeds in `<out>/<budget>/seed<s>/`) made by the same stages as `reproduce`:
standard -> AT and natural CIFS -> CIFS (warm starts), the validation split, evaluation with the adaptive
attack through the mask, AutoAttack on a subset. Finished stages are skipped and a cut training resumes.
`series.csv` and `figures/series.png` summarise it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from chanscope.errors import ChanscopeError, check_positive_int
from chanscope.io import atomic_write_bytes, atomic_write_csv
from chanscope.names import DEFAULT_BUDGETS
from chanscope.scales import SCALES, Budget, Scale, parse_budgets
from chanscope.workflows.pipeline import plan
from chanscope.workflows.records import StudyRecord, refuse_other_options
from chanscope.workflows.runs import writable_dir
from chanscope.workflows.series_tables import SERIES_COLUMNS, gaps, markdown, summarise, trend, trend_sentence
from chanscope.workflows.study import Stage, Study, check_runs, run_study

__all__ = ["Budget", "parse_budgets", "run_series", "summarise", "gaps", "trend", "trend_sentence", "markdown",
           "SERIES_COLUMNS", "DEFAULT_BUDGETS"]

def _stages(out: Path, budgets: list[Budget], base: Scale, seeds: int, seed: int, data: str | None,
            data_root: str | None, device: str | None, bf16: bool | None,
            progress: Callable[[str, int, int], None] | None, threat_model: str = "linf") -> list[Stage]:
    stages = []
    for b in budgets:
        for st in plan(out / b.label, b.scale(base), data=data, data_root=data_root, cifs_scratch=False, seed=seed,
                       seeds=seeds, device=device, eval_models=["at", "cifs"], progress=progress, bf16=bf16,
                       controls=False, threat_model=threat_model):
            if st.kind in ("train", "eval", "aa"):
                stages.append(replace(st, name=f"{b.label} {st.name}"))
    return stages


def seed_stages(out: str | Path, budgets: list[Budget], base: Scale, seeds: int, seed: int, index: int, *,
                data: str | None = None, data_root: str | None = None, device: str | None = None,
                bf16: bool | None = None, progress: Callable[[str, int, int], None] | None = None,
                threat_model: str = "linf") -> list[Stage]:
    """The stages of seed `seed + index` of the series, in its folders: what a `--jobs` worker runs (its part
    of the series' study)."""
    stages = _stages(Path(out), budgets, base, seeds, seed, data, data_root, device, bf16, progress, threat_model)
    return Study(StudyRecord(Path(out) / "series.json"), stages).part(index).stages


def seed_part(spec: dict, progress: Callable[[str, int, int], None] | None = None) -> list[Stage]:
    """The stages of the seed a `--jobs` worker runs, from the spec `run_series` gives `seed_jobs`."""
    base = Scale(**spec["scale"])
    if SCALES.get(base.name) != base:  # the stages' commands name the scale as preset: it must be this table's
        raise ChanscopeError(f"scale {base.name!r} of the series is not chanscope's scale of that name; "
                             "run the series with this chanscope's scales")
    return seed_stages(spec["out"], parse_budgets(spec["budgets"]), base, spec["seeds"], spec["seed"], spec["index"],
                       data=spec["data"], data_root=spec["data_root"], device=spec["device"], bf16=spec["bf16"],
                       progress=progress, threat_model=spec.get("threat_model", "linf"))


def _base_scale(base: str) -> Scale:
    if base not in SCALES:
        raise ChanscopeError(f"unknown base scale {base!r}; known: {', '.join(SCALES)}")
    return SCALES[base]


def stage_names(budgets: str, seeds: int = 2, seed: int = 0, base: str = "cpu") -> list[str]:
    """The names of the stages a series runs, as its record (series.json) keeps them, e.g. "5000x8x3 train at"
    and "5000x8x3 eval seed1/cifs": to pick a series' stages out of records made by other processes (the same
    under either threat model)."""
    stages = _stages(Path("."), parse_budgets(budgets), _base_scale(base), seeds, seed, None, None, None, None, None)
    return [st.name for st in stages]


def run_series(out: str | Path, budgets: str = DEFAULT_BUDGETS, *, seeds: int = 2, seed: int = 0,
               data: str | None = None, data_root: str | None = None, base: str = "cpu", device: str | None = None,
               bf16: bool | None = None, progress: Callable[[str, int, int], None] | None = None,
               on_stage: Callable[[str, str, float], None] | None = None,
               time_limit: float | None = None, summary_only: bool = False, jobs: int = 1,
               threat_model: str | None = None) -> pd.DataFrame:
    """Run (or continue) the series into `out`; returns the summary (also series.csv, series.json, series.md,
    figure), with the sentence on how the gap changes in `attrs["trend"]` once two budgets are done.

    summary_only: start no stage (each is reported finished or not), only summarise what is finished: safe
    beside the processes still training its seeds, which a normal run would collide with.
    jobs: run the seeds in this many processes at a time (`seed_jobs`), each with cores / jobs threads (on a
    small CPU two one-thread processes train more per hour than one two-thread process); same folders.
    threat_model: linf or l2 (training, attacks at L2 eps 0.5); None: the folder's own (a new folder: linf)."""
    from chanscope.errors import check_threat_model

    bs = parse_budgets(budgets)
    check_positive_int(jobs, "jobs")
    scale = _base_scale(base)
    out = writable_dir(out)
    record = StudyRecord.load(out / "series.json")
    threat_model = check_threat_model(threat_model or record.made_with().get("threat_model") or "linf")
    opts = {"data": data or "embedded", "seed": seed, "base": base, "bf16": bf16, "threat_model": threat_model}
    _continue(out, record, opts, summary_only)
    if not summary_only:
        _check_budgets_fit(bs, scale, data, data_root)
    stages = _stages(out, bs, scale, seeds, seed, data, data_root, device, bf16, progress, threat_model)
    if summary_only:
        run_study(Study(record, stages), on_stage, start=False)
    else:
        check_runs(stages)  # a run folder trained with another recipe (e.g. copied in) is refused, not taken
        record.options = opts
        record.save()  # before any stage: a cut training is of these options
        from chanscope.workflows import seed_jobs

        spec = {"out": str(out), "budgets": ",".join(b.label for b in bs), "scale": asdict(scale), "seeds": seeds,
                "seed": seed, "data": data, "data_root": data_root, "device": device, "bf16": bf16,
                "threat_model": threat_model}
        seed_jobs.run_seeds(Study(record, stages), spec, jobs, on_stage, time_limit)
        record.save()
    df = _write_summary(out, bs, seeds, seed, threat_model)
    if not summary_only:
        df.attrs["written"].insert(1, "series.json")
    return df


def _check_budgets_fit(bs: list[Budget], scale, data: str | None, data_root: str | None) -> None:
    """Refuse a budget that asks for more training images than the data has after its validation split: its
    label would name images it never trained on (and two such budgets would train on the same images)."""
    from chanscope.data import load_data

    have = len(load_data(data, data_root).y_train) - int(scale.train.get("val_n", 0))
    big = [b.label for b in bs if b.images > have]
    if big:
        raise ChanscopeError(f"budget(s) {', '.join(big)} ask for more training images than data "
                             f"{data or 'embedded'!r} has after its validation split ({have}); give smaller "
                             "`budgets` or larger `data` (e.g. the CIFAR-10 archive)")


def _continue(out: Path, record: StudyRecord, opts: dict, summary_only: bool) -> None:
    """Merge into the series' record (series.json, as read) the seed records a cut `jobs` run left, and refuse
    other options than the folder was made with (summary_only: the record as it is, nothing checked)."""
    from chanscope.workflows import seed_jobs

    if summary_only:
        return
    seed_jobs.merge_seed_records(record)
    refuse_other_options(record.made_with(), opts, "series")


def _write_summary(out: Path, bs: list[Budget], seeds: int, seed: int, threat_model: str = "linf") -> pd.DataFrame:
    """series.csv, series.md and the figure from the finished stages; the summary (attrs["written"]: the files
    written, relative to `out`)."""
    df = summarise(out, bs, seeds, seed)
    atomic_write_csv(out / "series.csv", df)
    df.attrs["written"] = ["series.csv"]
    (out / "series.md").unlink(missing_ok=True)  # never a summary of an earlier state beside series.csv
    if len(df):
        from chanscope.workflows.plots import series_plot

        g, tr = gaps(out, bs, seeds, seed), trend(out, bs, seeds, seed)
        series_plot(df, g, out / "figures")
        atomic_write_bytes(out / "series.md", markdown(g, tr, df, threat_model).encode())
        df.attrs["written"] += ["series.md", "figures/series.png"]
        if tr:
            df.attrs["trend"] = trend_sentence(tr)
    return df
