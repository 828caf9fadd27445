"""`chanscope series`: AT against warm-started CIFS at several training budgets, several seeds each.

A budget is `IMAGESxEPOCHSxSTEPS` (training subset, epochs, PGD steps of the training attack), on the cpu
scale's recipe otherwise; its compute is images x epochs x (steps + 1). Each budget is a study folder
(`<out>/<budget>/`, further seeds in `<out>/<budget>/seed<s>/`) made by the same stages as `reproduce`:
standard -> AT and natural CIFS -> CIFS (warm starts), the validation split, evaluation with the adaptive
attack through the mask, AutoAttack on a subset. Finished stages are skipped and a cut training resumes.
`series.csv` and `figures/series.png` summarise it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from chanscope.errors import ChanscopeError, check_positive_int
from chanscope.io import atomic_write_bytes, atomic_write_csv, atomic_write_json
from chanscope.names import DEFAULT_BUDGETS
from chanscope.observe.verdicts import Interval, Seed, accuracy, interval
from chanscope.workflows.pipeline import SCALES, Scale, Stage, plan, read_record, run_stages
from chanscope.workflows.records import made_with, refuse_other_options
from chanscope.workflows.report import attack_named, overall_accuracy
from chanscope.workflows.runs import writable_dir

__all__ = ["Budget", "parse_budgets", "run_series", "summarise", "gaps", "trend", "trend_sentence", "markdown",
           "SERIES_COLUMNS", "DEFAULT_BUDGETS"]

SERIES_COLUMNS = ["budget", "compute", "method", "seed", "natural", "pgd20", "cw20", "adaptive", "autoattack",
                  "autoattack_ref", "worst_case", "train_batch_acc", "train_eval_nat_acc", "train_eval_pgd_acc",
                  "label_leak", "seconds"]


@dataclass(frozen=True)
class Budget:
    images: int
    epochs: int
    steps: int

    @property
    def label(self) -> str:
        return f"{self.images}x{self.epochs}x{self.steps}"

    @property
    def compute(self) -> int:
        """Training compute in image passes: images x epochs x (attack steps + 1)."""
        return self.images * self.epochs * (self.steps + 1)

    def scale(self, base: Scale) -> Scale:
        # the cpu scale's step (3/255) at PGD-3; 2/255 (the cpu preset's) for longer attacks
        step = base.train.get("step_size", 2 / 255) if self.steps <= 3 else 2 / 255
        return replace(base, train={**base.train, "subset": self.images, "epochs": self.epochs, "steps": self.steps,
                                    "step_size": step})


def parse_budgets(text: str) -> list[Budget]:
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", item)
        if not m or min(int(v) for v in m.groups()) < 1:
            raise ChanscopeError(f"budget {item!r}: write IMAGESxEPOCHSxSTEPS with whole numbers from 1, "
                                 "e.g. 5000x8x3")
        out.append(Budget(*(int(v) for v in m.groups())))
    if not out:
        raise ChanscopeError("no budget given; e.g. 5000x8x3,10000x16x5")
    return sorted(set(out), key=lambda b: b.compute)


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
    """The stages of seed `seed + index` of the series, in its folders: what a `--jobs` worker runs."""
    prefix = f"seed{seed + index}/"
    return [st for st in _stages(Path(out), budgets, base, seeds, seed, data, data_root, device, bf16, progress,
                                 threat_model)
            if (st.model.startswith(prefix) if index else "/" not in st.model)]


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
    jobs: run the seeds in this many processes at a time (`series_jobs`), each with cores / jobs threads (on a
    small CPU two one-thread processes train more per hour than one two-thread process); same folders.
    threat_model: linf or l2 (training, attacks at L2 eps 0.5); None: the folder's own (a new folder: linf)."""
    from chanscope.errors import check_threat_model

    bs = parse_budgets(budgets)
    check_positive_int(jobs, "jobs")
    scale = _base_scale(base)
    out = writable_dir(out)
    record_path = out / "series.json"
    record = read_record(record_path)
    threat_model = check_threat_model(threat_model or made_with(record).get("threat_model") or "linf")
    opts = {"data": data or "embedded", "seed": seed, "base": base, "bf16": bf16, "threat_model": threat_model}
    _continue(out, record, opts, summary_only)
    if not summary_only:
        _check_budgets_fit(bs, scale, data, data_root)
    stages = _stages(out, bs, scale, seeds, seed, data, data_root, device, bf16, progress, threat_model)
    if summary_only:
        run_stages(stages, record, record_path, on_stage, start=False)
    else:
        record["options"] = opts
        atomic_write_json(record_path, record)  # before any stage: a cut training is of these options
        if jobs > 1 and seeds > 1:
            from chanscope.workflows import series_jobs

            spec = {"out": str(out), "budgets": ",".join(b.label for b in bs), "scale": asdict(scale),
                    "seeds": seeds, "seed": seed, "data": data, "data_root": data_root, "device": device,
                    "bf16": bf16, "threat_model": threat_model,
                    "deadline": None if time_limit is None else time.time() + time_limit}
            series_jobs.run_in_processes(stages, record, record_path, spec, min(jobs, seeds), on_stage)
        else:
            run_stages(stages, record, record_path, on_stage, time_limit)
        atomic_write_json(record_path, record)
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


