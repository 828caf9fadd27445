"""`chanscope zoo`: the across-model analysis against independent formulas and synthetic populations where it
must and must not find a predictor, and the command on a smoke population (two chanscope architectures and a
RobustBench-layout file), resumed, extended and refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from chanscope.cli.app import app
from scipy.stats import rankdata, spearmanr
from typer.testing import CliRunner

from chanscope.checkpoint import save_checkpoint
from chanscope.models import create_model
from chanscope.observe.population import across_models, model_statistics, residual_rank_corr
from chanscope.workflows.zoo import parse_models

runner = CliRunner()


def test_partial_rank_corr_matches_the_textbook_formula():
    gen = np.random.default_rng(1)
    a, r, z = gen.normal(size=(3, 40))
    a, r = a + z, r + z
    rab, raz, rbz = spearmanr(a, r)[0], spearmanr(a, z)[0], spearmanr(r, z)[0]
    expected = (rab - raz * rbz) / np.sqrt((1 - raz ** 2) * (1 - rbz ** 2))
    assert residual_rank_corr(a, r, [rankdata(z)]) == pytest.approx(expected, abs=1e-9)
    assert residual_rank_corr(a, r) == pytest.approx(rab, abs=1e-12)


def _population(n: int, seed: int = 0) -> pd.DataFrame:
    gen = np.random.default_rng(seed)
    nat = gen.uniform(30, 90, n)
    rob = 0.4 * nat + gen.normal(0, 6, n)  # robustness: partly natural accuracy, partly something else
    return pd.DataFrame({"natural_acc": nat, "worst_acc": rob, "arch": np.where(np.arange(n) % 2, "a", "b"),
                         "cosine": (rob - 0.4 * nat) + gen.normal(0, 1, n),  # tracks what nat does not explain
                         "nr_over": nat + gen.normal(0, 1, n)})  # tracks natural accuracy only


def test_a_statistic_beyond_natural_accuracy_is_found_and_one_that_only_tracks_it_is_not():
    res = across_models(_population(30), target="worst_acc", n_boot=300, n_perm=500).set_index("statistic")
    assert res.loc["cosine", "verdict"].startswith("predicts robust accuracy beyond natural accuracy (higher")
    assert res.loc["cosine", "partial_lo"] > 0
    # nr_over correlates with robust accuracy (through natural accuracy) but not beyond it: the verdict fails
    assert res.loc["nr_over", "rho"] > 0.5
    assert res.loc["nr_over", "verdict"] == "no evidence beyond natural accuracy"
    small = across_models(_population(4), target="worst_acc", n_boot=50, n_perm=50)
    assert (small["verdict"] == "too few models (4 < 6)").all()


def test_model_statistics_intervals_bracket_the_point():
    gen = np.random.default_rng(0)
    n, k, c = 60, 3, 8
    y = np.repeat(np.arange(k), n // k)
    nat = gen.uniform(0.5, 1.5, (n, c))
    ex = {"y": y, "mag_nat": nat, "mag_adv": nat * gen.uniform(0.8, 1.6, (n, c)),
          "relevance": gen.normal(size=(k, c)), "nat_ok": gen.random(n) < 0.7, "adv_ok": gen.random(n) < 0.3}
    s = model_statistics(ex, n_boot=100)
    assert s["natural_acc"] == pytest.approx(100 * ex["nat_ok"].mean())
    for name in ("cosine", "relgap", "nr_over", "align"):
        assert s[f"{name}_lo"] <= s[name] <= s[f"{name}_hi"]
    # relgap recomputed by hand: mean |class-mean adv - class-mean nat| / mean class-mean nat
    cn = np.stack([nat[y == j].mean(0) for j in range(k)])
    ca = np.stack([ex["mag_adv"][y == j].mean(0) for j in range(k)])
    assert s["relgap"] == pytest.approx(np.abs(ca - cn).mean() / cn.mean())


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """Three tiny chanscope models of two architectures (one a CIFS model with probes) and one RobustBench
    entry in the zoo's layout, all written here: nothing is downloaded."""
    from chanscope.models.sources import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    d = tmp_path_factory.mktemp("population")
    archs = [("resnet10", {}), ("preact_resnet18", {}), ("resnet10", {"feature_select": "cifs"})]
    for i, (arch, kw) in enumerate(archs):
        torch.manual_seed(i)
        save_checkpoint(d / f"m{i}.pt", create_model(arch, width=0.125, **kw), config={"method": f"method{i}"},
                        input_shape=[3, 32, 32])
    rb = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Sehwag2021Proxy_R18"]["model"]()
    (d / "rb" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": rb.state_dict()}, d / "rb" / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt")
    (d / "list.txt").write_text(f"{d}/m0.pt  # a resnet10\n{d}/m1.pt\n\nrobustbench:Sehwag2021Proxy_R18\n")
    return d


