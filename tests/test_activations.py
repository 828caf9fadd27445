from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from chanscope.cli.app import app
from PIL import Image
from typer.testing import CliRunner

from chanscope.attacks.suite import parse_attacks
from chanscope.checkpoint import save_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.models import create_model
from chanscope.observe.analysis import channels_table, classes_table, spearman
from chanscope.observe.hooks import ActivationRecorder, default_layer
from chanscope.observe.relevance import relevance_scores
from chanscope.workflows.activations import study_activations


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("resnet18", width=0.125).train()
    m(torch.rand(64, 3, 32, 32))  # non-trivial BN statistics
    return m.eval()


@pytest.fixture(scope="module")
def data(embedded):
    return embedded.x_test[::16][:60].float() / 255, embedded.y_test[::16][:60]


def _direct(model, name, x):
    got = {}
    h = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: got.update(a=o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["a"]


def test_recorded_statistics_equal_direct_computation(model, data):
    x, y = data
    # layer4.0.bn1's output is rectified in place after the hooks ran: the recorder reads it before
    names = ["layer3", "layer4.0.conv1", "layer4.0.bn1"]
    with ActivationRecorder(model, names, 10) as rec:
        rec.observe(x, y, "natural")
    for name in names:
        mag = _direct(model, name, x).abs().mean(dim=(2, 3)).double()
        st = rec.stats[name]["natural"]
        for c in range(10):
            sel = y == c
            assert torch.allclose(st.mean()[c], mag[sel].mean(0), atol=1e-6)
            assert torch.allclose(st.std()[c], mag[sel].std(0), atol=1e-6)
            active = (mag[sel] > 1e-2 * mag[sel].amax(1, keepdim=True)).double().mean(0)
            assert torch.allclose(st.frequency()[c], active)
        assert int(st.count.sum()) == len(y)
    assert (rec.stats["layer3"]["natural"].mean() >= 0).all()  # post-ReLU block output


def test_streaming_equals_one_big_batch(model, data):
    x, y = data
    with ActivationRecorder(model, ["layer4"], 10) as one:
        one.observe(x, y, "natural")
    with ActivationRecorder(model, ["layer4"], 10) as many:
        for i in range(0, len(y), 7):
            many.observe(x[i:i + 7], y[i:i + 7], "natural")
    a, b = one.stats["layer4"]["natural"], many.stats["layer4"]["natural"]
    for ta, tb in zip(a.tensors(), b.tensors()):
        assert torch.allclose(ta, tb, atol=1e-9)


def test_hooks_are_removed_also_after_an_error(model, data):
    x, y = data
    mods = dict(model.named_modules())
    assert not mods["layer4"]._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationRecorder(model, ["layer4", "layer3"], 10) as rec:
            rec.observe(x[:2], y[:2], "natural")
            assert mods["layer4"]._forward_hooks
            raise RuntimeError("boom")
    assert not mods["layer4"]._forward_hooks and not mods["layer3"]._forward_hooks


def test_gradient_relevance_at_penultimate_layer_is_the_classifier_weight(model, data):
    x, y = data
    g = relevance_scores(model, "layer4", x, y, "gradient")
    assert torch.allclose(g, model.linear.weight[y].detach(), atol=1e-5)
    gx = relevance_scores(model, "layer4", x, y, "grad-x-act")
    act = _direct(model, "layer4", x).mean(dim=(2, 3))
    assert torch.allclose(gx, model.linear.weight[y].detach() * act, atol=1e-5)


def test_ablation_of_a_zero_weight_channel_is_zero(data):
    torch.manual_seed(0)
    m = create_model("resnet10", width=0.125).eval()
    with torch.no_grad():
        m.linear.weight[:, 3] = 0
    x, y = data
    a = relevance_scores(m, "layer4", x[:10], y[:10], "ablation")
    assert torch.allclose(a[:, 3], torch.zeros(10), atol=1e-6)
    # at the penultimate layer, ablation = W[y, k] x pooled activation (a linear head)
    act = _direct(m, "layer4", x[:10]).mean(dim=(2, 3))
    assert torch.allclose(a, m.linear.weight[y[:10]].detach() * act, atol=1e-5)


def test_torchvision_resnet_layers_and_reused_relu():
    tv = pytest.importorskip("torchvision")
    net = tv.models.resnet18(num_classes=10).eval()
    x = torch.rand(4, 3, 64, 64)
    assert default_layer(net, x) == "fc:in"  # the classifier's input: the penultimate representation
    with ActivationRecorder(net, ["layer4"], 10) as rec:
        rec.observe(x, torch.arange(4), "natural")
    assert rec.stats["layer4"]["natural"].sum.shape == (10, 512)
    with pytest.raises(ChanscopeError, match="ran 2 times"):
        with ActivationRecorder(net, ["layer4.1.relu"], 10) as rec:
            rec.observe(x, torch.arange(4), "natural")


def test_bad_layers(model, data):
    with pytest.raises(ChanscopeError, match="nearest: layer4"):
        ActivationRecorder(model, ["layer44"], 10)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean(2))

    with pytest.raises(ChanscopeError, match="3-D tensor"):
        with ActivationRecorder(Seq(), ["conv"], 2) as rec:
            rec.observe(torch.rand(2, 3, 8), torch.tensor([0, 1]), "natural")


