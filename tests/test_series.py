"""`chanscope series`: AT against warm-started CIFS at several budgets (micro budgets, seconds each)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chanscope.errors import ChanscopeError
from chanscope.workflows import pipeline, series

MICRO = pipeline.SCALES["micro"]  # a built-in scale: nothing to register


def test_budgets_parse_and_order_by_compute():
    bs = series.parse_budgets("10000x16x5, 5000x8x3,10000x10x4")
    assert [b.label for b in bs] == ["5000x8x3", "10000x10x4", "10000x16x5"]
    assert bs[-1].compute == 6 * bs[0].compute  # the largest default budget is 6x the cpu scale
    assert bs[0].scale(pipeline.SCALES["cpu"]).train["step_size"] == 3 / 255  # the cpu scale's own recipe
    assert bs[1].scale(pipeline.SCALES["cpu"]).train["step_size"] == 2 / 255  # PGD-4 and longer: step 2/255
    for bad in ("5000x8", "0x8x3", "ax8x3", ""):
        with pytest.raises(ChanscopeError, match="IMAGESxEPOCHSxSTEPS|no budget"):
            series.parse_budgets(bad)


def test_summary_only_starts_nothing(tmp_path, monkeypatch):
    seen = []
    df = series.run_series(tmp_path, "60x1x1", seeds=2, base="micro", summary_only=True,
                           on_stage=lambda n, s, t: seen.append((n, s)))
    assert len(df) == 0 and list(df.columns) == series.SERIES_COLUMNS
    assert len(seen) == 2 * 6 and all(s.startswith("not finished") for _, s in seen)  # 4 trainings, 2 evals
    assert "60x1x1 train seed1/cifs" in dict(seen)
    assert not (tmp_path / "60x1x1").exists() and not (tmp_path / "series.json").exists()


def test_cli_names_only_the_files_it_wrote(tmp_path):
    from chanscope.cli.app import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["series", "--summary-only", "--budgets", "600x2x1", "--seeds", "1", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "no model of the series is evaluated yet" in res.output
    assert "series.csv" in res.output and "series.md" not in res.output and "series.png" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.csv"]


def test_jobs_runs_seeds_in_processes_as_one_process_would(tmp_path, monkeypatch, draws):
    import json

    import torch

    from chanscope.workflows import seed_jobs
    monkeypatch.setattr(seed_jobs, "cores", lambda: 2)  # each of the two seeds' processes: one thread, as below
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    draws(n_boot=100)
    with pytest.raises(ChanscopeError, match="jobs"):
        series.run_series(tmp_path / "par", "60x1x1", seeds=2, base="micro", jobs=0)
    assert not (tmp_path / "par").exists()
    late = series.run_series(tmp_path / "late", "60x1x1", seeds=2, base="micro", jobs=2, time_limit=0)
    assert len(late) == 0 and not (tmp_path / "late" / "60x1x1").exists()  # past the time limit: no seed starts
    b = series.parse_budgets("60x1x1")  # a first seed other than 0: seed 4's stages in seed4/, its own record
    assert {st.model for st in series.seed_stages(tmp_path, b, MICRO, 2, 3, 1)} == {
        f"seed4/{m}" for m in ("standard", "at", "cifs-nat", "cifs")}
    assert seed_jobs.seed_record(tmp_path, 4).name == "series.seed4.json"
    blocks = [tmp_path / "par" / "60x1x1" / "standard", tmp_path / "par" / "60x1x1" / "seed1"]
    blocks[0].parent.mkdir(parents=True)
    for f in blocks:  # a file where each seed's first run folder goes: both processes fail at once
        f.write_text("in the way")
    with pytest.raises(ChanscopeError, match=r"seed 0: error: cannot create (run|output) folder .*standard.*"
                                             r"series-seed0\.log.*; seed 1: error: .*seed1.*series-seed1\.log"):
        series.run_series(tmp_path / "par", "60x1x1", seeds=2, base="micro", jobs=2)
    assert json.loads((tmp_path / "par" / "series.json").read_text())["stages"] == {}
    for f in blocks:
        f.unlink()
    seen = []
    par = series.run_series(tmp_path / "par", "60x1x1", seeds=2, base="micro", jobs=2,
                            on_stage=lambda n, s, t: seen.append((n, s)))
    assert [n for n, s in seen if s.startswith("running (1 thread")] == ["seed 0", "seed 1"]
    assert {s for n, s in seen if not n.startswith("seed ")} == {"finished"}
    rec = json.loads((tmp_path / "par" / "series.json").read_text())
    assert set(rec["stages"]) == set(series.stage_names("60x1x1", 2, base="micro"))  # one record, as one process's
    assert not list((tmp_path / "par").glob("series*seed*.json"))
    log = (tmp_path / "par" / "series-seed0.log").read_text()
    assert "seed 0: 6 stages, 1 thread(s)" in log and "60x1x1 train standard: done" in log
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = series.run_series(tmp_path / "seq", "60x1x1", seeds=1, seed=1, base="micro")
    finally:
        torch.set_num_threads(threads)
    cols = [c for c in series.SERIES_COLUMNS if c != "seconds"]  # seed 1 in its own process as in this one:
    pd.testing.assert_frame_equal(par[par.seed == 1][cols].reset_index(drop=True), seq[cols])  # the same models


def test_jobs_stop_request_and_the_records_of_a_cut_run(tmp_path):
    import json

    from chanscope.workflows import seed_jobs, seed_worker
    from chanscope.workflows.train_state import sigint_flag

    said = []

    def stage():  # what run_stages tells the worker before a stage runs
        seed_worker._say_unless_stopped("a stage", "running", 0.0)
        said.append(1)

    stage()
    try:
        with sigint_flag() as flag:  # a stop request in a training: its Ctrl-C (it saves at the next batch)
            seed_worker._on_stop()
        assert flag["stop"]
        with pytest.raises(KeyboardInterrupt):  # outside a training: Ctrl-C at once
            seed_worker._on_stop()
        with pytest.raises(KeyboardInterrupt, match="before this stage"):  # and no further stage
            stage()
        assert said == [1]
    finally:
        seed_worker._stop_asked.clear()
    # a cut --jobs run: its options in series.json, a finished stage only in a seed's record; another --seed
    # is refused as for a folder whose stages one process recorded, and the record is merged first
    opts = {"data": "embedded", "seed": 0, "base": "cpu", "bf16": None}
    (tmp_path / "series.json").write_text(json.dumps({"stages": {}, "options": opts}))
    seed_jobs.seed_record(tmp_path, 1).write_text(json.dumps({"stages": {"5000x8x3 train seed1/at": {}}}))
    # and a seed record as the series wrote it before the runner was shared (a series cut then, carried here)
    (tmp_path / "series-seed0.json").write_text(json.dumps({"stages": {"5000x8x3 train at": {}}}))
    with pytest.raises(ChanscopeError, match=r"seed 0 \(given 3\)"):
        series.run_series(tmp_path, "5000x8x3", seeds=2, seed=3, jobs=2)
    merged = json.loads((tmp_path / "series.json").read_text())["stages"]
    assert {"5000x8x3 train seed1/at", "5000x8x3 train at"} <= set(merged)
    assert not seed_jobs.seed_record(tmp_path, 1).exists() and not (tmp_path / "series-seed0.json").exists()


@pytest.mark.slow  # 16 micro trainings and 8 evaluations: minutes on 2 cores
def test_series_trains_evaluates_summarises_and_resumes(tmp_path, monkeypatch, draws):
    draws(n_boot=100)
    df = series.run_series(tmp_path, "60x1x1,100x1x2", seeds=2, base="micro")
    assert len(df) == 2 * 2 * 2 and set(df.method) == {"at", "cifs"} and set(df.seed) == {0, 1}
    assert (tmp_path / "100x1x2" / "seed1" / "cifs" / "config.json").is_file()
    import json

    cfg = json.loads((tmp_path / "100x1x2" / "seed1" / "cifs" / "config.json").read_text())["config"]
    assert cfg["subset"] == 100 and cfg["steps"] == 2 and cfg["seed"] == 1
    assert cfg["init"].endswith("100x1x2/seed1/cifs-nat/last.pt")  # warm-started from its own natural model
    row = df[(df.budget == "60x1x1") & (df.method == "cifs") & (df.seed == 0)].iloc[0]
    ex = pd.read_csv(tmp_path / "60x1x1" / "cifs" / "eval_examples.csv")
    assert row.worst_case == pytest.approx(100 * ex[["fgsm", "pgd2", "adaptive2"]].min(axis=1).mean())
    assert row.compute == 60 * 1 * 2
    m = pd.read_csv(tmp_path / "60x1x1" / "cifs" / "metrics.csv").iloc[-1]
    assert row.label_leak == pytest.approx(m.train_acc - m.train_eval_pgd_acc)
    assert (tmp_path / "figures" / "series.png").is_file() and (tmp_path / "series.csv").is_file()
    assert "From 60x1x1 to 100x1x2 (2.5x the training compute)" in (tmp_path / "series.md").read_text()
    assert df.attrs["trend"].startswith("From 60x1x1 to 100x1x2")
    gaps = pd.read_csv(tmp_path / "figures" / "series.csv")
    assert len(gaps) == len(df)
    seen = []
    again = series.run_series(tmp_path, "60x1x1,100x1x2", seeds=2, base="micro",
                              on_stage=lambda n, s, t: seen.append(s))
    assert set(seen) == {"skipped (complete)"} and np.allclose(again.worst_case, df.worst_case)
    seen.clear()  # a budget not yet run: listed as unfinished, not started; the finished ones summarised
    part = series.run_series(tmp_path, "60x1x1,100x1x2,200x1x1", seeds=2, base="micro", summary_only=True,
                             on_stage=lambda n, s, t: seen.append((n, s)))
    assert {s for n, s in seen if n.startswith("200x1x1")} == {"not finished"}
    assert {s for n, s in seen if not n.startswith("200x1x1")} == {"finished"}
    assert not (tmp_path / "200x1x1").exists() and np.allclose(part.worst_case, df.worst_case)
    with pytest.raises(ChanscopeError, match="made with seed 0"):
        series.run_series(tmp_path, "60x1x1", seeds=2, seed=5, base="micro")


def _records(folder, at, cifs):
    for m, ok in (("at", at), ("cifs", cifs)):
        (folder / m).mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"label": 0, "natural": 1, "pgd20": ok, "adaptive20": ok}).to_csv(
            folder / m / "eval_examples.csv", index=False)


@pytest.mark.parametrize("cifs_large, reading", [
    ([1] * 150 + [0] * 250, "CIFS gains on AT"),  # the gap falls from 10 points to 0
    ([1] * 110 + [0] * 290, "no change"),  # 10 points at both budgets
    ([1] * 60 + [0] * 340, "AT gains on CIFS"),  # the gap grows to 22.5 points
    # 1.5 points on the same images: 6 of 400 flip; the paired interval (about [-2.4, -0.8]) tells it from
    # zero, one that drew each budget's images apart (about [-4.2, +1.6]) would not
    ([1] * 116 + [0] * 284, "CIFS gains on AT"),
])
def test_the_trend_of_the_gap_must_leave_zero_to_say_anything(tmp_path, monkeypatch, cifs_large, reading, draws):
    draws(n_boot=300)
    bs = series.parse_budgets("50x1x1,100x1x1,400x1x1")
    at = [1] * 150 + [0] * 250  # 37.5% at both budgets, on the same 400 test images per seed
    cifs_small = [1] * 110 + [0] * 40 + [0] * 250  # 10 points below AT, on AT's robust images
    for sub in ("", "seed1"):  # <series>/<budget>/ is seed 0, <series>/<budget>/seed1/ seed 1
        _records(tmp_path / "50x1x1" / sub, at, cifs_small)
        _records(tmp_path / "400x1x1" / sub, at, cifs_large)
    _records(tmp_path / "100x1x1", at, at)  # seed 0 only: not a budget the trend may use
    tr = series.trend(tmp_path, bs, seeds=2)
    assert (tr["from"], tr["to"], tr["compute_ratio"]) == ("50x1x1", "400x1x1", 8.0)
    assert tr["gap_from"] == pytest.approx(10.0) and tr["reading"].startswith(reading)
    assert tr["lo"] <= tr["change"] <= tr["hi"]
    md = series.markdown(series.gaps(tmp_path, bs, seeds=2), tr)
    assert "| 50x1x1 | 100 | 2 | 37.5 [" in md and "| +10.0 [" in md and reading in md
    assert series.trend(tmp_path, bs[:2], seeds=2) is None  # 100x1x1 lacks seed 1: one usable budget


def test_the_pgd20_only_gap_is_beside_the_worst_case_gap(tmp_path):
    for sub in ("", "seed1"):  # CIFS wins under PGD-20 (60% vs AT's 40%), loses once the adaptive attack runs
        for m, pgd, ada in (("at", [1] * 40 + [0] * 60, [1] * 40 + [0] * 60),
                            ("cifs", [1] * 60 + [0] * 40, [1] * 30 + [0] * 70)):
            (tmp_path / "50x1x1" / sub / m).mkdir(parents=True)
            pd.DataFrame({"label": 0, "natural": 1, "pgd20": pgd, "adaptive20": ada}).to_csv(
                tmp_path / "50x1x1" / sub / m / "eval_examples.csv", index=False)
    g = series.gaps(tmp_path, series.parse_budgets("50x1x1"), seeds=2).set_index("what")
    assert g.value["at - cifs"] == pytest.approx(10.0) and g.value["at - cifs, pgd20"] == pytest.approx(-20.0)
    row = series.markdown(g.reset_index(), None).split("| 50x1x1 |")[1]
    assert row.split(" | ")[-2].startswith("+10.0 [") and row.split(" | ")[-1].startswith("-20.0 [")


def test_series_md_lists_each_methods_means_over_seeds():
    df = pd.DataFrame({c: [1.0, 3.0, 10.0] for c in series.SERIES_COLUMNS})
    df["budget"], df["method"], df["seed"], df["compute"] = ["50x1x1", "50x1x1", "100x1x1"], "at", [0, 1, 0], 100
    df["seconds"] = [60.0, 180.0, 300.0]
    df.loc[[1, 2], "autoattack"] = np.nan  # not yet run: by one of 50x1x1's seeds, by 100x1x1's only seed
    md = series.markdown(pd.DataFrame(columns=["budget", "what"]), None, df)
    two = " | ".join(["2.0"] * 4)  # 2 training minutes at the end
    assert f"| 50x1x1 | AT | 2 | {two} | 1.0 (1 of 2 seeds) | {two} | 2.0 |" in md
    assert md.rstrip().endswith("| 100x1x1 | AT | 1 | 10.0 | 10.0 | 10.0 | 10.0 | - | "
                                + " | ".join(["10.0"] * 4) + " | 5.0 |")


def test_stage_times_of_seeds_run_apart_merge_per_budget(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "series_stage_times.py"
    spec = importlib.util.spec_from_file_location("series_stage_times", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for k, secs in ((0, 600.0), (1, 1200.0)):  # each seed's own series folder, stages named without seed
        (tmp_path / f"s{k}").mkdir()
        (tmp_path / f"s{k}" / "series.json").write_text(json.dumps({"stages": {
            "100x1x1 train at": {"seconds": secs}, "100x1x1 eval cifs": {"seconds": 60.0}}}))
    (tmp_path / "study").mkdir()  # a study linked in as the smallest budget: only the series' stages count
    (tmp_path / "study" / "pipeline.json").write_text(json.dumps({"stages": {
        "train seed1/cifs": {"seconds": 120.0}, "autoattack seed1/at": {"seconds": 60.0},
        "eval standard": {"seconds": 999.0}, "activations at": {"seconds": 999.0}, "sanity at": {"seconds": 999.0},
        "control random": {"seconds": 999.0}}}))
    rec = mod.merge([tmp_path / "s0", tmp_path / "s1"], {"50x1x1": tmp_path / "study"})
    assert set(rec["stages"]) == {"100x1x1 train at", "100x1x1 eval cifs", "100x1x1 train seed1/at",
                                  "100x1x1 eval seed1/cifs", "50x1x1 train seed1/cifs",
                                  "50x1x1 autoattack seed1/at"}
    assert rec["minutes_per_budget"] == {"100x1x1": 32.0, "50x1x1": 3.0} and rec["minutes"] == 35.0