def _continue(out: Path, record: dict, opts: dict, summary_only: bool) -> None:
    """Merge into the series' record (series.json, as read) the seed records a cut `jobs` run left, and refuse
    other options than the folder was made with (summary_only: the record as it is, nothing checked)."""
    from chanscope.workflows import series_jobs

    if summary_only:
        return
    series_jobs.merge_seed_records(out, record)
    refuse_other_options(made_with(record), opts, "series")


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


def _runs(out: Path, budgets: list[Budget], seeds: int, seed: int):
    for b in budgets:
        for k in range(seeds):
            yield b, seed + k, out / b.label / ("" if k == 0 else f"seed{seed + k}")


def summarise(out: str | Path, budgets: list[Budget], seeds: int, seed: int = 0) -> pd.DataFrame:
    """One row per budget, method and seed that has been evaluated (SERIES_COLUMNS)."""
    from chanscope.observe.verdicts import worst_case

    rows = []
    for b, s, folder in _runs(Path(out), budgets, seeds, seed):
        for method in ("at", "cifs"):
            run = folder / method
            if not (run / "eval.csv").is_file() or not (run / "metrics.csv").is_file():
                continue
            o = overall_accuracy(run)  # eval.csv and aa/eval.csv
            m = pd.read_csv(run / "metrics.csv")
            last = m.iloc[-1]
            adaptive = o.get(attack_named(o, "adaptive"), np.nan)
            ex = run / "eval_examples.csv"
            rows.append({"budget": b.label, "compute": b.compute, "method": method, "seed": s,
                         "natural": o["natural"], "pgd20": o.get("pgd20", np.nan), "cw20": o.get("cw20", np.nan),
                         "adaptive": adaptive, "autoattack": o.get("aa", np.nan),
                         "autoattack_ref": o.get("aa-ref", np.nan),
                         "worst_case": worst_case(pd.read_csv(ex), None) if ex.is_file() else np.nan,
                         "train_batch_acc": float(last.train_acc),
                         "train_eval_nat_acc": float(last.get("train_eval_nat_acc", np.nan)),
                         "train_eval_pgd_acc": float(last.get("train_eval_pgd_acc", np.nan)),
                         "label_leak": float(last.train_acc - last.get("train_eval_pgd_acc", np.nan)),
                         "seconds": round(float(m.seconds.sum()), 1)})
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def gaps(out: str | Path, budgets: list[Budget], seeds: int, seed: int = 0) -> pd.DataFrame:
    """Per budget: worst-case robust accuracy of AT and CIFS and the AT - CIFS gap, each with its 95% interval
    (bootstrap over test images, paired, and over seeds)."""
    from chanscope.observe.verdicts import worst_case

    rows = []
    for b in budgets:
        ss = [Seed(ev=ev) for ev in _evaluated(Path(out), b, seeds, seed)]
        if not ss:
            continue
        stats: dict[str, Interval] = {
            m: interval(ss, lambda s, w, m=m: worst_case(s.ev[m], w), "ev") for m in ("at", "cifs")}
        stats["at - cifs"] = interval(ss, lambda s, w: worst_case(s.ev["at"], w) - worst_case(s.ev["cifs"], w), "ev")
        # the same gap under PGD-20 alone (CIFS's final logits): what an evaluation without the adaptive attack sees
        if all("pgd20" in e for s in ss for e in s.ev.values()):
            stats["at - cifs, pgd20"] = interval(
                ss, lambda s, w: accuracy(s.ev["at"].pgd20.to_numpy(), w) - accuracy(s.ev["cifs"].pgd20.to_numpy(), w),
                "ev")
        for what, iv in stats.items():
            rows.append({"budget": b.label, "compute": b.compute, "what": what, "seeds": len(ss), "value": iv.value,
                         "lo": iv.lo, "hi": iv.hi})
    return pd.DataFrame(rows, columns=["budget", "compute", "what", "seeds", "value", "lo", "hi"])


def _evaluated(out: Path, b: Budget, seeds: int, seed: int) -> list[dict[str, pd.DataFrame]]:
    """AT's and CIFS's per-image records at budget b, one dict per seed that has evaluated both."""
    found = []
    for _, _, folder in _runs(out, [b], seeds, seed):
        ev = {m: folder / m / "eval_examples.csv" for m in ("at", "cifs")}
        if all(p.is_file() for p in ev.values()):
            found.append({m: pd.read_csv(p) for m, p in ev.items()})
    return found


