"""`chanscope sensitivity`: the observations on a grid of layers, relevance definitions and attacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from chanscope.checkpoint import save_checkpoint
from chanscope.models import create_model
from chanscope.observe import verdicts
from chanscope.observe.grid import GRID_COLUMNS, Cell, cell_rows
from chanscope.observe.verdicts import Seed

K, C, PER = 10, 16, 30


@pytest.fixture(autouse=True)
def fewer_draws(draws):
    draws(n_boot=200, n_perm=200)


def _ex(seed: int, nr_shift: float) -> dict[str, np.ndarray]:
    """Made-up records of a model whose NR channels the attack raises by nr_shift (a working classifier)."""
    rng = np.random.default_rng(seed)
    rel = np.tile(np.linspace(-1, 1, C), (K, 1))
    y = np.repeat(np.arange(K), PER)
    nat = np.abs(1 + 0.1 * rng.standard_normal((len(y), C)))
    adv = nat + nr_shift * (rel[y] < 0) + 0.05 * rng.standard_normal((len(y), C))
    pred = rng.integers(0, K, len(y))
    return {"y": y, "nat_ok": (rng.random(len(y)) < 0.8).astype(int), "adv_ok": (rng.random(len(y)) < 0.4).astype(int),
            "mag_nat": nat.astype(np.float32), "mag_adv": np.clip(adv, 0, None).astype(np.float32),
            "relevance": rel.astype(np.float32), "pred_nat": pred, "pred_adv": (pred + 1) % K,
            "loss_nat": np.ones(len(y), np.float32), "loss_adv": np.full(len(y), 2.0, np.float32)}


def _cell(at_shift: float, random_shift: float) -> list[dict]:
    seeds = [Seed(act={"standard": _ex(10 * i, 0.0), "at": _ex(10 * i + 1, at_shift),
                       "random": _ex(10 * i + 2, random_shift)}) for i in range(2)]
    return cell_rows(Cell("layer4", "gradient", "pgd20"), seeds)


def test_a_cell_where_at_differs_from_its_control_and_one_where_it_does_not():
    two = {r["observation"]: r for r in _cell(0.3, 0.0)}["2"]
    assert two["verdict"] == "holds" and not two["control_inside"] and two["control_valid"]
    assert two["lo"] > two["control_value"]
    same = {r["observation"]: r for r in _cell(0.3, 0.3)}["2"]
    assert same["verdict"] != "holds" and same["control_inside"]
    assert set(GRID_COLUMNS) == set(same)


def test_targeted_pgd_pulls_toward_the_likeliest_wrong_class():
    from chanscope.attacks.suite import _toward, parse_attacks, run_attack

    torch.manual_seed(0)
    net = create_model("resnet10", width=0.125).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    spec = parse_attacks("tpgd10", 8 / 255)[0]
    assert spec.loss == "targeted"
    with torch.no_grad():
        logits = net(x)
    target = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    _, _, xa = run_attack(spec, net, x, y)
    with torch.no_grad():
        before = F.cross_entropy(net(x), target, reduction="none")
        after = F.cross_entropy(net(xa), target, reduction="none")
    assert (after < before).float().mean() > 0.9  # closer to the target class almost everywhere
    assert torch.equal(_toward(net, x, y)(net, x, y), -before)


def _tiny_study(root, seeds=1):
    for k in range(seeds):
        folder = root if k == 0 else root / f"seed{k}"
        for i, m in enumerate(("standard", "at", "random")):
            torch.manual_seed(100 * k + i)
            (folder / m).mkdir(parents=True)
            save_checkpoint(folder / m / "best.pt", create_model("resnet10", width=0.0625).eval())
    return root


def test_sensitivity_command_writes_the_grid(tmp_path):
    study = _tiny_study(tmp_path / "study")
    from chanscope.cli.app import app
    from typer.testing import CliRunner

    args = ["sensitivity", "--study", str(study), "--layer", "layer4", "--layer", "linear:in", "--relevances",
            "gradient,ablation", "--attacks", "tpgd2", "--n", "30"]  # one attack: the grid's statistics are slow
    r = CliRunner().invoke(app, args)  # in this process: the command as the console script maps it
    assert r.exit_code == 0, r.output
    assert "cost: 3 attack walks over 30 images" in " ".join(r.output.split())
    out = study / "sensitivity"
    df = pd.read_csv(out / "sensitivity.csv")
    assert list(df.columns) == GRID_COLUMNS
    assert len(df) == 2 * 2 * 1 * 3  # layers x relevances x attacks x observations
    row = df[(df.layer == "layer4") & (df.relevance == "ablation") & (df.attack == "tpgd2") & (df.observation == 2)]
    assert len(row) == 1  # "does observation 2 survive at layer4 under a targeted attack with ablation?" one row
    assert (out / "sensitivity.md").is_file() and (out / "figures" / "sensitivity.png").is_file()
    ex = pd.read_csv(out / "sensitivity_explained.csv")  # observation 2 at linear:in, from W and the logit change
    assert set(ex.model) == {"standard", "at", "random"} and set(ex.attack) == {"tpgd2"}
    # the penultimate layer's pooled input and its feature map give the same magnitudes, so the same numbers
    a = df[(df.layer == "layer4")].reset_index(drop=True)
    b = df[(df.layer == "linear:in")].reset_index(drop=True)
    assert np.allclose(a.value, b.value, atol=1e-5)
    walks = sorted(p.name for p in (out / "cache" / "seed0").glob("*.npz"))
    assert any(w.startswith("at-tpgd2-") for w in walks) and any(w.startswith("at-relevance-") for w in walks)
    before = {p: p.stat().st_mtime for p in (out / "cache" / "seed0").glob("*.npz")}
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and {p: p.stat().st_mtime for p in before} == before  # walks reused, not redone


def test_sensitivity_refuses_a_folder_without_a_study(tmp_path):
    r = subprocess.run([sys.executable, "-m", "chanscope.cli.app", "sensitivity", "--study", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "holds no study" in r.stderr + r.stdout


def test_the_logit_explanation_keeps_the_attacks_logit_change_and_nothing_else(cifar_batch):
    """At the classifier's input of a real model: the explained features give the same logits as the attacked
    ones (W W^+ W = W), and a feature change orthogonal to W's rows is explained as no change at all."""
    from chanscope.attacks.suite import parse_attacks
    from chanscope.observe.grid import explained_by_logits
    from chanscope.workflows.activations import study_activations

    torch.manual_seed(0)
    net = create_model("resnet10", width=0.125).eval()
    x, y = cifar_batch
    (res,), _ = study_activations(net, x, y, [str(i) for i in range(10)], ["linear:in"],
                                  parse_attacks("pgd3", 8 / 255)[0])
    ex = res.examples
    w = net.linear.weight.detach().numpy()
    proj = explained_by_logits(ex, w)
    lin = net.linear
    with torch.no_grad():
        z_adv = lin(torch.as_tensor(ex["mag_adv"]))
        z_expl = lin(torch.as_tensor(proj["mag_adv"]))
    assert torch.allclose(z_adv, z_expl, atol=1e-4)
    assert np.linalg.norm(proj["mag_adv"] - ex["mag_nat"]) <= np.linalg.norm(ex["mag_adv"] - ex["mag_nat"]) + 1e-5
    # a change orthogonal to every row of W moves no logit: none of it is explained
    u = np.random.default_rng(0).standard_normal(w.shape[1])
    u -= np.linalg.pinv(w) @ (w @ u)
    fake = {**ex, "mag_adv": (ex["mag_nat"] + 0.5 * u[None, :]).astype(np.float32)}
    assert np.allclose(explained_by_logits(fake, w)["mag_adv"], ex["mag_nat"], atol=1e-4)
    assert abs(verdicts.nr_over(explained_by_logits(fake, w))) < 1e-4


