"""The L2 threat model end to end, on registry-built models: every attack stays in the L2 ball and [0, 1], PGD-L2
agrees with torchattacks' PGDL2 example by example, the option reaches training, eval and a run's defaults, and
bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from _shared import run_cli as _cli

from chanscope.attacks.pgd import distance, pgd
from chanscope.attacks.suite import parse_attacks, run_attack
from chanscope.errors import ChanscopeError, check_eps
from chanscope.models import create_model


def _model(feature_select: str = "none", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18", width=0.125, feature_select=feature_select).eval()


@pytest.mark.parametrize("names,fs", [("fgm,pgd5,cw5,tpgd5,pgd5r2-rs", "none"), ("adaptive3,joint3-rs", "cifs")])
def test_every_l2_attack_stays_in_the_ball_and_the_box(cifar_batch, names, fs):
    x, y = cifar_batch
    model = _model(fs)
    for spec in parse_attacks(names, 0.5, step_size=0.25, threat_model="l2", follow="all" if fs == "cifs" else False):
        assert spec.norm == "l2"
        _, worst, x_adv = run_attack(spec, model, x, y)
        d = distance(x_adv, x, "l2")
        assert float(d.max()) <= 0.5 * (1 + 1e-5), spec.name
        assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
        assert float(d.max()) > 0.4, f"{spec.name} hardly moved: an L2 step of an L-inf size?"
        assert float(distance(x_adv, x, "linf").max()) > 8 / 255, spec.name  # not an L-inf ball in disguise


def test_l2_pgd_matches_torchattacks_per_example(cifar_batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = cifar_batch
    model = _model()
    ours = pgd(model, x, y, eps=0.5, alpha=0.1, steps=10, random_start=False, norm="l2")
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=10, random_start=False)(x, y)
    per_example = (ours - theirs).flatten(1).abs().amax(1)
    assert float((per_example < 1e-4).float().mean()) >= 0.9, per_example
    linf = pgd(model, x, y, eps=0.5, alpha=0.1, steps=10, random_start=False, norm="linf")
    assert float((linf - theirs).abs().max()) > 0.05  # the comparison can tell the norms apart


def test_l2_random_start_is_inside_the_ball_and_spread(cifar_batch):
    x, _ = cifar_batch
    torch.manual_seed(0)
    from chanscope.attacks.pgd import ball_start

    d = distance(ball_start(x, 0.5, "l2"), x, "l2")
    assert float(d.max()) <= 0.5 + 1e-6 and float(d.min()) > 0.4  # uniform by volume in 3072 dims: near the rim


def test_threat_model_names_and_budgets():
    assert [s.name for s in parse_attacks("fgm,pgd20", 0.5, threat_model="L2")] == ["fgm", "pgd20"]
    with pytest.raises(ChanscopeError, match="under --threat-model l2 use fgm"):
        parse_attacks("fgsm", 0.5, threat_model="l2")
    with pytest.raises(ChanscopeError, match="under --threat-model linf use fgsm"):
        parse_attacks("fgm", 8 / 255)
    with pytest.raises(ChanscopeError, match="unknown threat model 'l1'"):
        parse_attacks("pgd20", 0.5, threat_model="l1")
    with pytest.raises(ChanscopeError, match=r"outside \(0, 1\] for linf"):
        check_eps(2.0)
    assert check_eps(2.0, norm="l2") == 2.0
    with pytest.warns(UserWarning, match="L-infinity-sized budget"):
        check_eps(8 / 255, norm="l2")


@pytest.mark.parametrize("method", ["at", "trades", "cas", "cifs", "fsr"])
def test_every_method_trains_on_l2_examples(cifar_batch, method):
    from chanscope.accel.training import fast_craft
    from chanscope.train import build_config
    from chanscope.train.methods import method_for

    x, y = cifar_batch
    cfgs = {t: build_config("smoke", method=method, threat_model=t) for t in ("l2", "linf")}
    model = _model(cfgs["l2"].feature_select)
    crafted = {}
    for t, cfg in cfgs.items():
        torch.manual_seed(0)
        crafted[t] = method_for(cfg, fast_craft(cfg)).inputs(model, x, y, lambda: torch.autocast("cpu", enabled=False))
    assert float(distance(crafted["l2"], x, "l2").max()) <= 0.5 * (1 + 1e-5)
    assert float(distance(crafted["l2"], x, "linf").max()) > 8 / 255 + 1e-3  # not the L-inf ball
    assert float(distance(crafted["linf"], x, "linf").max()) <= 8 / 255 + 1e-6
    assert float(distance(crafted["linf"], x, "l2").max()) > 0.6  # the L-inf ball reaches past L2's 0.5


def test_training_under_l2_scales_the_recipe_and_crafts_l2_examples(cifar_batch):
    from chanscope.accel.training import fast_craft
    from chanscope.train import build_config
    from chanscope.train.methods import method_for

    linf = build_config("smoke", method="at")
    l2 = build_config("smoke", method="at", threat_model="l2")
    ratio = 0.5 / (8 / 255)
    assert l2.threat_model == "l2" and l2.eps == pytest.approx(0.5)
    assert l2.step_size == pytest.approx(linf.step_size * ratio)
    assert build_config("smoke", method="at", threat_model="l2", eps="1.0").eps == 1.0
    x, y = cifar_batch
    model = _model()
    torch.manual_seed(0)
    x_l2 = method_for(l2, fast_craft(l2)).inputs(model, x, y, lambda: torch.autocast("cpu", enabled=False))
    torch.manual_seed(0)
    x_linf = method_for(linf, fast_craft(linf)).inputs(model, x, y, lambda: torch.autocast("cpu", enabled=False))
    assert float(distance(x_l2, x, "l2").max()) <= 0.5 * (1 + 1e-5)
    assert float(distance(x_l2, x, "linf").max()) > 8 / 255 + 1e-3
    assert float(distance(x_linf, x, "linf").max()) <= 8 / 255 + 1e-6


def test_cli_l2_train_then_eval_defaults_to_the_runs_threat_model(tmp_path):
    run = tmp_path / "at-l2"
    r = _cli("train", "--method", "at", "--threat-model", "l2", "--preset", "micro", "--epochs", "1",
             "--out", str(run), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["config"]["threat_model"] == "l2"
    r = _cli("eval", "--model", str(run / "best.pt"), "--attacks", "fgm,pgd5,cw5", "--n", "40", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((run / "eval.json").read_text())
    assert rec["threat_model"] == "l2" and rec["eps"] == pytest.approx(0.5)
    assert all(a["norm"] == "l2" for a in rec["attacks"])
    assert max(rec["max_linf"].values()) <= 0.5 * (1 + 1e-5)  # the largest perturbation, in the run's norm
    import pandas as pd

    assert set(pd.read_csv(run / "eval.csv")["threat_model"]) == {"l2"}
    assert "l2 eps 0.500" in r.stdout
    before = (run / "eval.json").read_bytes()
    bad = _cli("eval", "--model", str(run / "best.pt"), "--threat-model", "l3", "--n", "40")
    assert bad.returncode == 2 and "unknown threat model 'l3'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert (run / "eval.json").read_bytes() == before
    warned = _cli("eval", "--model", str(run / "best.pt"), "--eps", "8/255", "--attacks", "pgd2", "--n", "20",
                  "--out", str(tmp_path / "small"), "--device", "cpu")
    assert warned.returncode == 0
    assert any(line.startswith("warning: eps=0.0313725 under L2 is an L-infinity-sized budget")
               for line in warned.stderr.splitlines()), warned.stderr


@pytest.mark.slow
def test_reference_autoattack_l2_agrees_with_ours(tmp_path):
    """On a trained smoke AT-L2 model (not a chance-level one, where any two attacks agree at 0%)."""
    pytest.importorskip("pyautoattack")
    pytest.importorskip("torchattacks")
    run = tmp_path / "at-l2"
    r = _cli("train", "--method", "at", "--threat-model", "l2", "--preset", "smoke", "--epochs", "12",
             "--out", str(run), "--device", "cpu", timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("eval", "--model", str(run / "best.pt"), "--attacks", "aa,aa-ref", "--n", "200", "--device", "cpu",
             timeout=3600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["attack"]: row for row in json.loads((run / "eval.json").read_text())["overall"]}
    assert rows["aa"]["natural_acc"] > 20.0, "the smoke model did not learn: the comparison would say nothing"
    assert abs(rows["aa"]["robust_acc"] - rows["aa-ref"]["robust_acc"]) <= 4.0


def test_a_study_records_an_l2_training_as_a_command_that_retrains_it(tmp_path):
    import shlex

    from chanscope.train import build_config
    from chanscope.workflows.jobs import TrainJob

    def train_command(cfg, out):
        return TrainJob(cfg, out).argv()

    cfg = build_config("cpu", method="at", threat_model="l2", eps="1.0")
    cmd = shlex.split(train_command(cfg, tmp_path / "at"))
    assert cmd[cmd.index("--threat-model") + 1] == "l2" and cmd[cmd.index("--eps") + 1] == "1.0"
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    again = build_config(flags["--preset"], method=flags["--method"], threat_model=flags["--threat-model"],
                         eps=flags["--eps"])
    assert again.to_dict() == cfg.to_dict()
    assert "--threat-model" not in train_command(build_config("cpu", method="at"), tmp_path / "at")


def test_a_study_under_l2_plans_every_stage_under_l2(tmp_path):
    from chanscope.workflows.jobs import TrainJob
    from chanscope.workflows.pipeline import plan, study_options
    from chanscope.workflows.records import StudyRecord

    stages = plan(tmp_path, "smoke", seeds=2, threat_model="l2")
    trains = [st for st in stages if isinstance(st.job, TrainJob)]
    assert trains and all(st.job.config.threat_model == "l2" for st in trains)
    assert all("--threat-model l2" in st.command for st in trains)
    at = next(st.job.config for st in trains if st.model == "at")
    assert at.eps == pytest.approx(0.5) and at.step_size == pytest.approx(4 / 255 * 0.5 / (8 / 255))
    measured = [st for st in stages if st.kind in ("eval", "activations", "aa")]
    assert measured and all("--threat-model l2 --eps 0.5" in st.command for st in measured), \
        [st.command for st in measured if "--threat-model l2" not in st.command]
    assert not any("fgsm" in st.command for st in measured) and any("fgm" in st.command for st in measured)
    linf = plan(tmp_path, "smoke", seeds=1)
    assert not any("threat-model" in st.command for st in linf)
    with pytest.raises(ChanscopeError, match="threat_model 'l2' \\(given 'linf'\\)"):
        study_options(StudyRecord.from_dict({"options": {"threat_model": "l2"}, "stages": {"x": {}}}),
                      {"threat_model": "linf"})


def test_a_comparison_folder_keeps_its_threat_model(tmp_path):
    from chanscope.workflows.compare import run_compare

    out = tmp_path / "cmp"
    out.mkdir()
    made = {"data": "embedded", "seed": 0, "scale": "smoke", "bf16": None}  # recorded before threat models
    rec = {"options": {**made, "methods": ["at"], "seeds": 1}, "stages": {"train at": {"seconds": 1.0}}}
    (out / "compare.json").write_text(json.dumps(rec))
    before = (out / "compare.json").read_bytes()
    with pytest.raises(ChanscopeError, match="made with threat_model 'linf' \\(given 'l2'\\)"):
        run_compare(out, "at", scale="smoke", seeds=1, threat_model="l2")
    assert (out / "compare.json").read_bytes() == before


def test_a_comparison_continues_under_its_own_threat_model(tmp_path, monkeypatch):
    from chanscope.workflows import compare

    out = tmp_path / "cmp"
    out.mkdir()
    rec = {"options": {"data": "embedded", "seed": 0, "scale": "smoke", "bf16": None, "threat_model": "l2",
                       "methods": ["at"], "seeds": 1}, "stages": {"train at": {"seconds": 1.0}}}
    (out / "compare.json").write_text(json.dumps(rec))
    seen = {}

    class Planned(Exception):
        pass

    def plan(*a, **kw):
        seen.update(kw)
        raise Planned
    monkeypatch.setattr(compare, "plan", plan)
    with pytest.raises(Planned):
        compare.run_compare(out, "at", scale="smoke", seeds=1)  # no threat model given: the folder's
    assert seen["threat_model"] == "l2"


def test_the_sensitivity_grid_attacks_under_the_studys_threat_model(tmp_path):
    from chanscope.workflows.sensitivity import GridPlan, _key

    linf = GridPlan([], ["layer4"], ["gradient"], ["pgd20", "cw20"], 500)
    l2 = GridPlan([], ["layer4"], ["gradient"], ["pgd20", "cw20"], 500, "l2")
    assert [(s.norm, s.eps) for a in l2.attacks for s in l2.spec(a)] == [("l2", 0.5)] * 2
    assert [(s.norm, s.eps) for a in linf.attacks for s in linf.spec(a)] == [("linf", 8 / 255)] * 2
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    assert _key(str(ckpt), linf, "pgd20", 0) != _key(str(ckpt), l2, "pgd20", 0, "l2")  # cached walks apart


def test_a_series_under_l2_plans_every_stage_under_l2_and_keeps_its_folders_threat_model(tmp_path):
    from chanscope.scales import SCALES
    from chanscope.workflows import series

    bs = series.parse_budgets("60x1x1")
    stages = series.seed_stages(tmp_path, bs, SCALES["micro"], 2, 0, 1, threat_model="l2")
    trains = [st for st in stages if st.kind == "train"]
    assert trains and all("--threat-model l2" in st.command for st in trains)
    measured = [st for st in stages if st.kind in ("eval", "aa")]
    assert measured and all("--threat-model l2 --eps 0.5" in st.command for st in measured)
    assert not any("threat-model" in st.command for st in series.seed_stages(tmp_path, bs, SCALES["micro"], 2, 0, 1))
    # a folder made before threat models were recorded is L-inf: L2 is refused in one line, nothing rewritten
    old = tmp_path / "old"
    old.mkdir()
    (old / "series.json").write_text(json.dumps(
        {"options": {"data": "embedded", "seed": 0, "base": "cpu", "bf16": None}, "stages": {}}))
    before = (old / "series.json").read_bytes()
    from chanscope.cli.app import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["series", "--budgets", "60x1x1", "--out", str(old), "--threat-model", "l2"])
    assert res.exit_code == 2 and "made with threat_model 'linf' (given 'l2')" in res.output, res.output
    assert (old / "series.json").read_bytes() == before
    # an L2 folder continues under L2 when the flag is left out (no stage started: time limit 0)
    new = tmp_path / "new"
    series.run_series(new, "60x1x1", base="micro", threat_model="l2", time_limit=0)
    series.run_series(new, "60x1x1", base="micro", time_limit=0)
    assert json.loads((new / "series.json").read_text())["options"]["threat_model"] == "l2"
    with pytest.raises(ChanscopeError, match="threat_model 'l2' \\(given 'linf'\\)"):
        series.run_series(new, "60x1x1", base="micro", threat_model="linf", time_limit=0)