def trend(out: str | Path, budgets: list[Budget], seeds: int, seed: int = 0) -> dict | None:
    """How the AT - CIFS gap (worst-case robust accuracy) changes from the smallest to the largest budget that
    every seed has evaluated: the change with its 95% interval, paired within a seed (a seed evaluates every
    budget on the same test images), and what it says: one method gains on the other only where the interval
    excludes zero; which side of zero each budget's gap lies on is the gap's own interval (series.md). None
    with fewer than two such budgets."""
    from chanscope.observe.verdicts import worst_case

    done = [(b, ev) for b in budgets if len(ev := _evaluated(Path(out), b, seeds, seed)) == seeds]
    if len(done) < 2:
        return None
    (small, e0), (large, e1) = done[0], done[-1]
    ss = [Seed(ev={f"{m}@{k}": e[m] for k, e in (("s", a), ("l", b)) for m in ("at", "cifs")})
          for a, b in zip(e0, e1)]

    def gap(s: Seed, w, k: str) -> float:
        return worst_case(s.ev[f"at@{k}"], w) - worst_case(s.ev[f"cifs@{k}"], w)

    iv = interval(ss, lambda s, w: gap(s, w, "l") - gap(s, w, "s"), "ev")
    g0, g1 = (float(np.mean([gap(s, None, k) for s in ss])) for k in ("s", "l"))
    reading = ("no change the interval can tell apart from zero" if iv.lo <= 0 <= iv.hi else
               "CIFS gains on AT with budget (the AT - CIFS gap falls)" if iv.hi < 0 else
               "AT gains on CIFS with budget (the AT - CIFS gap grows)")
    return {"from": small.label, "to": large.label, "compute_ratio": large.compute / small.compute,
            "gap_from": g0, "gap_to": g1, "change": iv.value, "lo": iv.lo, "hi": iv.hi, "seeds": len(ss),
            "reading": reading}


# series.md's table of means: series.csv's column and its heading
_MEANS = [("natural", "natural"), ("pgd20", "PGD-20"), ("cw20", "CW-20"), ("adaptive", "adaptive"),
          ("autoattack", "AutoAttack"), ("worst_case", "worst case"), ("train_batch_acc", "train batch"),
          ("train_eval_pgd_acc", "train, eval-mode PGD"), ("label_leak", "label leak"),
          ("seconds", "train min (epochs)")]


def markdown(g: pd.DataFrame, tr: dict | None, df: pd.DataFrame | None = None, threat_model: str = "linf") -> str:
    """series.md: per budget the worst-case robust accuracy of AT and CIFS and their gap with 95% intervals,
    the change of the gap from the smallest to the largest budget, and (given series.csv's rows) each method's
    accuracies, label leak and training time, means over seeds."""
    norm = {"linf": "L-inf, eps 8/255", "l2": "L2, eps 0.5"}[threat_model]
    lines = [f"Worst-case robust accuracy in % under {norm} (per image over every attack, the adaptive one through "
             "the mask included), mean over seeds with 95% intervals (test images and seeds).", "",
             "The last column is the gap under PGD-20 alone (CIFS's final logits), as an evaluation without the "
             "adaptive attack would see it.", "",
             "| budget | compute | seeds | AT | CIFS | AT - CIFS | AT - CIFS, PGD-20 only |", "|---" * 7 + "|"]
    for b, rows in g.groupby("budget", sort=False):
        r = rows.set_index("what")
        cells = [f"{r.value[w]:{f}.1f} [{r.lo[w]:{f}.1f}, {r.hi[w]:{f}.1f}]" if w in r.index else "-"
                 for w, f in (("at", ""), ("cifs", ""), ("at - cifs", "+"), ("at - cifs, pgd20", "+"))]
        lines.append(f"| {b} | {int(r.compute.iloc[0]):,} | {int(r.seeds.iloc[0])} | {' | '.join(cells)} |")
    if tr:
        lines += ["", trend_sentence(tr)]
    if df is not None and len(df):
        lines += ["", "Accuracy in % (AutoAttack on the eval subset), label leak in points, training minutes; means "
                  "over the seeds.", "", "| budget | method | seeds | " + " | ".join(h for _, h in _MEANS) + " |",
                  "|---|---|---|" + "---|" * len(_MEANS)]
        for (b, m), rows in df.groupby(["budget", "method"], sort=False):
            cells = [_mean_cell(rows[c] / (60 if c == "seconds" else 1)) for c, _ in _MEANS]
            lines.append(f"| {b} | {m.upper()} | {len(rows)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _mean_cell(v: pd.Series) -> str:
    """The mean over seeds; '-' where no seed has the value yet, the count where only some have it."""
    n = int(v.notna().sum())
    return "-" if n == 0 else f"{v.mean():.1f}" + ("" if n == len(v) else f" ({n} of {len(v)} seeds)")


def trend_sentence(tr: dict) -> str:
    """trend() in one sentence: the gap at both ends, its change with the interval, and what that says."""
    return (f"From {tr['from']} to {tr['to']} ({tr['compute_ratio']:.1f}x the training compute) the gap goes from "
            f"{tr['gap_from']:+.1f} to {tr['gap_to']:+.1f} points: a change of {tr['change']:+.1f} "
            f"[{tr['lo']:+.1f}, {tr['hi']:+.1f}] over {tr['seeds']} seed(s); {tr['reading']}.")
