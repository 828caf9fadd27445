from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from chanscope.errors import ChanscopeError
from chanscope.workflows import pipeline, plots
from chanscope.workflows.jobs import TrainJob

MICRO = pipeline.SCALES["micro"]  # a built-in scale: nothing to register


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from chanscope.observe import verdicts

    out = tmp_path_factory.mktemp("study")
    with verdicts.draws(200, 400):  # the report's intervals: fewer resamples, the same code
        record = pipeline.reproduce(out, "micro", cifs_scratch=False)
    return out, record


def _png_ok(path):
    data = path.read_bytes()
    return len(data) > 5000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_writes_everything(study):
    out, record = study
    for m in ("standard", "at", "cifs"):
        for f in ("best.pt", "metrics.csv", "eval.csv", "channels.csv", "classes.csv", "sanity/eval.json"):
            assert (out / m / f).is_file(), (m, f)
    assert (out / "cifs-nat" / "last.pt").is_file()
    for name in ("nr_channels", "class_robustness", "training", "class_alignment_at", "class_alignment_cifs"):
        assert _png_ok(out / "figures" / f"{name}.png") and (out / "figures" / f"{name}.pdf").is_file()
    report = (out / "report.md").read_text()
    assert "## The paper's observations" in report and "## Commands and wall times" in report
    # the control every verdict can fail against, and the per-image records the intervals come from
    assert (out / "random" / "best.pt").is_file() and (out / "random" / "examples.npz").is_file()
    assert json.loads((out / "random" / "config.json").read_text())["config"]["method"] == "random"
    for o in ("### 1. AT aligns", "### 2. Under AT", "### 3. Robust classes", "### 4. CIFS suppresses"):
        assert o in report, o
    assert report.count("- Rule: ") == 5 and "## Controls" in report
    assert "random network" in report and (out / "at" / "eval_examples.csv").is_file()
    assert set(record["stages"]) >= {"train standard", "train at", "eval cifs", "activations at"}
    # the warm start: AT starts from the natural model, CIFS from the natural CIFS model
    assert json.loads((out / "at" / "config.json").read_text())["config"]["init"].endswith("standard/last.pt")
    assert json.loads((out / "cifs" / "config.json").read_text())["config"]["init"].endswith("cifs-nat/last.pt")


def test_the_study_writes_the_files_and_columns_it_always_wrote(study):
    """Against the layout the code before the studies-as-data redesign wrote (tests/fixtures/README.md)."""
    from pathlib import Path

    out, _ = study
    want = json.loads((Path(__file__).parent / "fixtures" / "micro_study_layout.json").read_text())
    have = {str(p.relative_to(out)): list(pd.read_csv(p, nrows=1).columns) if p.suffix == ".csv" else None
            for p in sorted(out.rglob("*")) if p.is_file() and not p.name.endswith((".pt", ".log", ".lock"))}
    assert sorted(have) == sorted(want)
    assert {k: v for k, v in have.items() if v != want[k]} == {}