def _zoo(d, out, *extra):
    return runner.invoke(app, ["zoo", "--models-file", str(d / "list.txt"), "--model-dir", str(d / "rb"),
                               "--out", str(out), "--n", "20", "--attack", "pgd2", "--device", "cpu", *extra])


@pytest.mark.slow
def test_zoo_measures_a_population_resumes_and_refuses_another_protocol(population, tmp_path):
    d, out = population, tmp_path / "zoo"
    res = _zoo(d, out)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "zoo.csv")
    models, controls = df[df.role == "model"], df[df.role == "control"]
    assert len(models) == 3 and set(controls.arch) == set(models.arch)  # one control per architecture
    assert set(models.method) == {"method0", "method1", "robustbench"}
    rb = models[models.source == "robustbench"].iloc[0]
    assert isinstance(rb.weights_sha256, str) and len(rb.weights_sha256) == 64
    assert controls.control_why.str.contains("prediction entropy").all()
    for f in ("zoo.md", "zoo-analysis.csv", "zoo-figure.png"):
        assert (out / f).is_file()
    again = _zoo(d, out)  # nothing new: nothing measured again
    assert again.exit_code == 0 and "3 measured before, 0 to measure" in again.output
    more = _zoo(d, out, "--model", str(d / "m2.pt"))  # a model added later is measured alone
    assert more.exit_code == 0 and "1 to measure" in more.output, more.output
    cifs = pd.read_csv(out / "zoo.csv").query("method == 'method2'").iloc[0]
    assert cifs.worst_acc <= cifs.robust_acc  # the adaptive attack counts per image for a model with probes
    bad = _zoo(d, out, "--n", "30")
    assert bad.exit_code == 2 and "another protocol (n differ)" in bad.output
    after = pd.read_csv(out / "zoo.csv")  # nothing written before is lost; the CIFS model brought its own control
    controls = set(after[after.role == "control"].arch)
    assert len(after) == len(df) + 2 and "resnet10(feature_select=cifs,width=0.125)" in controls


