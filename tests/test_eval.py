from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from chanscope.cli.app import app
from typer.testing import CliRunner

from chanscope.attacks import frozen_eval, pgd
from chanscope.attacks.external import autoattack, square
from chanscope.attacks.suite import parse_attacks
from chanscope.checkpoint import save_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.models import create_model
from chanscope.models.sources import load_model
from chanscope.train import build_config
from chanscope.workflows.evaluate import evaluate, sanity_checks
from chanscope.workflows.training import fit as train

EPS = 8 / 255
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small standard model trained for a few epochs on the embedded data (seconds)."""
    out = tmp_path_factory.mktemp("run") / "std"
    cfg = build_config("smoke", method="standard", arch="resnet10", width=0.125, subset=1000, epochs=3,
                       eval_n=20, eval_steps=1, batch_size=50, milestones=[10])
    train(cfg, out)
    import chanscope

    return chanscope.load_model(out / "last.pt", "cpu"), out


@pytest.fixture(scope="module")
def batch(embedded):
    idx = torch.arange(0, 1000, 25)
    return embedded.x_test[idx].float() / 255, embedded.y_test[idx]


def _in_ball(xa, x, eps=EPS):
    return float((xa - x).abs().max()) <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1


def test_every_attack_stays_in_the_threat_model(trained, batch):
    model, _ = trained
    x, y = batch[0][:8], batch[1][:8]
    for loss in ("ce", "cw"):
        for rs in (False, True):
            assert _in_ball(pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=5, loss=loss, random_start=rs), x)
    assert _in_ball(pgd(model, x, y, eps=EPS, alpha=EPS, steps=1, random_start=False), x)  # FGSM
    with frozen_eval(model):
        assert _in_ball(square(model, x, y, EPS, queries=20), x)
    cifs = create_model("resnet10", width=0.125, feature_select="cifs").eval()
    assert _in_ball(pgd(cifs, x, y, eps=EPS, alpha=2 / 255, steps=3, loss="joint"), x)


def test_pgd_under_bf16_autocast_stays_in_the_ball_and_still_attacks(trained, batch):
    """Training attacks run under the training autocast (bf16 on CUDA; CPU bf16 here checks the same path)."""
    model, _ = trained
    x, y = batch
    entered = []

    def bf16():
        entered.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    xa = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=5, random_start=False, autocast=bf16)
    assert len(entered) == 5 and xa.dtype == torch.float32 and _in_ball(xa, x)
    with torch.no_grad():
        nat, adv = (F.cross_entropy(model(v), y).item() for v in (x, xa))
    assert adv > nat + 0.5  # the bf16 gradient still points uphill
    cifs = create_model("resnet10", width=0.125, feature_select="cifs").eval()
    assert _in_ball(pgd(cifs, x[:8], y[:8], eps=EPS, alpha=2 / 255, steps=2, loss="joint", autocast=bf16), x[:8])


def test_attack_restores_train_flag_and_requires_grad(trained, batch):
    model, _ = trained
    model.train()
    model.linear.weight.requires_grad_(False)
    pgd(model, batch[0][:4], batch[1][:4], eps=EPS, alpha=2 / 255, steps=2)
    assert model.training and not model.linear.weight.requires_grad
    assert model.conv1.weight.requires_grad
    model.linear.weight.requires_grad_(True)
    model.eval()


def test_more_pgd_steps_raise_the_loss(trained, batch):
    model, _ = trained
    x, y = batch
    losses = []
    for steps in (0, 2, 10):
        xa = pgd(model, x, y, eps=EPS, alpha=1 / 255, steps=steps, random_start=False)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(xa), y).item())
    assert losses[0] < losses[1] < losses[2]


def test_our_pgd_matches_torchattacks(trained, batch):
    torchattacks = pytest.importorskip("torchattacks")
    model, _ = trained
    x, y = batch
    ours = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=10, random_start=False)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10, random_start=False)(x, y)
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(theirs).argmax(1))
    assert (ours - theirs).abs().max() <= 2 / 255 + 1e-6


def test_autoattack_runs_on_a_cifs_model(batch):
    torch.manual_seed(0)
    cifs = create_model("resnet10", width=0.0625, feature_select="cifs").eval()
    x, y = batch[0][:6], batch[1][:6]
    xa = autoattack(cifs, x, y, EPS)
    assert xa.shape == x.shape and _in_ball(xa, x)


def test_adaptive_is_at_least_as_strong_as_final_logits_pgd(batch):
    torch.manual_seed(0)
    cifs = create_model("resnet18", width=0.125, feature_select="cifs").eval()
    x, y = batch
    specs = parse_attacks("pgd10,adaptive10", EPS)
    res = evaluate(cifs, x, y, [str(i) for i in range(10)], specs)
    t = res.table[res.table["class"] == "all"].set_index("attack")
    assert t.loc["adaptive10", "robust_acc"] <= t.loc["pgd10", "robust_acc"]
    assert {"adaptive10:final", "adaptive10:joint", "adaptive10:probe0", "adaptive10:probe1"} <= set(t.index)
    assert t.loc["adaptive10", "robust_acc"] <= t.loc[["adaptive10:joint", "adaptive10:probe0"], "robust_acc"].min()
    assert (res.table.robust_acc <= res.table.natural_acc + 1e-9).all()
    assert all(v <= EPS + 1e-6 for v in res.max_linf.values())


class Rounding(nn.Module):
    """A deliberately masked model: rounds its input to 8 levels, so gradients are zero."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 7) / 7)


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_sanity_checks_flag_a_masked_model_and_pass_a_plain_one(trained, batch):
    model, _ = trained
    x, y = batch
    plain = sanity_checks(model, x, y, EPS, square_queries=100)
    assert all(c["passed"] for c in plain), plain
    masked = sanity_checks(Rounding(model).eval(), x, y, EPS, square_queries=100)
    failed = {c["check"] for c in masked if not c["passed"]}
    assert "eps = 0.5 drives accuracy to about 0" in failed