def test_plots_draw_exactly_the_input_statistics(study, tmp_path):
    out, _ = study
    runs = [out / m for m in ("standard", "at", "cifs")]
    data = plots.nr_channels(runs, tmp_path)
    assert _png_ok(tmp_path / "nr_channels.png")
    drawn = pd.read_csv(tmp_path / "nr_channels.csv")
    for m in ("standard", "at", "cifs"):
        ch = pd.read_csv(out / m / "channels.csv").sort_values(["class", "relevance"])
        ch["rank"] = ch.groupby("class").cumcount()
        expect = ch.groupby("rank").mag_adv.mean().to_numpy()
        got = drawn[drawn.model == m].sort_values("rank")
        assert np.allclose(got.mag_adv, expect) and np.allclose(got.plot_adv * got.mag_nat.mean(), expect)
    assert len(data) == len(drawn)
    one = plots.nr_channels(runs[:1], tmp_path, class_name="cat", name="cat")
    ch = pd.read_csv(out / "standard" / "channels.csv")
    ch = ch[ch.class_name == "cat"].sort_values("relevance")
    assert np.allclose(one.mag_nat, ch.mag_nat) and np.allclose(one.relevance, ch.relevance)
    # one layer's file of a run that recorded several (FSR's parts) stands for a run, labelled by its layer
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "channels-layer4.0.select.robust.csv").write_bytes((out / "at" / "channels.csv").read_bytes())
    pair = plots.nr_channels([parts / "channels-layer4.0.select.robust.csv", out / "at"], tmp_path, name="pair")
    assert set(pair.model) == {"parts layer4.0.select.robust", "at"}
    assert np.allclose(pair[pair.model == "at"].mag_adv, pair[pair.model != "at"].mag_adv)

    rob = plots.class_robustness(runs[1:], tmp_path)
    ev = pd.read_csv(out / "at" / "eval.csv")
    ev = ev[(ev.attack == "pgd2") & (ev["class"] != "all")]
    got = pd.read_csv(tmp_path / "class_robustness.csv")
    assert np.allclose(got[got.model == "at"].robust_acc.to_numpy(), ev.robust_acc.to_numpy())
    assert len(rob) == 20

    al = plots.class_alignment(out / "at", tmp_path, classes=["cat", "dog"])
    ch = pd.read_csv(out / "at" / "channels.csv")
    assert np.allclose(al.sort_values(["class_name", "channel"]).mag_adv,
                       ch[ch.class_name.isin(["cat", "dog"])].sort_values(["class_name", "channel"]).mag_adv)
    tr = plots.training_curves(runs, tmp_path)
    assert np.allclose(tr[tr.model == "at"].val_pgd_acc, pd.read_csv(out / "at" / "metrics.csv").val_pgd_acc)
    twin = tmp_path / "other" / "at"  # two runs of one name (fp32 vs bf16 studies): told apart by their parent
    twin.mkdir(parents=True)
    m = pd.read_csv(out / "at" / "metrics.csv")
    m.assign(test_pgd_acc=m.test_pgd_acc + 1).to_csv(twin / "metrics.csv", index=False)
    both = plots.training_curves([out / "at", twin], tmp_path, name="pair")
    assert set(both.model) == {f"{out.name}/at", "other/at"}
    assert np.allclose(both[both.model == "other/at"].test_pgd_acc.to_numpy(), m.test_pgd_acc.to_numpy() + 1,
                       equal_nan=True)