def test_zoo_bad_input_is_one_line(tmp_path):
    res = runner.invoke(app, ["zoo", "--models-file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "l.txt").write_text("a.pt colour=red\n")
    res = runner.invoke(app, ["zoo", "--models-file", str(tmp_path / "l.txt"), "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "is not weights=PATH" in res.output
    res = runner.invoke(app, ["zoo", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "no models given" in res.output


def test_a_small_zoo_runs_and_a_corrected_typo_is_not_refused(tmp_path):
    """The default suite's smoke zoo: two tiny models, a typo in --data (one line, exit 2), then the corrected
    command runs in the same folder; the Python API gives the same table for the same protocol. The two models
    differ in their input normalisation only, so they are one architecture with one control."""
    import chanscope

    for i in range(2):
        torch.manual_seed(i)
        norm = {"mean": [0.49 + i / 100] * 3, "std": [0.25] * 3}
        save_checkpoint(tmp_path / f"m{i}.pt", create_model("resnet10", width=0.125, **norm),
                        input_shape=[3, 32, 32])
    args = ["zoo", "--model", str(tmp_path / "m0.pt"), "--model", str(tmp_path / "m1.pt"), "--n", "20",
            "--attack", "pgd1", "--device", "cpu", "--out", str(tmp_path / "z")]
    bad = runner.invoke(app, [*args, "--data", str(tmp_path / "nodata")])
    assert bad.exit_code == 2 and bad.output.count("error:") == 1 and "nor an existing path" in bad.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "z" / "zoo.csv")
    assert sorted(df.role) == ["control", "model", "model"] and df.weights_sha256.str.len().eq(64).sum() == 2
    assert df.arch.nunique() == 1 and "mean=" not in df.arch[0]
    api = chanscope.zoo(str(tmp_path / "m0.pt"), n=20, attack="pgd1", device="cpu", threat_model="Linf")
    mine = df[df.spec == str(tmp_path / "m0.pt")].iloc[0]
    assert api[api.role == "model"].iloc[0]["nr_over"] == pytest.approx(mine.nr_over)


def test_one_model_one_key(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    torch.save({}, tmp_path / "run" / "best.pt")
    folder = parse_models([str(tmp_path / "run"), str(tmp_path / "run" / "best.pt")])
    assert len(folder) == 1  # a run folder and its best.pt are one model, measured once
    a, b = parse_models(["timm:x mean=0.5,0.5,0.5 std=0.2,0.2,0.2", "timm:x mean=0.5,0.5,0.5 std=0.3,0.3,0.3"])
    assert a.key != b.key  # models that differ only in std are two models
    with pytest.raises(Exception, match="does not exist"):
        parse_models([str(tmp_path / "nothere.pt")])


def test_study_folders_expand_to_their_run_folders(tmp_path):
    for run in ("standard", "seed1/at"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.json").write_text("{}")
        (tmp_path / run / "best.pt").write_bytes(b"")
    specs = [m.spec for m in parse_models([str(tmp_path)])]
    assert specs == [str(tmp_path / "seed1/at"), str(tmp_path / "standard")]


def test_controls_of_two_architectures_never_share_a_file_and_old_keys_read_plain():
    from chanscope.workflows.zoo import _control_name, _plain_arch

    a = "resnet18(feature_select=none,in_channels=3,num_classes=10,width=0.125)"
    b = "resnet18(feature_select=none,in_channels=3,num_classes=10,width=0.25)"
    assert a[:40] == b[:40] and _control_name(a) != _control_name(b)
    old = "resnet18(feature_select=none,in_channels=3,mean=[0.48, 0.47, 0.44],num_classes=10,std=[0.2, 0.2, 0.2])"
    assert _plain_arch(old) == "resnet18(feature_select=none,in_channels=3,num_classes=10)"
    assert _plain_arch("resnet18(mean=[0.5],std=[0.2])") == "resnet18()"


def test_the_zoo_under_l2_attacks_in_the_l2_ball_and_refuses_linf_only_attacks(tmp_path):
    import chanscope

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", create_model("resnet10", width=0.125), input_shape=[3, 32, 32])
    res = runner.invoke(app, ["zoo", "--model", str(tmp_path / "m.pt"), "--attack", "fgsm", "--threat-model", "l2",
                              "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "fgm" in res.output
    assert not (tmp_path / "z" / "models").exists()  # refused before anything is written
    common = {"n": 20, "attack": "pgd2", "device": "cpu"}
    l2 = chanscope.zoo(str(tmp_path / "m.pt"), out=tmp_path / "l2", threat_model="l2", **common)
    linf = chanscope.zoo(str(tmp_path / "m.pt"), out=tmp_path / "linf", **common)
    assert json.loads((tmp_path / "l2" / "zoo.json").read_text())["protocol"]["eps"] == pytest.approx(0.5)
    m2, m8 = (d[d.role == "model"].iloc[0] for d in (l2, linf))
    assert m2.relgap != pytest.approx(m8.relgap)  # another ball, another attack: other numbers


def test_a_statistic_that_only_separates_methods_has_no_partial_within_methods():
    """Between-method differences carry `between` (it is the method's robustness); `within` also tracks the
    robustness a model has beyond its method's. Only `within` keeps a partial correlation once method is a
    covariate; the natural-accuracy numbers are those of the same table without a method column."""
    gen = np.random.default_rng(3)
    n = 48
    method = np.repeat(list("abcd"), n // 4)
    level = pd.Series(method).map({"a": 0.0, "b": 5.0, "c": 10.0, "d": 15.0}).to_numpy()
    nat = gen.uniform(30, 90, n)
    own = gen.normal(0, 3, n)
    rob = 0.3 * nat + level + own
    df = pd.DataFrame({"natural_acc": nat, "worst_acc": rob, "method": method,
                       "cosine": level + gen.normal(0, 0.5, n), "relgap": own + gen.normal(0, 0.5, n)})
    res = across_models(df, target="worst_acc", n_boot=300, n_perm=300).set_index("statistic")
    between, within = res.loc["cosine"], res.loc["relgap"]
    assert between.partial_lo > 0 and between.partial_method_lo < 0 < between.partial_method_hi
    assert within.partial_method_lo > 0.3 and within.p_method < 0.01
    plain = across_models(df.drop(columns="method"), target="worst_acc", n_boot=300, n_perm=300)
    assert plain.partial_lo.tolist() == res.partial_lo.tolist() and plain.partial_method.isna().all()


def test_the_figure_bands_only_valid_controls(tmp_path, monkeypatch):
    from chanscope.observe.population import STATISTICS
    from chanscope.workflows import plots

    figs = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, *a: (figs.append(fig), real(fig, *a))[1])
    row = {f"{s}{e}": v for s in STATISTICS for e, v in (("", 0.5), ("_lo", 0.4), ("_hi", 0.6))}
    models = [{"role": "model", "method": "at", "worst_acc": 10.0 + i, **row} for i in range(3)]
    for valid in (True, False):
        ctrl = {"role": "control", "method": "random", "worst_acc": 0.0, "control_valid": valid, **row}
        plots.zoo_figure(pd.DataFrame([*models, ctrl]), tmp_path / f"fig-{valid}")
    banded, plain = (sum(len(ax.patches) for ax in f.axes) for f in figs)
    assert banded == len(STATISTICS) and plain == 0


def test_wilson_interval_against_the_textbook_values():
    from chanscope.workflows.zoo import wilson

    lo, hi = wilson(50.0, 100)  # 50/100: 40.38% to 59.62% (Wilson 1927; e.g. Newcombe 1998, table I)
    assert lo == pytest.approx(40.38, abs=0.01) and hi == pytest.approx(59.62, abs=0.01)
    lo, hi = wilson(0.0, 500)  # zero successes: from 0 to about 3.84/(n+3.84)
    assert lo == pytest.approx(0.0, abs=1e-9) and hi == pytest.approx(100 * 3.8415 / 503.8415, abs=0.01)