def _cli(*args):
    r = runner.invoke(app, ["eval", *args])  # in-process: a subprocess would only add torch's start-up
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.output)


def test_eval_cli_writes_tables_and_rejects_bad_input(trained, tmp_path):
    _, run = trained
    res = _cli("--model", str(run / "last.pt"), "--attacks", "fgsm,pgd5", "--n", "50", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    import pandas as pd

    df = pd.read_csv(tmp_path / "eval.csv")
    assert list(df.columns) == ["attack", "threat_model", "eps", "steps", "step_size", "restarts", "loss", "class",
                                "n", "natural_acc", "robust_acc"]
    assert set(df.attack) == {"fgsm", "pgd5"} and len(df) == 2 * 11
    assert (df[df["class"] == "all"].n == 50).all()
    before = (tmp_path / "eval.csv").read_bytes()
    other = create_model("resnet10", width=0.125, num_classes=5)
    save_checkpoint(tmp_path / "five.pt", other)
    save_checkpoint(tmp_path / "gray.pt", create_model("resnet10", width=0.125, in_channels=1))
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    cases = [
        (["--attacks", "pgd20,magic"], "unknown attack 'magic'; valid: fgsm"),
        (["--eps", "1.5"], "outside (0, 1]"),
        (["--attacks", "pgd0"], "steps=0 must be at least 1"),
        (["--n", "5000"], "outside 1..1000"),
        (["--model", str(tmp_path / "broken.pt")], "not a readable checkpoint"),
        (["--surrogate", str(tmp_path / "five.pt")], "surrogate predicts 5 classes, the model has 10"),
        # a model of other data (no run folder, so the embedded set): refused before any attack runs
        (["--model", str(tmp_path / "five.pt")], "predicts 5 classes, data 'embedded' has 10"),
        (["--model", str(tmp_path / "gray.pt")], "does not take images of shape (3, 32, 32) from data 'embedded'"),
    ]
    for extra, pattern in cases:
        args = ["--model", str(run / "last.pt"), "--n", "20", "--out", str(tmp_path), *extra]
        if extra[0] == "--model":
            args = [*extra, "--n", "20", "--out", str(tmp_path)]
        r = runner.invoke(app, ["eval", *args])  # in-process: the exit code and the line are the point
        assert r.exit_code == 2 and pattern in " ".join(r.output.split()), (extra, r.output)
        assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    assert (tmp_path / "eval.csv").read_bytes() == before  # nothing half-written or replaced


def test_parse_attacks_rejects_bad_values():
    with pytest.raises(ChanscopeError):
        parse_attacks("pgd20", 0.0)
    with pytest.raises(ChanscopeError):
        parse_attacks("pgd20", EPS, restarts=0)
    specs = parse_attacks("fgsm,pgd20,cw20", EPS)
    assert [s.steps for s in specs] == [1, 20, 20] and specs[1].step_size == pytest.approx(0.8 / 255)


@pytest.mark.parametrize("select", ["none", "cifs", "cas"])
def test_folded_batchnorm_copy_is_the_same_function(select, batch):
    from chanscope.accel.fold import folded_copy

    torch.manual_seed(0)
    m = create_model("resnet18", width=0.125, feature_select=select).train()
    m(batch[0], batch[1])  # non-trivial running statistics
    m.eval()
    f = folded_copy(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in f.modules())
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())  # the original is untouched
    x, y = batch
    with torch.no_grad():
        assert torch.allclose(f(x), m(x), atol=1e-4, rtol=1e-4)
    a = pgd(m, x, y, eps=EPS, alpha=2 / 255, steps=5, random_start=False, loss="joint" if select != "none" else "ce")
    b = pgd(f, x, y, eps=EPS, alpha=2 / 255, steps=5, random_start=False, loss="joint" if select != "none" else "ce")
    assert (a != b).float().mean() < 0.01  # sign flips only where a gradient is within rounding of 0
    pre = create_model("preact_resnet18", width=0.125)
    assert folded_copy(pre) is pre


