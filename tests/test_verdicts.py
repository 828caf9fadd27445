"""Evidence a reviewer accepts: held-out selection, intervals, controls, and verdict rules that can fail."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from chanscope.data import load_data
from chanscope.train import build_config, train
from chanscope.train.loop import carve_validation


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r.numpy().tobytes()) for r in x}


def test_validation_split_is_held_out_balanced_and_recorded(embedded):
    data = load_data("embedded")
    n_train = len(data.y_train)
    split = carve_validation(data, 200, seed=3)
    assert len(split.y) == 200 and torch.bincount(split.y, minlength=10).tolist() == [20] * 10
    assert len(data.y_train) == n_train - 200
    assert not _rows(split.x) & _rows(data.x_train)  # no validation image is trained on
    again = carve_validation(load_data("embedded"), 200, seed=3)
    assert again.record["indices_sha256"] == split.record["indices_sha256"]  # seeded: the same split


def test_selection_reads_validation_and_test_is_measured_once(tmp_path):
    cfg = build_config("smoke", method="at", arch="resnet10", width=0.0625, subset=200, val_n=50, epochs=3,
                       eval_n=20, eval_steps=1, batch_size=50)
    res = train(cfg, tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert m.val_pgd_acc.notna().all() and m.test_pgd_acc.iloc[:-1].isna().all() and m.test_pgd_acc.notna().iloc[-1]
    assert res.best_epoch == int(m.epoch[m.val_pgd_acc.to_numpy().argmax()])
    rec = json.loads((tmp_path / "r" / "config.json").read_text())
    assert rec["validation"]["n"] == 50 and rec["config"]["val_n"] == 50
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["best_val_pgd_acc"] == float(
        np.nanmax(m.val_pgd_acc))
