"""A new user's second hour: one writer per folder, outputs named by what they measured, inputs refused in one
line. Each test runs what a user runs (real processes, real models built by the registry)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chanscope.checkpoint import save_checkpoint
from chanscope.models import create_model


def _cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "chanscope.cli.app", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


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
    from chanscope.workflows.activations import ActivationOptions, run_activations
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


def test_different_image_counts_name_the_models_and_the_fix():
    import numpy as np
    import pandas as pd

    from chanscope.errors import ChanscopeError
    from chanscope.observe.verdicts import Seed

    s = Seed(ev={"standard": pd.DataFrame({"natural": np.ones(200)}), "at": pd.DataFrame({"natural": np.ones(50)})})
    with pytest.raises(ChanscopeError) as e:
        s.n("ev")
    assert "standard 200, at 50" in str(e.value) and "eval_examples.csv" in str(e.value)
    assert " ev stage" not in str(e.value)


def _one_class_folder(root: Path) -> Path:
    from PIL import Image

    for part in ("train", "test"):
        (root / part / "cat").mkdir(parents=True)
        for i in range(30):
            Image.new("RGB", (32, 32), (i * 8, 0, 0)).save(root / part / "cat" / f"{i}.png")
    return root


def test_data_with_one_class_is_refused(tmp_path):
    data = _one_class_folder(tmp_path / "one")
    out = tmp_path / "run"
    r = _cli("train", "--method", "at", "--preset", "smoke", "--data", str(data), "--val-n", "10", "--eval-n", "10",
             "--out", str(out))
    err = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "has 1 class in its training images" in err and "--data" in err, err
    assert not out.exists()  # a refused training leaves no empty run folder


def test_messages_name_flags_not_python_fields(tmp_path):
    r = _cli("train", "--method", "standard", "--preset", "smoke", "--val-n", "4000", "--out", str(tmp_path / "r"))
    err = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "--val-n 4000 would take over half" in err and "val_n" not in err, err


def test_usage_errors_are_one_line():
    r = _cli("eval", "--model", "x.pt", "--sanity", "true")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--help" in r.stderr, r.stderr
    assert "--sanity is a flag and takes no value" in r.stderr


def test_smoke_report_says_what_its_scale_shows_and_flags_models_at_chance(tmp_path):
    """The report of a smoke study says it checks the pipeline, and a verdict reading a model at chance carries
    a warning (records made up: a model that predicts class 0 for every image)."""
    import numpy as np

    from chanscope.workflows.activations import write_examples
    from chanscope.workflows.report import _observation_lines, _scale_note, model_flags

    run = tmp_path / "cifs"
    run.mkdir()
    y = np.repeat(np.arange(10), 10)
    write_examples(run / "examples.npz", {"y": y, "nat_ok": (y == 0).astype(int), "adv_ok": np.zeros(100, int),
                                          "mag_nat": np.ones((100, 4), np.float32), "pred_nat": np.zeros(100, int),
                                          "mag_adv": np.ones((100, 4), np.float32),
                                          "relevance": np.ones((10, 4), np.float32)})
    flags = model_flags({"cifs": run})
    assert any("at chance" in f for f in flags["cifs"]) and any("1 class" in f for f in flags["cifs"])
    obs = [{"id": "4", "observation": "4. CIFS beats AT", "verdict": "holds", "rule": "r", "numbers": "n",
            "control": "c", "what it shows": "w"}]
    text = "\n".join(_observation_lines(obs, 2, flags, _scale_note({"scale": "smoke"})))
    assert "**Warning**: cifs is at chance" in text and "say nothing about the paper" in text
    assert "Warning" not in "\n".join(_observation_lines(obs, 2, {}, None))


def test_training_figure_draws_adversarial_batch_accuracy_in_the_pgd_panel(tmp_path, monkeypatch):
    import json

    import pandas as pd

    from chanscope.workflows import plots

    for name, adv in (("standard", False), ("at", True)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"resolved": {"adversarial": adv, "loss": "ce"}}))
        pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5], "train_acc": [11.0, 12.0] if adv else [61.0, 62.0],
                      "test_nat_acc": [40.0, 41.0], "test_pgd_acc": [20.0, 21.0]}).to_csv(run / "metrics.csv",
                                                                                        index=False)
    seen = {}
    real = plots._save

    def keep(fig, out, name, data):
        seen["axes"] = {ax.get_title(): [list(line.get_ydata()) for line in ax.get_lines()] for ax in fig.axes}
        return real(fig, out, name, data)

    monkeypatch.setattr(plots, "_save", keep)
    plots.training_curves([tmp_path / "standard", tmp_path / "at"], tmp_path / "fig")
    assert [11.0, 12.0] in seen["axes"]["PGD accuracy %"] and [11.0, 12.0] not in seen["axes"]["natural accuracy %"]
    assert [61.0, 62.0] in seen["axes"]["natural accuracy %"]


def test_series_refuses_a_budget_larger_than_the_data(tmp_path):
    from chanscope.errors import ChanscopeError
    from chanscope.workflows.series import run_series

    with pytest.raises(ChanscopeError, match="ask for more training images"):
        run_series(tmp_path / "s", "5000x8x3", seeds=1)  # the embedded set has 5,000 training images before val
    assert not (tmp_path / "s" / "series.json").exists()


def test_a_preset_subset_larger_than_the_data_is_said(tmp_path):
    from chanscope.train import build_config
    from chanscope.train.setup import prepare_data

    data, _ = prepare_data(build_config("cpu", method="standard"))  # 5,000 asked, the embedded set has fewer
    assert any("all 4500 are used" in n for n in data.warnings) and data.warnings[0] in data.notes, data.notes


def test_python_api_plots_leave_no_temporary_folder_and_keep_the_models_mode(tmp_path, monkeypatch):
    import tempfile

    import chanscope

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    torch.manual_seed(0)
    net = create_model("resnet10", width=0.0625).train()
    s = chanscope.study(net, "embedded", attack="fgsm", n=20)
    assert net.training  # the mode it came in
    drawn = s.plot_nr_channels(tmp_path / "fig")
    assert set(drawn.model) == {"CifarResNet"} and not list((tmp_path / "tmp").iterdir())
    table = chanscope.evaluate(net, "embedded", attacks=["fgsm"], n=20)
    assert net.training and len(table)


def test_python_api_refuses_a_model_returning_a_tuple_in_one_line():
    import chanscope
    from chanscope.errors import ChanscopeError

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)), x.mean()

    x, y = torch.rand(20, 3, 32, 32), torch.arange(20) % 10
    with pytest.raises(ChanscopeError, match="returns a tuple, not logits"):
        chanscope.study(Pair(), (x, y), attack="fgsm", n=20)


def test_line_progress_restarts_its_clock_each_epoch_and_gives_no_instant_eta():
    import io

    from chanscope.cli._console import LineProgress
    from rich.console import Console

    buf = io.StringIO()
    p = LineProgress(Console(file=buf, width=200), every=0.0)
    t = p.add_task("epoch", total=10)
    p.update(t, completed=1, description="epoch 1/2")
    assert "eta" not in buf.getvalue().splitlines()[-1]  # no estimate from the first instant
    p.tasks[t]["t0"] -= 5.0
    p.update(t, completed=5)
    assert "eta 0:00:05" in buf.getvalue().splitlines()[-1]
    p.reset(t, total=10, description="epoch 2/2")
    p.update(t, completed=1)
    line = buf.getvalue().splitlines()[-1]
    assert line.startswith("epoch 2/2: 1/10") and "elapsed 0:00:00" in line and "eta" not in line


def test_train_needs_a_method_and_takes_scale_as_preset(tmp_path):
    r = _cli("train", "--preset", "smoke", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "--method is needed" in r.stderr + r.stdout
    assert not (tmp_path / "r").exists()
    r = _cli("train", "--method", "standard", "--scale", "nosuch", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "nosuch" in r.stderr + r.stdout  # --scale is --preset's other name


def test_ctrl_c_during_eval_says_what_happened(small_run):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "chanscope.cli.app", "eval", "--model", str(small_run / "best.pt"),
                          "--attacks", "pgd200", "--n", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    for line in p.stdout:
        if "chanscope eval" in line:
            break
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=120)
    err = " ".join((p.stdout.read() + p.stderr.read()).split())
    assert rc == 130 and "interrupted (Ctrl-C): nothing was written" in err and "Traceback" not in err, err
    assert not (small_run / "eval.csv").exists()


def test_a_garbage_archive_is_one_line(tmp_path):
    bad = tmp_path / "garbage.tar.gz"
    bad.write_bytes(os.urandom(1000))
    r = _cli("train", "--method", "standard", "--preset", "smoke", "--data", str(bad), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and len((r.stdout + r.stderr).strip().splitlines()) == 1, r.stdout + r.stderr
    assert "not a tar, gzip, bzip2, xz or zip archive" in r.stdout + r.stderr


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

    from chanscope.workflows.activations import ActivationOptions, run_activations

    run_activations(str(small_run / "best.pt"), ActivationOptions(attack="fgsm", n=20))
    _, meta = run_activations(str(small_run / "best.pt"), ActivationOptions(attack="pgd2", n=20), owned=True)
    assert meta["files"] == ["classes.csv"]
    assert json.loads((small_run / "activations.json").read_text())["attack"]["name"] == "pgd2"


def test_an_explicit_layer_needs_no_default_layer(tmp_path, monkeypatch):
    """`activations --layer` on a model without a classifier output studies the layer named (the default layer,
    which that model refuses, is not looked for)."""
    from chanscope.workflows.activations import ActivationOptions, run_activations

    (tmp_path / "headless.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    results, meta = run_activations("headless:make", ActivationOptions(attack="fgsm", n=20, layers=["1"],
                                                                      out=str(tmp_path / "out")))
    assert results[0].layer == "1" and meta["files"] == ["classes-1.csv"]


def test_eval_says_what_it_replaced(small_run):
    from chanscope.workflows.evaluate import EvalOptions, run_eval

    _, first = run_eval(str(small_run / "best.pt"), EvalOptions(attacks="fgsm", n=20))
    assert first["replaced"] is None
    _, again = run_eval(str(small_run / "best.pt"), EvalOptions(attacks="fgsm", n=20))
    assert again["replaced"] is None  # the same evaluation again replaces nothing worth a note
    _, other = run_eval(str(small_run / "best.pt"), EvalOptions(attacks="pgd2", n=10))
    assert "made with attacks fgsm on 20 images (seed 0)" in other["replaced"]
