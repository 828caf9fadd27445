"""scripts/carry.py: a cut study folder packed on one machine resumes on the next exactly as it would have."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import chanscope
from chanscope.train import build_config
from chanscope.workflows.training import TrainInterrupted
from chanscope.workflows.training import fit as train

CARRY = Path(__file__).parents[1] / "scripts" / "carry.py"
TINY = dict(arch="resnet10", width=0.0625, subset=100, eval_n=20, batch_size=50, epochs=2, steps=1,
            step_size="2/255", eval_steps=1, eval_step_size="2/255")


def _carry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CARRY), *args], capture_output=True, text=True)


def test_pack_keeps_what_resuming_needs_and_the_copy_resumes_the_same(tmp_path):
    study = tmp_path / "study"
    train(build_config("smoke", method="standard", **TINY), study / "standard")
    at = build_config("smoke", method="at", init=str(study / "standard" / "last.pt"), **TINY)
    with pytest.raises(TrainInterrupted):
        train(at, study / "at", stop_after=1)
    assert _carry("pack", str(study), str(tmp_path / "s.tar.gz")).returncode == 0
    names = set(tarfile.open(tmp_path / "s.tar.gz").getnames())  # by default every checkpoint
    assert {"standard/best.pt", "standard/last.pt", "at/best.pt", "at/last.pt", "at/metrics.csv"} <= names
    res = _carry("pack", str(study), str(tmp_path / "x.tar.gz"), "--without", "at/last.pt")
    assert res.returncode == 2 and "unfinished training" in res.stderr and not (tmp_path / "x.tar.gz").exists()
    # a training on disk that starts from the standard model but has not begun: standard/last.pt stays
    (study / "at2").mkdir()
    shutil.copy(study / "at" / "config.json", study / "at2" / "config.json")
    res = _carry("pack", str(study), str(tmp_path / "x.tar.gz"), "--without", "standard/last.pt")
    assert res.returncode == 2 and "has not begun starts from it" in res.stderr
    (study / "at2" / "config.json").unlink()
    res = _carry("pack", str(study), str(tmp_path / "s2.tar.gz"), "--without", "standard/last.pt,standard/best.pt")
    assert res.returncode == 0, res.stderr
    names = set(tarfile.open(tmp_path / "s2.tar.gz").getnames())
    assert not any(n.startswith("standard/") and n.endswith(".pt") for n in names) and "at/last.pt" in names

    res = _carry("unpack", str(tmp_path / "s2.tar.gz"), str(tmp_path / "copy"))
    assert res.returncode == 0, res.stderr
    a = study / "at" / "metrics.csv"
    assert (tmp_path / "copy" / "at" / "metrics.csv").stat().st_mtime == a.stat().st_mtime  # file times kept
    train(at, study / "at", resume=True)
    train(at, tmp_path / "copy" / "at", resume=True)
    sa = chanscope.load_model(study / "at" / "last.pt", "cpu").state_dict()
    sb = chanscope.load_model(tmp_path / "copy" / "at" / "last.pt", "cpu").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unpack_over_files_is_refused_and_loses_nothing(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "series.json").write_text("{}")
    assert _carry("pack", str(tmp_path / "study"), str(tmp_path / "s.tar.gz")).returncode == 0
    (tmp_path / "study" / "series.json").write_text('{"kept": 1}')
    res = _carry("unpack", str(tmp_path / "s.tar.gz"), str(tmp_path / "study"))
    assert res.returncode == 2 and "already holds series.json" in res.stderr
    assert (tmp_path / "study" / "series.json").read_text() == '{"kept": 1}'
    res = _carry("pack", str(tmp_path / "nothing"), str(tmp_path / "x.tar.gz"))
    assert res.returncode == 2 and "is not a folder" in res.stderr and not (tmp_path / "x.tar.gz").exists()
