"""One protocol for the defences: the model plan (warm starts) and the comparison's tables and figure."""

from __future__ import annotations

import pandas as pd
import pytest
from _micro import micro_scale  # tests/ is on sys.path (its conftest)

from chanscope.errors import ChanscopeError
from chanscope.observe import verdicts
from chanscope.workflows import compare, pipeline

MICRO = micro_scale()


def test_every_method_gets_the_same_warm_start_rule():
    models = {name: warm for name, _, warm in pipeline.models_for(["at", "trades", "cas", "cifs", "fsr"])}
    assert models == {"standard": None, "at": "standard", "trades": "standard", "cas-nat": None, "cas": "cas-nat",
                      "cifs-nat": None, "cifs": "cifs-nat", "fsr-nat": None, "fsr": "fsr-nat"}
    assert "standard" not in {n for n, _, _ in pipeline.models_for(["cifs", "fsr"])}
    with pytest.raises(ChanscopeError, match="unknown methods"):
        pipeline.models_for(["at", "magic"])


def test_unknown_methods_are_refused_before_the_folder_is_made(tmp_path):
    with pytest.raises(ChanscopeError, match="unknown methods"):
        compare.run_compare(tmp_path / "c", "at,magic", scale="smoke")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # nine micro trainings and their studies
def test_compare_trains_evaluates_and_writes_one_table_with_intervals(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.SCALES, "micro", MICRO)
    monkeypatch.setattr(verdicts, "N_BOOT", 100)
    df, iv = compare.run_compare(tmp_path, "at,fsr", scale="micro", seeds=1)
    assert set(df.method) == {"at", "fsr"} and (df.standard_attack == "pgd2").all()
    # the adaptive worst case is never above the standard attack: it includes it
    assert (df.worst_case <= df.standard + 1e-9).all()
    assert set(iv.method) == {"at", "fsr", "fsr - at"} and (iv.lo <= iv.value + 1e-9).all()
    assert (tmp_path / "figures" / "compare.png").is_file()
    assert (tmp_path / "fsr" / "parts" / "channels-layer4.0.select.robust.csv").is_file()
    fsr = pd.read_csv(tmp_path / "fsr" / "eval.csv")
    assert {"adaptive2:probe0", "adaptive2:probe1"} <= set(fsr.attack)  # the robust and recalibrated heads