def test_classes_table_matches_a_pandas_recomputation(model, data):
    x, y = data
    spec = parse_attacks("pgd3", 8 / 255)[0]
    (res,), _ = study_activations(model, x, y, [f"c{i}" for i in range(10)], ["layer4"], spec, batch_size=25)
    ch, cl = res.channels, res.classes
    assert (ch.mag_nat >= 0).all() and (ch.mag_adv >= 0).all()
    assert set(ch.pr_nr) <= {"PR", "NR"} and ((ch.relevance > 0) == (ch.pr_nr == "PR")).all()
    from scipy.stats import spearmanr

    for _, r in cl.iterrows():
        g = ch[ch["class"] == r["class"]]
        nr, pr = g[g.pr_nr == "NR"], g[g.pr_nr == "PR"]
        assert r.nr_over_abs == pytest.approx((nr.mag_adv - nr.mag_nat).mean())
        assert r.nr_over_rel == pytest.approx((nr.mag_adv - nr.mag_nat).mean() / nr.mag_nat.mean())
        assert r.pr_under_abs == pytest.approx((pr.mag_nat - pr.mag_adv).mean())
        assert r.mean_abs_gap == pytest.approx((g.mag_adv - g.mag_nat).abs().mean())
        cos = (g.mag_adv * g.mag_nat).sum() / np.sqrt((g.mag_adv ** 2).sum() * (g.mag_nat ** 2).sum())
        assert r.cosine_adv_nat == pytest.approx(cos)
        assert r.spearman_nat == pytest.approx(spearmanr(g.mag_nat, g.relevance).statistic)
        assert r.spearman_adv == pytest.approx(spearmanr(g.mag_adv, g.relevance).statistic)
        assert r.n_pr + r.n_nr == len(g) and r.n == (y == r["class"]).sum()
    # relevance at the penultimate layer: the classifier weights
    w = model.linear.weight.detach().numpy()
    assert np.allclose(ch.relevance.to_numpy().reshape(10, -1), w, atol=1e-5)


def test_spearman_handles_ties_like_scipy():
    from scipy.stats import spearmanr

    a, b = np.array([1, 2, 2, 3, 5.0]), np.array([5, 3, 3, 1, 0.0])
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


def test_channels_table_shape():
    k, c = 3, 4
    z = np.zeros((k, c))
    df = channels_table("l", ["a", "b", "c"], np.ones((k, c)), z, z, z, z, z, z, np.array([1, 2, 3]))
    assert len(df) == 12 and list(df.n) == [1] * 4 + [2] * 4 + [3] * 4
    assert classes_table(df, {}, {}).shape[0] == 3


def test_activations_cli_and_bad_input(tmp_path, embedded):
    m = create_model("resnet10", width=0.125, feature_select="cifs")
    save_checkpoint(tmp_path / "m.pt", m)
    run = ["activations", "--model", str(tmp_path / "m.pt"), "--n", "20", "--attack", "pgd2"]
    r = CliRunner().invoke(app, run + ["--out", str(tmp_path / "o")])  # in-process
    assert r.exit_code == 0, r.output
    ch = pd.read_csv(tmp_path / "o" / "channels.csv")
    assert len(ch) == 10 * 64 and ch.n.sum() == 20 * 64
    # unmasked CIFS features (before the mask) and a 2-D output, one set of files per layer
    r = CliRunner().invoke(app, run + ["--layer", "layer4.0.block", "--layer", "linear", "--out", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o2" / "classes-layer4.0.block.csv").is_file()
    assert len(pd.read_csv(tmp_path / "o2" / "channels-linear.csv")) == 10 * 10
    # the CIFS probe runs twice per forward (relevance, then logits): reported, not mixed
    r = CliRunner().invoke(app, run + ["--layer", "layer4.0.select.probe.1", "--out", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "ran 2 times" in r.stderr
    before = (tmp_path / "o" / "channels.csv").read_bytes()
    two = tmp_path / "two"  # an ImageFolder of 2 classes: not the data the 10-class model was made for
    for split, c, i in itertools.product(("train", "test"), ("a", "b"), range(2)):
        (two / split / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(two / split / c / f"{i}.png")
    for extra, pattern in [(["--layer", "layer9"], "unknown layer 'layer9'"),
                           (["--relevance", "magic"], "unknown relevance"),
                           (["--eps", "0"], "outside (0, 1]"),
                           (["--threshold", "nan"], "threshold=nan must be in [0, 1)"),
                           (["--data", str(two), "--n", "4"], "predicts 10 classes, data 'two' has 2")]:
        r = CliRunner().invoke(app, [*run, *extra, "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and pattern in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        r = CliRunner().invoke(app, run + ["--out", str(ro)])
        assert r.exit_code == 2 and "not writable" in r.stderr
    assert (tmp_path / "o" / "channels.csv").read_bytes() == before