def test_missing_or_incomplete_runs_give_one_line_errors(study, tmp_path):
    out, _ = study
    with pytest.raises(ChanscopeError, match="has no channels.csv; run `chanscope activations"):
        plots.nr_channels([out / "cifs-nat"], tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eval.csv").write_text("attack,class\n")
    with pytest.raises(ChanscopeError, match="incomplete"):
        plots.class_robustness([bad], tmp_path)
    r = subprocess.run([sys.executable, "-m", "chanscope.cli.app", "plot", "class-robustness", "--run",
                        str(tmp_path / "nope"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ChanscopeError, match="class 'zebra' not in"):
        plots.nr_channels([out / "at"], tmp_path, class_name="zebra")


def test_reproduce_bad_out_or_record_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ChanscopeError, match="cannot create output folder .* pick another `out`"):
        pipeline.reproduce(tmp_path / "file" / "study", "smoke")
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "pipeline.json").write_text('{"stages": {"train at"')  # cut off mid-write by another tool
    with pytest.raises(ChanscopeError, match="pipeline.json is not valid JSON; delete it"):
        pipeline.reproduce(torn, "smoke")


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_second_run_skips_finished_stages_and_resumes_a_cut_one(study, monkeypatch):
    out, _ = study
    calls = []
    from chanscope.workflows import training

    real_train = training.fit

    def spy(cfg, run, resume=False, **kw):
        calls.append((run.name, resume))
        return real_train(cfg, run, resume=resume, **kw)

    monkeypatch.setattr(training, "fit", spy)
    # cut the CIFS stage: its summary is gone, as after a kill in the last epoch; eval outputs too
    (out / "cifs" / "summary.json").unlink()
    metrics_before = pd.read_csv(out / "cifs" / "metrics.csv")
    for f in ("eval.json",):
        (out / "cifs" / f).unlink()
    pipeline.reproduce(out, "micro", cifs_scratch=False)
    assert calls == [("cifs", True)]  # nothing else retrained; the cut stage resumed
    after = pd.read_csv(out / "cifs" / "metrics.csv")
    pd.testing.assert_frame_equal(after, metrics_before)
    assert (out / "cifs" / "eval.json").is_file()


@pytest.mark.slow  # a second micro study
def test_time_limit_starts_no_new_stage_and_a_rerun_continues(study, monkeypatch):
    out, _ = study
    (out / "cifs" / "eval.json").unlink()
    (out / "report.md").unlink()
    seen = []
    pipeline.reproduce(out, "micro", cifs_scratch=False, time_limit=0.0,
                       on_stage=lambda name, status, secs: seen.append((name, status)))
    assert ("eval cifs", "not started (time limit; run again to continue)") in seen
    assert not (out / "cifs" / "eval.json").is_file() and (out / "report.md").is_file()
    pipeline.reproduce(out, "micro", cifs_scratch=False)
    assert (out / "cifs" / "eval.json").is_file()


def test_plan_passes_bf16_to_every_training_stage(tmp_path):
    """`reproduce --bf16` trains every model with bf16 autocast (also on CPU) and records it in the command."""
    def cfgs(**kw):
        trains = [s for s in pipeline.plan(tmp_path, "smoke", **kw) if isinstance(s.job, TrainJob)]
        return trains, [s.job.config for s in trains]

    trains, on = cfgs(bf16=True)
    assert len(trains) == 5 and all(c.uses_bf16("cpu") for c in on) and all("--bf16" in s.command for s in trains)
    trains, off = cfgs()
    assert not any(c.uses_bf16("cpu") for c in off) and all(c.uses_bf16("cuda") for c in off)


def test_plan_runs_every_seed_in_its_own_folder_with_its_own_control(tmp_path):
    stages = pipeline.plan(tmp_path, "smoke", seed=3, seeds=2)
    cfgs = {s.model: s.job.config for s in stages if isinstance(s.job, TrainJob)}
    assert cfgs["at"].seed == 3 and cfgs["seed4/at"].seed == 4
    assert cfgs["seed4/at"].init == str(tmp_path / "seed4" / "standard" / "last.pt")  # its own warm start
    names = {s.name for s in stages}
    assert {"control random", "control seed4/random", "activations seed4/random", "eval seed4/cifs"} <= names
    assert "eval random" not in names  # the control is studied, not evaluated
    cifs_act = next(s for s in stages if s.name == "activations cifs")
    # every model under the scale's PGD on the final CE (matched objectives), CIFS through its mask
    assert "--attack pgd10" in cifs_act.command and "--follow-mask" in cifs_act.command


def test_recorded_commands_rerun_their_stages(study, tmp_path, monkeypatch):
    """A stage pasted from pipeline.json reproduces it: the eval of CIFS and the training of the standard
    model, rerun from their recorded command lines into another folder, give the same numbers."""
    import shlex

    from chanscope.cli.app import app
    from typer.testing import CliRunner

    out, record = study
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    assert not any("..." in st["command"] for st in stages.values())
    cmd = shlex.split(stages["eval cifs"]["command"])
    assert cmd[:2] == ["chanscope", "eval"] and "--follow-mask" in cmd and "--out" not in cmd
    res = CliRunner().invoke(app, cmd[1:] + ["--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    again, first = pd.read_csv(tmp_path / "eval" / "eval.csv"), pd.read_csv(out / "cifs" / "eval.csv")
    pd.testing.assert_frame_equal(again[["attack", "robust_acc"]], first[["attack", "robust_acc"]])
    cmd = shlex.split(stages["train standard"]["command"])
    cmd[cmd.index("--out") + 1] = str(tmp_path / "standard")
    res = CliRunner().invoke(app, cmd[1:])
    assert res.exit_code == 0, res.output
    again, first = pd.read_csv(tmp_path / "standard" / "metrics.csv"), pd.read_csv(out / "standard" / "metrics.csv")
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), first.drop(columns="seconds"))
    control = shlex.split(stages["control random"]["command"])
    assert control[:2] == ["chanscope", "control"]
    control[control.index("--out") + 1] = str(tmp_path / "random")
    res = CliRunner().invoke(app, control[1:])
    assert res.exit_code == 0, res.output
    import torch

    a = torch.load(tmp_path / "random" / "best.pt", weights_only=False)
    b = torch.load(out / "random" / "best.pt", weights_only=False)
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert stages["control random"]["run"] == "random" and stages["eval cifs"]["seed"] == 0
    res = CliRunner().invoke(app, ["control", "--like", str(out / "at"), "--out", str(out / "cifs")])
    assert res.exit_code == 2 and "holds a trained cifs run" in res.output
    assert (out / "cifs" / "best.pt").is_file()


def test_a_study_merges_only_its_own_workers_records(tmp_path):
    """The cpu study's old per-seed scripts left pipeline-seed<k>.json behind (merged once, never removed):
    they are not merged again over newer entries; a worker's record (pipeline.seed<s>.json) is."""
    from chanscope.workflows import seed_jobs
    from chanscope.workflows.study import StudyRecord

    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": {"eval at": {"seconds": 9.0, "command": "new"}}}))
    (tmp_path / "pipeline-seed0.json").write_text(json.dumps({"stages": {"eval at": {"seconds": 1.0}}}))
    seed_jobs.seed_record(tmp_path, 1, "pipeline").write_text(json.dumps({"stages": {"eval seed1/at": {}}}))
    record = StudyRecord.load(tmp_path / "pipeline.json")
    seed_jobs.merge_seed_records(record)
    assert record.stages["eval at"] == {"seconds": 9.0, "command": "new"} and "eval seed1/at" in record.stages
    assert (tmp_path / "pipeline-seed0.json").exists() and not (tmp_path / "pipeline.seed1.json").exists()


def test_a_jobs_worker_gets_its_seeds_stages_as_the_study_plans_them(tmp_path):
    """What a `reproduce --jobs` worker runs (`seed_part` of the spec) is the plan's stages of its seed, with
    the same commands; --only train leaves the trainings and the control."""
    spec = {"out": str(tmp_path), "scale": "micro", "data": None, "data_root": None, "with_cas": True,
            "cifs_scratch": False, "seed": 3, "seeds": 2, "device": None, "bf16": None, "threat_model": "l2",
            "only": None, "index": 1}
    plan = pipeline.plan(tmp_path, "micro", with_cas=True, cifs_scratch=False, seed=3, seeds=2, threat_model="l2")
    want = [(st.name, st.command) for st in plan if st.id.index == 1]
    assert [(st.name, st.command) for st in pipeline.seed_part(spec)] == want
    assert {st.model for st in pipeline.seed_part(spec)} >= {"seed4/at", "seed4/cas", "seed4/random"}
    trained = pipeline.seed_part({**spec, "only": "train"})
    assert [st.name for st in trained] == [n for n, _ in want if n.startswith(("train ", "control "))]


@pytest.mark.slow  # two micro studies side by side and one more
def test_jobs_runs_the_study_seeds_in_processes_as_one_process_would(tmp_path, monkeypatch, draws):
    """`reproduce --jobs 2`: each seed in a one-thread process of its own, one pipeline.json with every stage,
    the report once both have stopped; seed 1 measured in its own process as in one process of its own."""
    import torch

    from chanscope.workflows import seed_jobs
    monkeypatch.setattr(seed_jobs, "cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    draws(n_boot=100, n_perm=100)
    with pytest.raises(ChanscopeError, match="jobs"):
        pipeline.reproduce(tmp_path / "par", "micro", seeds=2, jobs=0)
    seen = []
    record = pipeline.reproduce(tmp_path / "par", "micro", seeds=2, cifs_scratch=False, jobs=2,
                                on_stage=lambda n, s, t: seen.append((n, s)))
    assert [n for n, s in seen if s.startswith("running (1 thread")] == ["seed 0", "seed 1"]
    names = {st.name for st in pipeline.plan(tmp_path / "par", "micro", cifs_scratch=False, seeds=2)}
    assert set(record["stages"]) == names and {r["seed"] for r in record["stages"].values()} == {0, 1}
    assert not list((tmp_path / "par").glob("pipeline*seed*.json"))
    assert (tmp_path / "par" / "report.md").is_file()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipeline.reproduce(tmp_path / "seq", "micro", seed=1, cifs_scratch=False)
    finally:
        torch.set_num_threads(threads)
    for run in ("at", "cifs", "random"):
        a = pd.read_csv(tmp_path / "par" / "seed1" / run / "classes.csv")
        b = pd.read_csv(tmp_path / "seq" / run / "classes.csv")
        point = [c for c in a.columns if not c.endswith(("_lo", "_hi"))]  # the workers draw the default resamples
        pd.testing.assert_frame_equal(a[point], b[point])
