"""Bad input: one line naming the problem and the fix, exit 2, nothing written lost."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _shared import CIFAR
from _shared import one_line as _one_line
from _shared import run_cli as _cli
from chanscope.cli.app import app
from PIL import Image
from typer.testing import CliRunner

from chanscope.checkpoint import read_checkpoint
from chanscope.data import ImageData, load_data
from chanscope.errors import ChanscopeError
from chanscope.models import create_model
from chanscope.models.sources import load_model
from chanscope.train import build_config
from chanscope.workflows.activations import ActivationOptions, run_activations
from chanscope.workflows.evaluate import EvalOptions, run_eval
from chanscope.workflows.runs import match_classes

runner = CliRunner()


def _one_class_folder(root: Path) -> Path:
    from PIL import Image

    for part in ("train", "test"):
        (root / part / "cat").mkdir(parents=True)
        for i in range(30):
            Image.new("RGB", (32, 32), (i * 8, 0, 0)).save(root / part / "cat" / f"{i}.png")
    return root


def test_class_names_must_match_or_be_mapped_explicitly(tiny, tmp_path):
    folder = tmp_path / "animals"  # 10 classes, other names than the model's
    for split in ("train", "test"):
        for i in range(10):
            (folder / split / f"kind{i}").mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(folder / split / f"kind{i}" / "0.png")
    with pytest.raises(ChanscopeError, match="trained on classes airplane, .*first difference: 'airplane' vs "
                                             "'kind0'.*`classes_by`='position'"):
        run_eval(str(tiny), EvalOptions(attacks="fgsm", data=str(folder), out=str(tmp_path / "o")))
    assert not (tmp_path / "o" / "eval.csv").exists()
    res = _cli("eval", "--model", str(tiny), "--data", str(folder), "--attacks", "fgsm", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "first difference" in _one_line(res.stderr)
    assert "(--classes-by position)" in _one_line(res.stderr)  # the CLI names its flag
    result, summary = run_eval(str(tiny), EvalOptions(attacks="fgsm", data=str(folder), out=str(tmp_path / "o"),
                                                           classes_by="position"))
    assert list(result.table["class"].unique()) == CIFAR + ["all"] and "by position" in summary["classes_note"]


def test_same_class_names_in_another_order_are_mapped_by_name():
    model = create_model("resnet10", width=0.0625)
    model.classes = ["a", "b", "c"]
    y = torch.tensor([0, 1, 2, 2])
    data = ImageData("d", "d", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), y.clone(),
                     torch.zeros(4, 3, 8, 8, dtype=torch.uint8), y.clone(), ["c", "a", "b"])
    note = match_classes(model, data)
    assert "mapped by name" in note and data.classes == ["a", "b", "c"]
    assert data.y_test.tolist() == [2, 0, 1, 1]  # data's c (0) is the model's 2, a (1) is 0, b (2) is 1
    plain = create_model("resnet10", width=0.0625)  # older checkpoints record no names: nothing changes
    assert match_classes(plain, data) is None


def test_at_with_natural_is_refused():
    with pytest.raises(ChanscopeError, match="natural training with method 'at' is method 'standard'"):
        build_config("smoke", method="at", natural=True)
    res = runner.invoke(app, ["train", "--method", "trades", "--natural", "--preset", "smoke"])
    assert res.exit_code == 2 and "is method 'standard'" in _one_line(res.output)
    assert build_config("smoke", method="cifs", natural=True).natural  # the warm start it is meant for


def test_torchscript_and_exported_files_are_named_not_called_corrupt(tmp_path):
    lin = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(lin), tmp_path / "ts.pt")
    torch.export.save(torch.export.export(lin, (torch.rand(1, 3),)), tmp_path / "ep.pt2")
    for name, kind in (("ts.pt", "a TorchScript file"), ("ep.pt2", "an exported program")):
        with pytest.raises(ChanscopeError, match=f"is {kind}") as e:
            read_checkpoint(tmp_path / name)  # where weights are asked for (`init`, `weights`)
        assert "corrupt" not in str(e.value)
    assert load_model(tmp_path / "ts.pt", "cpu")(torch.rand(2, 3)).shape == (2, 2)  # as a model: opened
    with pytest.raises(ChanscopeError, match="exported with a fixed batch of 1"):
        load_model(tmp_path / "ep.pt2", "cpu")


def test_fashion_mnist_files_in_the_wrong_folder_get_the_layout(tmp_path):
    for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(ChanscopeError, match=r"expects .*FashionMNIST/raw/.* are in .* itself: move them into"):
        load_data("fashion-mnist", str(tmp_path))


def test_different_image_counts_name_the_models_and_the_fix():
    import numpy as np

    from chanscope.errors import ChanscopeError
    from chanscope.observe.verdicts import Seed

    s = Seed(ev={"standard": pd.DataFrame({"natural": np.ones(200)}), "at": pd.DataFrame({"natural": np.ones(50)})})
    with pytest.raises(ChanscopeError) as e:
        s.n("ev")
    assert "standard 200, at 50" in str(e.value) and "eval_examples.csv" in str(e.value)
    assert " ev stage" not in str(e.value)


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


def test_train_needs_a_method_and_takes_scale_as_preset(tmp_path):
    r = _cli("train", "--preset", "smoke", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "--method is needed" in r.stderr + r.stdout
    assert not (tmp_path / "r").exists()
    r = _cli("train", "--method", "standard", "--scale", "nosuch", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "nosuch" in r.stderr + r.stdout  # --scale is --preset's other name


def test_a_garbage_archive_is_one_line(tmp_path):
    bad = tmp_path / "garbage.tar.gz"
    bad.write_bytes(os.urandom(1000))
    r = _cli("train", "--method", "standard", "--preset", "smoke", "--data", str(bad), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and len((r.stdout + r.stderr).strip().splitlines()) == 1, r.stdout + r.stderr
    assert "not a tar, gzip, bzip2, xz or zip archive" in r.stdout + r.stderr


def test_an_explicit_layer_needs_no_default_layer(tmp_path, monkeypatch):
    """`activations --layer` on a model without a classifier output studies the layer named (the default layer,
    which that model refuses, is not looked for)."""

    (tmp_path / "headless.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    results, meta = run_activations("headless:make", ActivationOptions(attack="fgsm", n=20, layers=["1"],
                                                                      out=str(tmp_path / "out")))
    assert results[0].layer == "1" and meta["files"] == ["classes-1.csv"]