def test_the_walk_cache_is_keyed_by_what_it_depends_on(tmp_path):
    from chanscope.workflows.sensitivity import GridPlan, _key

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"a")
    plan = GridPlan([{"at": str(ckpt)}], ["layer4"], ["gradient"], ["pgd20"], 500)
    k = _key(str(ckpt), plan, "pgd20", 0)
    assert k == _key(str(ckpt), plan, "pgd20", 0)
    assert k != _key(str(ckpt), GridPlan(plan.seeds, plan.layers, plan.relevances, plan.attacks, 400), "pgd20", 0)
    assert k != _key(str(ckpt), GridPlan(plan.seeds, ["layer3"], plan.relevances, plan.attacks, 500), "pgd20", 0)
    import os
    import time as _t

    os.utime(ckpt, ns=(_t.time_ns() + 10**9, _t.time_ns() + 10**9))  # retrained: another file
    assert k != _key(str(ckpt), plan, "pgd20", 0)


def test_python_api_grid_on_models_a_user_loads():
    import chanscope

    nets = {}
    for i, m in enumerate(("standard", "at", "random")):
        torch.manual_seed(i)
        nets[m] = create_model("resnet10", width=0.0625).eval()
    df = chanscope.sensitivity(nets, "embedded", layers=["layer4"], relevances=["gradient"], attacks=["fgsm"], n=30)
    assert list(df.columns) == GRID_COLUMNS and set(df.observation) == {"1", "2", "3"}
