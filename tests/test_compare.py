"""One protocol for the defences: the model plan (warm starts) and the comparison's tables and figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chanscope.errors import ChanscopeError
from chanscope.workflows import compare, pipeline
from chanscope.workflows import compare_tables as tables

MICRO = pipeline.SCALES["micro"]  # a built-in scale: nothing to register


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
def test_compare_trains_evaluates_and_writes_one_table_with_intervals(tmp_path, monkeypatch, draws):
    draws(n_boot=100)
    df, iv = compare.run_compare(tmp_path, "at,fsr", scale="micro", seeds=1)
    assert set(df.method) == {"at", "fsr"} and (df.standard_attack == "pgd2").all()
    # the adaptive worst case is never above the standard attack: it includes it
    assert (df.worst_case <= df.standard + 1e-9).all()
    assert set(iv.method) == {"at", "fsr", "fsr - at"} and (iv.lo <= iv.value + 1e-9).all()
    assert (tmp_path / "figures" / "compare.png").is_file()
    assert (tmp_path / "fsr" / "parts" / "channels-layer4.0.select.robust.csv").is_file()
    fsr = pd.read_csv(tmp_path / "fsr" / "eval.csv")
    assert {"adaptive2:probe0", "adaptive2:probe1"} <= set(fsr.attack)  # the robust and recalibrated heads


def test_jobs_runs_the_seeds_in_processes_as_one_process_would(tmp_path, monkeypatch, draws):
    import torch

    from chanscope.workflows import seed_jobs
    monkeypatch.setattr(seed_jobs, "cores", lambda: 2)  # each of the two seeds' processes: one thread, as below
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    draws(n_boot=100)
    with pytest.raises(ChanscopeError, match="jobs"):
        compare.run_compare(tmp_path / "par", "at", scale="micro", jobs=0)
    seen = []
    par, _ = compare.run_compare(tmp_path / "par", "at", scale="micro", seeds=2, jobs=2,
                                 on_stage=lambda n, s, t: seen.append((n, s)))
    assert [n for n, s in seen if s.startswith("running (1 thread")] == ["seed 0", "seed 1"]
    rec = json.loads((tmp_path / "par" / "compare.json").read_text())
    assert {r["seed"] for r in rec["stages"].values()} == {0, 1} and len(rec["stages"]) == len(seen) - 2
    assert not list((tmp_path / "par").glob("compare*seed*.json"))  # merged into the one record
    assert "seed 1: " in (tmp_path / "par" / "compare-seed1.log").read_text()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq, _ = compare.run_compare(tmp_path / "seq", "at", scale="micro", seeds=1, seed=1)
    finally:
        torch.set_num_threads(threads)
    cols = [c for c in seq.columns if "seconds" not in c and c != "run"]  # seed 1 in its own process as in this one
    pd.testing.assert_frame_equal(par[par.seed == 1][cols].reset_index(drop=True), seq[cols])
    # a cut --jobs run: a stage only in a seed's record is merged before other options are refused
    seed_jobs.seed_record(tmp_path / "par", 1, "compare").write_text(json.dumps({"stages": {"x": {}}}))
    with pytest.raises(ChanscopeError, match=r"seed 0 \(given 3\)"):
        compare.run_compare(tmp_path / "par", "at", scale="micro", seeds=2, seed=3, jobs=2)
    assert "x" in json.loads((tmp_path / "par" / "compare.json").read_text())["stages"]


def _examples(folder, method, natural, pgd20, adaptive, cw=None, failed=None):
    (folder / method / "sanity").mkdir(parents=True)
    pd.DataFrame({"label": 0, "natural": natural, "pgd20": pgd20, "adaptive20": adaptive,
                  "adaptive20:final": pgd20, **({} if cw is None else {"cw20": cw})}).to_csv(
        folder / method / "eval_examples.csv", index=False)
    checks = [{"check": "more PGD steps never raise accuracy", "passed": failed is None},
              {"check": "eps = 0.5 drives accuracy to about 0", "passed": True}]
    (folder / method / "sanity" / "eval.json").write_text(json.dumps({"sanity": checks}))


def test_intervals_and_the_advantage_rule_read_the_per_image_records(tmp_path, monkeypatch, draws):
    draws(n_boot=300)
    n = 400
    ones = [1] * n
    half = [1, 0] * (n // 2)
    # AT: 50% under PGD-20 and its adaptive attack; "masked": 100% under PGD-20 but 25% once adaptive;
    # "better": ahead under both; "same": AT's records
    quarter = [1, 0, 0, 0] * (n // 4)
    for folder in (tmp_path, tmp_path / "seed1"):
        _examples(folder, "at", ones, half, half)
        _examples(folder, "masked", ones, ones, quarter)
        _examples(folder, "better", ones, ones, [1, 1, 1, 0] * (n // 4))
        _examples(folder, "same", ones, half, half)
    iv = tables.intervals(tmp_path, ["at", "masked", "better", "same"], "cpu", seeds=2)
    got = iv.set_index(["method", "under"]).value
    assert got["at", "natural"] == 100 and got["at", "standard attack"] == 50
    assert got["masked", "standard attack"] == 100
    # the worst case is per image over every attack (components aside): min(pgd20, adaptive20)
    assert got["masked", "adaptive worst case"] == 25 and got["better", "adaptive worst case"] == 75
    assert got["masked - at", "adaptive worst case"] == -25 and got["same - at", "standard attack"] == 0
    advantage = tables.advantage(iv).set_index("method")
    assert advantage.loc["better", "finding"] == "keeps its advantage under the adaptive attack"
    assert advantage.loc["masked", "finding"] == "ahead under the standard attack, behind under the adaptive attack"
    assert advantage.loc["same", "finding"].startswith("no advantage: level")
    md = tables.markdown(pd.DataFrame({"method": ["at", "at"], "autoattack": [49.0, float("nan")]}), iv, "pgd20")
    assert "| MASKED | +50.0 [" in md and "| AT | 100.0 [100.0, 100.0] | 50.0 [" in md and "| 49.0 / - |" in md
    assert len(advantage) == 3


def test_an_advantage_the_adaptive_attack_takes_away_is_not_kept():
    def rows(m, std, adp):
        return [{"method": f"{m} - at", "under": "standard attack", "seeds": 2, "value": sum(std) / 2,
                 "lo": std[0], "hi": std[1]},
                {"method": f"{m} - at", "under": "adaptive worst case", "seeds": 2, "value": sum(adp) / 2,
                 "lo": adp[0], "hi": adp[1]}]
    iv = pd.DataFrame(rows("a", (1, 3), (-1, 2)) + rows("b", (-3, -1), (-4, -2)) + rows("c", (-1, 1), (1, 2))
                      + rows("d", (1, 2), (float("nan"), float("nan"))))
    adv = tables.advantage(iv).set_index("method")
    assert adv.loc["c", "finding"] == "ahead under the adaptive attack only (level under the standard attack)"
    assert adv.loc["d", "finding"] == "ahead under the standard attack, unknown under the adaptive attack"
    assert adv.loc["a", "finding"] == "ahead under the standard attack only: the adaptive attack removes it"
    assert adv.loc["b", "finding"] == "no advantage: behind under the standard attack, behind under the adaptive attack"


def test_the_table_carries_cw_and_the_masking_checks_per_seed(tmp_path, monkeypatch, draws):
    draws(n_boot=100)
    n = 200
    ones, half, quarter = [1] * n, [1, 0] * (n // 2), [1, 0, 0, 0] * (n // 4)
    for folder in (tmp_path, tmp_path / "seed1"):
        _examples(folder, "at", ones, half, half, cw=quarter)
        _examples(folder, "masked", ones, ones, quarter, cw=half, failed=folder.name == "seed1" or None)
        for m in ("at", "masked"):
            (folder / m / "eval.csv").write_text("class,attack,robust_acc,natural_acc,n\nall,pgd20,50,100,200\n")
    iv = tables.intervals(tmp_path, ["at", "masked"], "cpu", seeds=2).set_index(["method", "under"])
    assert iv.value["at", "cw"] == 25 and iv.value["masked - at", "cw"] == 25
    df = tables.summarise(tmp_path, ["at", "masked"], "cpu", seeds=2)
    assert list(df.masking_checks) == ["pass", "pass", "pass", "FAIL: more PGD steps never raise accuracy"]
    md = tables.markdown(df, iv.reset_index(), "pgd20")
    assert "| AT | 100.0 [100.0, 100.0] | 50.0 [" in md and "| 25.0 [" in md
    assert "| pass / FAIL: more PGD steps never raise accuracy |" in md
    assert "| pass / FAIL: more PGD steps never raise accuracy | - |" in md  # no activation study yet
    # the activation study's NR over-activation: NR channels (relevance < 0) at 1 + u times their natural
    # magnitude in AT (u uniform in [0, 1] per image, mean 0.5 over the drawn images) and 0.3 less in "masked",
    # image by image; the PR channel unchanged. Paired resampling keeps the difference at exactly -0.3;
    # unpaired, it would spread.
    rng = np.random.default_rng(0)
    for folder in (tmp_path, tmp_path / "seed1"):
        u = rng.uniform(0, 1, 50)
        u += 0.5 - u.mean()
        for m, over in (("at", 1 + u), ("masked", 0.7 + u)):
            np.savez(folder / m / "examples.npz", y=np.zeros(50, dtype=np.int64),
                     relevance=np.array([[-1.0, -2.0, 3.0]]), mag_nat=np.ones((50, 3)),
                     mag_adv=np.stack([over, over, np.ones(50)], axis=1))
    iv = tables.intervals(tmp_path, ["at", "masked"], "cpu", seeds=2)
    nr = iv[iv.under == tables.NR_OVER].set_index("method")
    assert nr.value["at"] == pytest.approx(0.5) and nr.value["masked - at"] == pytest.approx(-0.3)
    assert nr.hi["at"] - nr.lo["at"] > 0.05  # the images differ, so AT's own interval has a width
    assert "| -0.300 [-0.300, -0.300] |" in tables.markdown(df, iv, "pgd20")
    # a model without a CW record leaves the column out rather than guess
    (tmp_path / "at" / "eval_examples.csv").write_text(
        pd.read_csv(tmp_path / "at" / "eval_examples.csv").drop(columns="cw20").to_csv(index=False))
    iv = tables.intervals(tmp_path, ["at", "masked"], "cpu", seeds=2)
    assert "cw" not in set(iv.under)


def test_a_run_folder_of_another_recipe_is_refused_not_taken(tmp_path):
    """A model copied into the comparison's folder (e.g. from a study) that was trained with another recipe
    is refused in one line before any stage runs, instead of being compared as if it were the protocol's."""
    from chanscope.train import build_config
    from chanscope.workflows.training import fit

    fit(build_config("micro", method="standard", width=0.125, epochs=1), tmp_path / "standard")  # micro: 1/16
    with pytest.raises(ChanscopeError, match="trained with other options.*width: run has 0.125, given 0.0625"):
        compare.run_compare(tmp_path, "at", scale="micro", seeds=1)
    assert not (tmp_path / "at").exists()
