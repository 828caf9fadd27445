"""Progress display and interruption: plain lines off a terminal, Ctrl-C in one line that says how to continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _shared import one_line as _one_line
from _shared import run_cli as _cli
from chanscope.cli.app import app
from typer.testing import CliRunner

from chanscope.checkpoint import save_checkpoint
from chanscope.models import create_model
from chanscope.workflows.training import TrainInterrupted

runner = CliRunner()


@pytest.fixture
def small_run(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "best.pt", create_model("resnet10", width=0.0625).eval())
    return tmp_path / "run"


# ------------------------------------------------------------------------------------ crashes, tracebacks
def test_ctrl_c_during_reproduce_is_one_line_and_says_how_to_continue(tmp_path, monkeypatch):
    import chanscope.cli.reproduce as cli_reproduce

    def interrupted(out, scale, *, on_stage, **kw):
        on_stage("train at", "running", 0.0)
        raise TrainInterrupted("interrupted in epoch 2; state saved")

    monkeypatch.setattr(cli_reproduce, "reproduce", interrupted)
    res = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "s")])
    text = _one_line(res.output)
    assert res.exit_code == 130 and "interrupted during 'train at'" in text and "run the same command again" in text
    assert "Traceback" not in res.output

    def killed(out, scale, *, on_stage, **kw):
        on_stage("eval at", "running", 0.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_reproduce, "reproduce", killed)
    res = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "s")])
    assert res.exit_code == 130 and "during 'eval at'" in _one_line(res.output)


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


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_off_a_terminal_progress_is_plain_lines_and_tables_are_not_cut(tiny, tmp_path):
    res = _cli("eval", "--model", str(tiny), "--attacks", "fgsm,pgd2", "--n", "20", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("pgd2: 20/20 (100%)") for line in lines), res.stdout
    assert "…" not in res.stdout and "airplane" in res.stdout  # rich cuts cells to fit 80 columns


def test_line_progress_prints_first_interval_and_final_lines():
    from io import StringIO

    from chanscope.cli._console import LineProgress
    from rich.console import Console

    buf = StringIO()
    bar = LineProgress(Console(file=buf, width=200), every=3600)
    t = bar.add_task("images", total=100, info="")
    for done in range(0, 101, 10):
        bar.update(t, completed=done)
    out = buf.getvalue().splitlines()
    assert len(out) == 2 and out[0].startswith("images: 0/100") and out[1].startswith("images: 100/100 (100%)")
    buf.truncate(0)
    buf.seek(0)
    bar = LineProgress(Console(file=buf, width=200), every=0)
    t = bar.add_task("images", total=100, info="")
    bar.tasks[t]["t0"] -= 2.0  # two seconds in: an estimate from a rate, not from the first instant
    bar.update(t, completed=50)
    assert "eta 0:00:02" in buf.getvalue()


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

