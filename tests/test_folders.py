"""Run and study folders: a folder made with other options is refused, two commands never share one, nothing
already written is lost, and a stage knows its outputs by its options."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _shared import run_cli as _cli
from chanscope.cli.app import app
from typer.testing import CliRunner

from chanscope.checkpoint import save_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.io import atomic_write_json
from chanscope.models import create_model
from chanscope.train import build_config
from chanscope.workflows import pipeline
from chanscope.workflows.activations import ActivationOptions, run_activations
from chanscope.workflows.evaluate import EvalOptions, run_eval
from chanscope.workflows.records import StudyRecord
from chanscope.workflows.training import fit as train

runner = CliRunner()


# ------------------------------------------------------------------------------ silent wrong answers
def _fake_study(out, options):
    """A study folder as `reproduce` leaves it: its record, with one finished stage."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"stages": {"train standard": {"seconds": 1.0, "command": "x", "kind": "train", "model": "standard"}},
              **options, "options": options, "scale_settings": json.loads(json.dumps(
                  pipeline.SCALES[options["scale"]].settings()))}
    (out / "pipeline.json").write_text(json.dumps(record))
    return (out / "pipeline.json").read_bytes()


def _md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".chanscope.lock"}


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process writing into `folder` (it holds the folder's lock until killed)."""
    code = ("import sys, time; from chanscope.workflows.runs import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.fixture
def small_run(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "best.pt", create_model("resnet10", width=0.0625).eval())
    return tmp_path / "run"


def test_a_study_folder_refuses_options_it_was_not_made_with(tmp_path):
    made = {"scale": "smoke", "data": "embedded", "seed": 0, "bf16": None, "with_cas": False,
            "cifs_scratch": True}
    before = _fake_study(tmp_path / "s", made)
    for given, name in [({"data": "cifar10"}, "data"), ({"scale": "cpu"}, "scale"), ({"seed": 1}, "seed"),
                        ({"bf16": True}, "bf16"), ({"threat_model": "l2"}, "threat_model")]:
        with pytest.raises(ChanscopeError, match=f"made with {name} .*pick another `out`") as e:
            pipeline.reproduce(tmp_path / "s", **given)
        assert "\n" not in str(e.value)
        assert (tmp_path / "s" / "pipeline.json").read_bytes() == before  # nothing rewritten
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["pipeline.json"]
    # options left out are the folder's; turning on more models is allowed
    opts = pipeline.study_options(StudyRecord.from_dict(json.loads(before)), {"seed": None, "with_cas": True})
    assert opts == {**made, "with_cas": True, "seeds": 1, "threat_model": "linf"}  # recorded before: L-inf
    # an archive given by another path to the same file is the same data
    arch = tmp_path / "d.tar.gz"
    arch.write_bytes(b"x")
    rec = StudyRecord.from_dict({"stages": {"x": {}}, "options": {**made, "data": str(arch)}})
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert pipeline.study_options(rec, {"data": "d.tar.gz"})["data"] == str(arch)
    finally:
        os.chdir(cwd)


def test_a_study_folder_refuses_runs_trained_with_another_recipe(tmp_path):
    """No pipeline.json (deleted), but the runs' config.json say how they were made: scale smoke, asked cpu."""
    run = tmp_path / "s" / "standard"
    run.mkdir(parents=True)
    cfg = build_config("smoke", **pipeline.SCALES["smoke"].train, method="standard", seed=0)
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    with pytest.raises(ChanscopeError, match=r"standard was trained with other options .*batch_size: run has 64, "
                                             "given 128"):
        pipeline.reproduce(tmp_path / "s", "cpu")
    res = runner.invoke(app, ["reproduce", "--scale", "cpu", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_resume_of_a_finished_run_keeps_its_summary(tmp_path):
    cfg = build_config("smoke", method="standard", arch="resnet10", width=0.0625, subset=100, epochs=1,
                       eval_n=10, eval_steps=1)
    train(cfg, tmp_path / "r")
    before = (tmp_path / "r" / "summary.json").read_bytes()
    train(cfg, tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "summary.json").read_bytes() == before


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_keep_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == mode


def test_a_second_command_on_a_busy_folder_is_refused_and_loses_nothing(small_run):
    (small_run / "eval.csv").write_text("attack,robust_acc\npgd20,12.5\n")
    before = _md5s(small_run)
    holder = _hold_lock(small_run)
    try:
        for args in (["train", "--method", "standard", "--preset", "smoke", "--out", str(small_run)],
                     ["eval", "--model", str(small_run / "best.pt"), "--attacks", "fgsm", "--n", "10"],
                     ["activations", "--model", str(small_run / "best.pt"), "--attack", "fgsm", "--n", "10"]):
            r = _cli(*args)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            err = " ".join((r.stdout + r.stderr).split())
            assert "is being written by pid" in err and "Traceback" not in err, err
        assert _md5s(small_run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a killed writer leaves no stuck lock: the folder is free again at once
    r = _cli("eval", "--model", str(small_run / "best.pt"), "--attacks", "fgsm", "--n", "10")
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_trainings_started_together_on_one_folder(tmp_path):
    """The issue's race: two real `train` processes on one folder; one trains, the other is refused, and the
    folder holds one run's files only (its config names the method that wrote its checkpoints)."""
    out = tmp_path / "race"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    args = ["--preset", "smoke", "--epochs", "1", "--subset", "200", "--val-n", "20", "--eval-n", "20", "--out",
            str(out)]
    procs = [subprocess.Popen([sys.executable, "-m", "chanscope.cli.app", "train", "--method", m, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for m in ("at", "standard")]
    results = [(p.wait(timeout=600), p.stdout.read() + p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    import json

    method = json.loads((out / "config.json").read_text())["config"]["method"]
    winner = ("at", "standard")[[rc for rc, _ in results].index(0)]
    assert method == winner
    assert torch.load(out / "best.pt", weights_only=False)["config"]["method"] == winner


def test_lock_is_reentrant_in_one_process(tmp_path):
    from chanscope.workflows.runs import folder_lock

    with folder_lock(tmp_path / "f"), folder_lock(tmp_path / "f"):
        assert (tmp_path / "f" / ".chanscope.lock").is_file()
    t0 = time.time()
    with folder_lock(tmp_path / "f"):  # released: taken again at once
        assert time.time() - t0 < 5


def test_a_second_activations_at_another_layer_or_attack_replaces_nothing(small_run, tmp_path):
    """Outputs named by what they measured: the default layer's files stay when layer3 or another attack is
    studied after it, and the report's table title is read from the data."""
    from chanscope.workflows.report import write_report

    run_activations(str(small_run / "best.pt"), ActivationOptions(attack="fgsm", n=20))
    first = _md5s(small_run)
    _, meta = run_activations(str(small_run / "best.pt"), ActivationOptions(attack="fgsm", n=20, layers=["layer3"]))
    assert meta["files"] == ["classes-layer3.csv"]
    _, meta = run_activations(str(small_run / "best.pt"), ActivationOptions(attack="pgd2", n=20))
    assert meta["files"] == ["classes-pgd2.csv"]
    _, meta = run_activations(str(small_run / "best.pt"), ActivationOptions(attack="fgsm", n=20,
                                                                              relevance="grad-x-act"))
    assert meta["files"] == ["classes-grad-x-act.csv"]
    after = _md5s(small_run)
    assert all(after[k] == v for k, v in first.items() if not k.startswith("activations"))  # nothing replaced
    text = write_report([small_run], tmp_path / "report.md")
    assert "## Per-class alignment (layer layer4, gradient relevance, attack fgsm)" in text
    assert "penultimate layer" not in text


def test_a_study_stage_knows_its_outputs_by_options(tmp_path):
    """An eval another command wrote into a study's run folder (other n) is not taken as the stage's: the stage
    runs again; the same options and a record newer than the model are."""
    import json

    from chanscope.workflows.jobs import EvalJob
    from chanscope.workflows.options import EvalOptions

    run = tmp_path / "at"
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    time.sleep(0.01)
    job = EvalJob(run, EvalOptions(attacks="fgsm,pgd20", n=200, seed=0, follow_mask=True))
    rec = {"attacks": [{"name": "fgsm", "kind": "fgsm", "follow_mask": False},
                       {"name": "pgd20", "kind": "pgd", "follow_mask": False}], "seed": 0, "data": {"n_eval": 200}}
    (run / "eval.json").write_text(json.dumps(rec))
    assert job.done()
    (run / "eval.json").write_text(json.dumps({**rec, "data": {"n_eval": 50}}))  # `chanscope eval --n 50` into it
    assert not job.done()
    (run / "eval.json").write_text(json.dumps({**rec, "attacks": rec["attacks"][:1]}))
    assert not job.done()
    (run / "eval.json").write_text(json.dumps(rec))
    time.sleep(0.01)
    (run / "best.pt").write_bytes(b"retrained")  # the model changed after it was measured
    assert not job.done()


def test_stage_records_compare_the_images_asked_for(tmp_path):
    """n not divisible by the classes: the subset is smaller than asked, and the stage is still done."""
    import json

    from chanscope.workflows.jobs import ActivationJob
    from chanscope.workflows.options import ActivationOptions

    run = tmp_path / "at"
    run.mkdir()
    rec = {"attack": {"name": "pgd10", "kind": "pgd", "follow_mask": False}, "seed": 0,
           "data": {"n_used": 294, "n_requested": 300}}
    (run / "activations.json").write_text(json.dumps(rec))
    assert ActivationJob(run, ActivationOptions(attack="pgd10", n=300, seed=0)).done()
    assert not ActivationJob(run, ActivationOptions(attack="pgd10", n=200, seed=0)).done()


def test_a_study_stage_rewrites_its_own_files_whatever_attack_they_held(small_run):
    """A study folder made by an older version (CIFS studied under adaptive10): its stage writes the canonical
    files again instead of a suffixed copy that it would never read."""
    import json


    run_activations(str(small_run / "best.pt"), ActivationOptions(attack="fgsm", n=20))
    _, meta = run_activations(str(small_run / "best.pt"), ActivationOptions(attack="pgd2", n=20), owned=True)
    assert meta["files"] == ["classes.csv"]
    assert json.loads((small_run / "activations.json").read_text())["attack"]["name"] == "pgd2"


def test_eval_says_what_it_replaced(small_run):

    _, first = run_eval(str(small_run / "best.pt"), EvalOptions(attacks="fgsm", n=20))
    assert first["replaced"] is None
    _, again = run_eval(str(small_run / "best.pt"), EvalOptions(attacks="fgsm", n=20))
    assert again["replaced"] is None  # the same evaluation again replaces nothing worth a note
    _, other = run_eval(str(small_run / "best.pt"), EvalOptions(attacks="pgd2", n=10))
    assert "made with attacks fgsm on 20 images (seed 0)" in other["replaced"]


def test_a_finished_stage_of_an_older_record_is_rewritten_on_disk_when_nothing_runs(tmp_path):
    """A record of an older version (a stage without its run and seed columns) is saved as this version writes
    it even when every stage is finished and nothing runs (readers take those columns from the record)."""
    from chanscope.workflows.jobs import EvalJob, RunId
    from chanscope.workflows.options import EvalOptions
    from chanscope.workflows.study import Stage, run_stages

    run = tmp_path / "at"
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    time.sleep(0.01)
    opts = EvalOptions(attacks="fgsm", n=20, seed=0)
    (run / "eval.json").write_text(json.dumps({"attacks": [{"name": "fgsm", "kind": "fgsm", "follow_mask": False}],
                                               "seed": 0, "data": {"n_eval": 20}}))
    stage = Stage("eval at", RunId(0, "at"), "eval", EvalJob(run, opts))
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"stages": {"eval at": {"seconds": 2.0, "command": "chanscope eval (old)"}}}))
    run_stages([stage], StudyRecord.load(path))
    entry = json.loads(path.read_text())["stages"]["eval at"]
    assert entry["seconds"] == 2.0 and entry["run"] == "at" and entry["seed"] == 0
    assert entry["command"] == stage.command != "chanscope eval (old)"


def test_a_study_record_keeps_what_it_does_not_know_and_reads_older_layouts(tmp_path):
    """StudyRecord round-trips a record: stages, options and every other key as written; a record of the
    layout before options were kept together gives its top-level keys as the options it was made with."""
    path = tmp_path / "pipeline.json"
    old = {"stages": {"train at": {"seconds": 3.0, "command": "chanscope train ..."}}, "scale": "cpu",
           "seed": 1, "data": "embedded", "versions": {"torch": "x"}}
    path.write_text(json.dumps(old))
    rec = StudyRecord.load(path)
    assert rec.stages == old["stages"] and rec.options == {}
    assert rec.made_with(("scale", "seed", "data")) == {"threat_model": "linf", "scale": "cpu", "seed": 1,
                                                          "data": "embedded"}
    assert rec.made_with() == {}  # without the legacy keys: nothing recorded
    rec.options = {"scale": "cpu", "seed": 1}
    rec.stages["eval at"] = {"seconds": 1.0}
    rec.save()
    back = json.loads(path.read_text())
    assert back == {**old, "stages": {**old["stages"], "eval at": {"seconds": 1.0}}, "options": rec.options}
    assert StudyRecord.load(tmp_path / "new.json").to_dict() == {"stages": {}}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ChanscopeError, match="bad.json is not valid JSON; delete it and run again"):
        StudyRecord.load(tmp_path / "bad.json")


def test_a_seed_part_of_a_study_is_that_seeds_stages_into_its_own_record(tmp_path):
    from chanscope.workflows.study import Study, run_study

    stages = pipeline.plan(tmp_path, "micro", seeds=2, cifs_scratch=False)
    study = Study(StudyRecord.load(tmp_path / "pipeline.json"), stages)
    part = study.part(1, StudyRecord.load(tmp_path / "pipeline-seed1.json"))
    assert part.stages and {st.id.seed for st in part.stages} == {1}
    assert len(part.stages) + len(study.part(0).stages) == len(stages)
    assert part.record.path.name == "pipeline-seed1.json"
    said = []
    run_study(part, lambda name, status, secs: said.append((name, status)), start=False)  # reports, starts none
    assert [n for n, _ in said] == [st.name for st in part.stages] and {s for _, s in said} == {"not finished"}
    assert not (tmp_path / "pipeline-seed1.json").exists()
