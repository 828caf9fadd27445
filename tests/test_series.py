"""`chanscope series`: AT against warm-started CIFS at several budgets (micro budgets, seconds each)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _micro import micro_scale  # tests/ is on sys.path (its conftest)

from chanscope.errors import ChanscopeError
from chanscope.observe import verdicts
from chanscope.workflows import pipeline, series

MICRO = micro_scale()


def test_budgets_parse_and_order_by_compute():
    bs = series.parse_budgets("10000x16x5, 5000x8x3,10000x10x4")
    assert [b.label for b in bs] == ["5000x8x3", "10000x10x4", "10000x16x5"]
    assert bs[-1].compute == 6 * bs[0].compute  # the largest default budget is 6x the cpu scale
    assert bs[0].scale(pipeline.SCALES["cpu"]).train["step_size"] == 3 / 255  # the cpu scale's own recipe
    for bad in ("5000x8", "0x8x3", "ax8x3", ""):
        with pytest.raises(ChanscopeError, match="IMAGESxEPOCHSxSTEPS|no budget"):
            series.parse_budgets(bad)


@pytest.mark.slow  # 16 micro trainings and 8 evaluations: minutes on 2 cores
def test_series_trains_evaluates_summarises_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.SCALES, "micro", MICRO)
    monkeypatch.setattr(verdicts, "N_BOOT", 100)
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
    gaps = pd.read_csv(tmp_path / "figures" / "series.csv")
    assert len(gaps) == len(df)
    seen = []
    again = series.run_series(tmp_path, "60x1x1,100x1x2", seeds=2, base="micro",
                              on_stage=lambda n, s, t: seen.append(s))
    assert set(seen) == {"skipped (complete)"} and np.allclose(again.worst_case, df.worst_case)
    with pytest.raises(ChanscopeError, match="made with seed 0"):
        series.run_series(tmp_path, "60x1x1", seeds=2, seed=5, base="micro")
