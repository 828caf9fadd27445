from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from chanscope.cli.app import app
from typer.testing import CliRunner

import chanscope
from chanscope.accel.cpu_alloc import _glibc
from chanscope.accel.training import batch_loss
from chanscope.errors import ChanscopeError
from chanscope.train import build_config
from chanscope.train import methods as methods_mod
from chanscope.workflows import training as training_mod
from chanscope.workflows.training import TrainInterrupted
from chanscope.workflows.training import fit as train

TINY = dict(arch="resnet18", width=0.0625, subset=100, eval_n=20, batch_size=25, epochs=2, steps=1,
            step_size="2/255", eval_steps=1, eval_step_size="2/255")


def _cfg(**kw):
    return build_config("smoke", **{**TINY, **kw})


def _same_state(a, b):
    sa, sb = chanscope.load_model(a, "cpu").state_dict(), chanscope.load_model(b, "cpu").state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["standard", "at", "trades", "cas", "cifs"])
def test_every_method_trains_and_writes_its_run(tmp_path, method):
    res = train(_cfg(method=method, epochs=1), tmp_path / method)
    for f in ("config.json", "metrics.csv", "last.pt", "best.pt"):
        assert (tmp_path / method / f).is_file()
    m = pd.read_csv(tmp_path / method / "metrics.csv")
    assert list(m.columns) == training_mod.METRIC_COLUMNS and len(m) == 1
    assert 0 <= m.test_nat_acc[0] <= 100 and m.train_loss[0] > 0
    model = chanscope.load_model(tmp_path / method / "best.pt", "cpu")
    assert model.model_kwargs["feature_select"] == {"cas": "cas", "cifs": "cifs"}.get(method, "none")
    assert res.best_epoch == 1


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_resume_after_epoch_equals_uninterrupted(tmp_path):
    train(_cfg(method="cifs"), tmp_path / "full")
    with pytest.raises(TrainInterrupted):
        train(_cfg(method="cifs"), tmp_path / "cut", stop_after=1)
    assert len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) == 1
    train(_cfg(method="cifs"), tmp_path / "cut", resume=True)
    assert _same_state(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")
    a, b = pd.read_csv(tmp_path / "full" / "metrics.csv"), pd.read_csv(tmp_path / "cut" / "metrics.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path):
    train(_cfg(method="at"), tmp_path / "full")

    def on_batch(epoch, i, n, loss):
        if epoch == 0 and i == 2:
            os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: finish the batch, save, stop

    with pytest.raises(TrainInterrupted, match="interrupted in epoch 1"):
        train(_cfg(method="at"), tmp_path / "cut", on_batch=on_batch)
    assert (tmp_path / "cut" / "last.pt").is_file() and not (tmp_path / "cut" / "metrics.csv").exists()
    train(_cfg(method="at"), tmp_path / "cut", resume=True)
    assert _same_state(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    train(_cfg(method="standard", epochs=1), tmp_path / "r")
    before = (tmp_path / "r" / "last.pt").read_bytes()
    real = methods_mod.Method.batch_loss

    def nan_loss(*a, **k):
        loss, logits = real(*a, **k)
        return loss * float("nan"), logits

    monkeypatch.setattr(methods_mod.Method, "batch_loss", nan_loss)
    with pytest.raises(ChanscopeError, match="loss became nan"):
        train(_cfg(method="standard", epochs=2), tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "last.pt").read_bytes() == before


def test_init_loads_weights_and_rejects_mismatch(tmp_path):
    train(_cfg(method="cifs", natural=True, epochs=1), tmp_path / "nat")
    res = train(_cfg(method="cifs", epochs=1, init=str(tmp_path / "nat" / "last.pt")), tmp_path / "adv")
    assert res.best_epoch == 1
    with pytest.raises(ChanscopeError, match="mismatch"):
        train(_cfg(method="at", epochs=1, init=str(tmp_path / "nat" / "last.pt")), tmp_path / "bad")


runner = CliRunner()


def _run(args):
    return runner.invoke(app, args, standalone_mode=True)


@pytest.mark.parametrize("args, pattern", [
    (["--method", "magic"], "unknown method 'magic'; known: standard, at, trades, cas, cifs"),
    (["--arch", "resnet19"], "unknown arch 'resnet19'"),
    (["--eps", "2"], "outside (0, 1]"),
    (["--eps", "8/0"], "cannot read"),
    (["--steps", "0"], "steps=0 must be at least 1"),
    (["--data", "/nonexistent/folder"], "neither a known source"),
    (["--preset", "huge"], "unknown preset"),
    (["--layout", "nhwc"], "unknown layout 'nhwc'; known: auto, hybrid, nchw, channels_last"),
    (["--milestones", "75,ninety"], "--milestones '75,ninety' is not a list of whole numbers; write e.g. 75,90"),
    (["--lr", "nan"], "lr=nan must be a positive number"),  # NaN passes `lr <= 0`: the run then died in epoch 1
])
def test_cli_bad_input_is_one_line(tmp_path, args, pattern):
    method = [] if "--method" in args else ["--method", "standard"]
    res = runner.invoke(app, ["train", "--preset", "smoke", "--out", str(tmp_path / "r"), *method, *args])
    assert res.exit_code == 2
    assert pattern in " ".join(res.stderr.split())
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_cli_bad_input_in_a_real_process_is_one_line_on_stderr(tmp_path):
    res = subprocess.run([sys.executable, "-m", "chanscope.cli.app", "train", "--preset", "smoke",
                          "--out", str(tmp_path / "r"), "--method", "magic"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert "unknown method 'magic'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("field, edge, value, pattern", [
    ("beta", 0.0, -1.0, "beta=-1 must be at least 0"),
    ("beta_atk", 0.0, float("nan"), "beta_atk=nan must be at least 0"),
    ("trades_beta", 0.0, float("inf"), "trades_beta=inf must be at least 0"),
    ("lr", 1e-6, float("inf"), "lr=inf must be a positive number"),
    ("width", 0.25, float("nan"), "width=nan must be a positive number"),  # passed `width <= 0`
    ("milestones", [1, 90], [0, 90], r"milestones \[0, 90\] must be epochs from 1 on"),
])
def test_config_rejects_nan_and_out_of_range_numbers(field, edge, value, pattern):
    build_config("smoke", **{field: edge})  # the edge itself is fine
    with pytest.raises(ChanscopeError, match=pattern):
        build_config("smoke", **{field: value})


def test_check_range_bounds():
    from chanscope.errors import check_range, parse_int_list

    assert check_range(0.0, "t", 0.0, 1.0) == 0.0 and check_range(0.999, "t", 0.0, 1.0) == 0.999
    for bad in (1.0, -1e-9, float("nan"), float("inf")):
        with pytest.raises(ChanscopeError, match=r"must be in \[0, 1\)"):
            check_range(bad, "t", 0.0, 1.0)
    assert check_range(1.0, "p", 0.0, 1.0, closed_high=True) == 1.0
    assert parse_int_list("75,90", "m", "75,90") == [75, 90] and parse_int_list("75+90", "m", "75+90") == [75, 90]
    with pytest.raises(ChanscopeError, match="'7.5' is not a list of whole numbers"):
        parse_int_list("7.5", "m", "75,90")


def test_cli_version_needs_no_command():
    res = _run(["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"chanscope {chanscope.__version__}", res.output


def test_cli_train_resume_and_option_mismatch(tmp_path):
    out = tmp_path / "run"
    base = ["train", "--preset", "smoke", "--method", "standard", "--subset", "100", "--eval-n", "20",
            "--width", "0.0625", "--out", str(out)]
    res = _run(base + ["--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "test PGD %" in res.output
    cpu_alloc = json.loads((out / "config.json").read_text())["resolved"]["cpu_alloc"]
    assert cpu_alloc == ("system" if _glibc() else "unavailable")  # the CLI's default, recorded
    res = _run(base + ["--epochs", "1"])
    assert res.exit_code == 2  # a run exists: needs --resume
    res = _run(["train", "--out", str(out), "--resume", "--lr", "0.5"])
    assert res.exit_code == 2
    # options that change no arithmetic may differ on resume
    res = _run(["--cpu-alloc", "reuse", "train", "--out", str(out), "--resume", "--epochs", "2", "--cuda-graphs",
                "--layout", "nchw"])
    assert res.exit_code == 0, res.output
    assert "--cuda-graphs applies on CUDA only" in res.output
    assert len(pd.read_csv(out / "metrics.csv")) == 2
    assert json.loads((out / "config.json").read_text())["resolved"]["cpu_alloc"] == ("reuse" if _glibc() else
                                                                                     "unavailable")
    res = _run(["--cpu-alloc", "fast", "train", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "unknown CPU allocator mode 'fast'; known: reuse, system" in res.output


def test_bf16_default_is_cuda_only_and_opt_in_on_cpu(tmp_path):
    """None: bf16 on CUDA only (CPU results stay float32 unless asked); --bf16 turns it on for CPU too, and
    the run records what it used. The bf16 CIFS run trains and differs from the float32 one by rounding only."""
    assert _cfg().uses_bf16("cuda") and not _cfg().uses_bf16("cpu")
    assert _cfg(bf16=True).uses_bf16("cpu") and not _cfg(bf16=False).uses_bf16("cuda")
    runs = {}
    for name, bf16 in (("fp32", None), ("bf16", True)):
        train(_cfg(method="cifs", epochs=1, bf16=bf16), tmp_path / name)
        rec = json.loads((tmp_path / name / "config.json").read_text())
        assert rec["resolved"]["bf16"] is (bf16 is True)
        assert rec["resolved"]["layout"] == "hybrid"  # auto on CPU
        runs[name] = pd.read_csv(tmp_path / name / "metrics.csv").train_loss[0]
    assert runs["bf16"] != runs["fp32"] and abs(runs["bf16"] - runs["fp32"]) < 0.05 * runs["fp32"]


def test_compile_applies_where_it_can_and_says_why_not(tmp_path):
    """torch.compile cannot differentiate a CIFS forward twice (its relevance gradient), and inductor's CPU
    training gradients drift from eager: both run eagerly with a reason, and the run records what ran."""
    assert "cannot differentiate" in _cfg(method="cifs", compile=True).compile_skipped("cuda")
    assert _cfg(method="cas", compile=True).compile_skipped("cuda") is None  # CAS has no double backward
    assert _cfg(method="at", compile=True).compile_skipped("cuda") is None
    assert "CUDA only" in _cfg(method="at", compile=True).compile_skipped("cpu")
    assert _cfg(method="cifs").compile_skipped("cuda") is None  # not asked for
    res = _run(["train", "--preset", "smoke", "--method", "cifs", "--subset", "60", "--eval-n", "10", "--width",
                "0.0625", "--epochs", "1", "--compile", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "--compile does not apply to CIFS models" in " ".join(res.output.split())
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rec["config"]["compile"] is True and rec["resolved"]["compile"] is False


class _NoTruth(torch.nn.Module):
    """Like torch.compile's wrapper of a model: bool() raises (it has __len__ and no len)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *a, **k):
        return self.m(*a, **k)

    def __len__(self):
        raise TypeError("no len")


def test_update_model_needs_no_truth_value():
    cfg = _cfg(method="standard")
    model = chanscope.create_model("resnet18", **cfg.model_kwargs())
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    loss, logits = batch_loss(cfg, model, x, y, lambda: torch.autocast("cpu", enabled=False),
                                       _NoTruth(model))
    assert logits.shape == (4, 10) and loss.requires_grad