def test_folded_twin_is_cached_and_follows_training_and_device_moves(batch):
    """The twin is built once, shares unfolded tensors, and always computes the model's current function."""
    from chanscope.accel.fold import folded_copy

    torch.manual_seed(1)
    x, y = batch
    m = create_model("resnet18", width=0.125, feature_select="cifs")
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    first = folded_copy(m)
    assert first.linear.weight is m.linear.weight  # shared, not copied
    for _ in range(2):  # weights and running statistics change under training
        m.train()
        F.cross_entropy(m(x, y), y).backward()
        opt.step()
        opt.zero_grad()
        f = folded_copy(m)
        assert f is first and not f.training and m.training
        m.eval()
        with torch.no_grad():
            assert torch.allclose(f(x), m(x), atol=1e-4, rtol=1e-4)
    from chanscope.accel.fold import folded

    with folded(m) as f:  # the attack's span: the same function; afterwards its folded weights are released
        assert f is first
        with torch.no_grad():
            assert torch.allclose(f(x), m(x), atol=1e-4, rtol=1e-4)
    assert first.conv1.weight.numel() == 0 and first.layer1[0].conv2.bias.numel() == 0
    with torch.no_grad():
        assert torch.allclose(folded_copy(m)(x), m(x), atol=1e-4, rtol=1e-4)
    m.double()  # new tensors (as after .to(device)): a new twin, equal again
    f = folded_copy(m)
    assert f is not first and f.conv1.weight.dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(f(x.double()), m(x.double()), atol=1e-8)


@pytest.mark.parametrize("select", ["none", "cifs"])
def test_graphed_pgd_static_buffer_iteration_equals_pgd(select, batch):
    """The CUDA-graph attack's static-buffer iteration (run eagerly here) computes pgd exactly: same random
    start, same steps, buffers reused across batches of one shape; a shape beyond the cache falls back."""
    from chanscope.accel.graphed import graphed_pgd

    torch.manual_seed(0)
    m = create_model("resnet18", width=0.125, feature_select=select)
    loss = "joint" if select != "none" else "ce"
    x, y = batch
    for lo in (0, 8, 0):  # two batches of one shape (the second reuses the buffers), then the first again
        xb, yb = x[lo:lo + 16], y[lo:lo + 16]
        torch.manual_seed(lo + 1)
        ref = pgd(m, xb, yb, eps=EPS, alpha=2 / 255, steps=3, loss=loss)
        torch.manual_seed(lo + 1)
        got = graphed_pgd(m, xb, yb, eps=EPS, alpha=2 / 255, steps=3, loss=loss, capture=False)
        assert torch.equal(got, ref) and _in_ball(got, xb)
        assert not torch.equal(got, xb)
    assert m.training and all(p.requires_grad for p in m.parameters())  # restored
    for n in (5, 6, 7):  # max_shapes=2 graphs per model; the third shape runs the eager pgd
        torch.manual_seed(n)
        ref = pgd(m, x[:n], y[:n], eps=EPS, alpha=2 / 255, steps=2, loss=loss)
        torch.manual_seed(n)
        assert torch.equal(graphed_pgd(m, x[:n], y[:n], eps=EPS, alpha=2 / 255, steps=2, loss=loss,
                                       capture=False), ref)


def test_folded_twin_kept_for_graphs_refreshes_in_place(batch):
    """keep=True: the folded weights stay at their addresses (a CUDA graph reads them) and follow training."""
    from chanscope.accel.fold import folded

    torch.manual_seed(2)
    x, y = batch
    m = create_model("resnet18", width=0.125, feature_select="cifs")
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    with folded(m, keep=True) as f:
        ptrs = [f.conv1.weight.data_ptr(), f.layer3[0].conv2.bias.data_ptr()]
    for _ in range(2):
        m.train()
        F.cross_entropy(m(x, y), y).backward()
        opt.step()
        opt.zero_grad()
        with folded(m, keep=True) as f:
            assert [f.conv1.weight.data_ptr(), f.layer3[0].conv2.bias.data_ptr()] == ptrs
            m.eval()
            with torch.no_grad():
                assert torch.allclose(f(x), m(x), atol=1e-4, rtol=1e-4)
    assert f.conv1.weight.numel() > 0


def test_graphed_pgd_cache_does_not_keep_models_alive(batch):
    import gc

    from chanscope.accel import graphed

    m = create_model("resnet18", width=0.125)
    graphed.graphed_pgd(m, batch[0][:4], batch[1][:4], eps=EPS, alpha=2 / 255, steps=1, capture=False)
    assert m in graphed._CACHE
    n = len(graphed._CACHE)
    del m
    gc.collect()
    assert len(graphed._CACHE) == n - 1


def test_graphed_pgd_falls_back_to_eager_with_one_warning_when_capture_fails(batch, monkeypatch):
    from chanscope.accel import graphed

    def refuse(*a, **k):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed, "PGDIteration", refuse)
    m = create_model("resnet18", width=0.125)
    x, y = batch[0][:6], batch[1][:6]
    torch.manual_seed(3)
    ref = pgd(m, x, y, eps=EPS, alpha=2 / 255, steps=2)
    for call in range(2):
        torch.manual_seed(3)
        if call == 0:
            with pytest.warns(UserWarning, match="CUDA-graph capture of the attack failed"):
                got = graphed.graphed_pgd(m, x, y, eps=EPS, alpha=2 / 255, steps=2, capture=True)
        else:  # remembered: no second capture attempt, no second warning
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = graphed.graphed_pgd(m, x, y, eps=EPS, alpha=2 / 255, steps=2, capture=True)
        assert torch.equal(got, ref)


def test_data_of_a_run_that_moved_says_where_the_name_came_from(tmp_path):
    import json

    from chanscope.workflows.runs import data_of_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"data": str(tmp_path / "moved.tar.gz")}}))
    with pytest.raises(ChanscopeError, match=r"moved.tar.gz.*config.json names: give `data` where it is now"):
        data_of_run(run / "best.pt")
    assert data_of_run(run / "best.pt", "embedded").name == "embedded"  # --data wins over the run's own
    with pytest.raises(ChanscopeError) as e:  # a name given on the command line gets no such hint
        data_of_run(run / "best.pt", str(tmp_path / "typo"))
    assert "config.json" not in str(e.value)


def test_a_model_refuses_images_of_another_size_than_it_was_trained_on(trained, tmp_path):
    """Convolutions and adaptive pooling take 8x8 images from a 32x32 model without complaint: wrong numbers."""
    from chanscope.workflows.runs import check_fits

    model, run = trained
    assert model.input_shape == (3, 32, 32)  # train() records it in the checkpoint
    check_fits(model, (3, 32, 32), 10)
    with pytest.raises(ChanscopeError, match=r"trained on images of shape \(3, 32, 32\), data 'small' has \(3, 8, 8\)"):
        check_fits(model, (3, 8, 8), 10, data_name="data 'small'")
    old = tmp_path / "old.pt"  # a checkpoint from before the shape was recorded still loads and evaluates
    save_checkpoint(old, create_model("resnet10", width=0.125))
    check_fits(load_model(old, "cpu"), (3, 8, 8), 10)
