from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chanscope.accel.layout import set_layout
from chanscope.errors import ChanscopeError
from chanscope.models import CAS, CIFS, create_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("select", ["none", "cifs", "cas"])
def test_every_model_output_shape(name, shape, select):
    c = shape[0]
    model = create_model(name, width=0.0625, num_classes=7, in_channels=c, feature_select=select).eval()
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    logits, aux = model(torch.rand(3, *shape), return_aux=True)
    assert len(aux) == (0 if select == "none" else len(getattr(model, model.stage_names[-1])))
    assert all(a.shape == (3, 7) for a in aux)


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ChanscopeError, match="resnet18"):
        create_model("resnet19")


def _independent_mask(cifs: CIFS, feat: torch.Tensor, top1: torch.Tensor) -> torch.Tensor:
    """The paper's mask written out by hand for a linear probe: softmax_k(W[top1, k] + W[top2, k]) * H*W / ..."""
    W = cifs.probe[1].weight  # (K, C)
    logits = cifs.probe(feat)
    top2 = logits.topk(2, 1).indices[:, 1]
    hw = feat.shape[2] * feat.shape[3]
    # d logit_c / d feat[k, i, j] = W[c, k] / (H W); summed over positions: W[c, k]
    g = (W[top1] + W[top2]) * hw / hw
    return F.softmax(g, dim=1)


def test_cifs_mask_matches_hand_formula_and_is_a_distribution():
    torch.manual_seed(0)
    cifs = CIFS(16, 5, probe="linear")
    feat = torch.rand(6, 16, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    cifs.train()
    out, heads = cifs(feat, y)
    mask = heads.mask
    assert (mask >= 0).all() and torch.allclose(mask.sum(1), torch.ones(6), atol=1e-6)
    assert torch.allclose(mask, _independent_mask(cifs, feat, y), atol=1e-6)
    assert torch.allclose(out, feat * mask[:, :, None, None])
    cifs.eval()
    _, heads = cifs(feat, y)  # the label must be ignored in eval mode
    pred = cifs.probe(feat).argmax(1)
    assert torch.allclose(heads.mask, _independent_mask(cifs, feat, pred), atol=1e-6)


def test_eval_mode_never_reads_the_label():
    torch.manual_seed(0)
    model = create_model("resnet10", width=0.125, feature_select="cifs").eval()
    x = torch.rand(8, 3, 32, 32)
    y1, y2 = torch.zeros(8, dtype=torch.long), torch.full((8,), 9, dtype=torch.long)
    a, _ = model(x, y1, return_aux=True)
    b, _ = model(x, y2, return_aux=True)
    assert torch.equal(a, b) and torch.equal(a, model(x))
    model.train()
    torch.manual_seed(1)
    c = model(x, y1)
    torch.manual_seed(1)
    d = model(x, y2)
    assert not torch.allclose(c, d)  # in training the true label drives the mask


def test_gradients_reach_probe_and_backbone():
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, feature_select="cifs").train()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    logits, aux = model(x, y, return_aux=True)
    from chanscope.losses import joint_ce

    joint_ce(logits, aux, y).backward()
    assert model.layer4[0].select.probe_kind == "nonlinear" and model.layer4[1].select.probe_kind == "linear"
    for sel in (model.layer4[0].select, model.layer4[1].select):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sel.probe.parameters())
    assert model.conv1.weight.grad.abs().sum() > 0 and model.linear.weight.grad.abs().sum() > 0
    # the mask itself is trained through the probe (create_graph): the final CE alone reaches the probe
    model.zero_grad()
    F.cross_entropy(model(x, y), y).backward()
    assert model.layer4[1].select.probe[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("select", ["cifs", "cas"])
def test_forward_inside_no_grad(select):
    model = create_model("resnet10", width=0.125, feature_select=select).eval()
    x = torch.rand(4, 3, 32, 32)
    ref = model(x)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-6)


def test_cas_mask_is_class_weight_row():
    torch.manual_seed(0)
    cas = CAS(8, 3).train()
    feat = torch.rand(2, 8, 3, 3)
    out, _ = cas(feat, torch.tensor([2, 0]))
    assert torch.allclose(out[0], feat[0] * cas.fc.weight[2][:, None, None])
    cas.eval()
    out, _ = cas(feat, torch.tensor([2, 0]))
    pred = cas.fc(feat.mean((2, 3))).argmax(1)
    assert torch.allclose(out[1], feat[1] * cas.fc.weight[pred[1]][:, None, None])


def test_normalisation_is_first_layer():
    model = create_model("resnet10", width=0.125, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2]).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.normalize(x), (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)


def _stage_input_formats(model, x) -> dict[str, str]:
    """Memory format the stem convolution and each stage receive."""
    seen: dict[str, str] = {}

    def record(name, t):
        seen[name] = ("nchw" if t.is_contiguous() else "channels_last"
                      if t.is_contiguous(memory_format=torch.channels_last) else "other")
    mods = {"stem": model.conv1, **{n: getattr(model, n) for n in model.stage_names}}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: record(n, a[0])) for n, m in mods.items()]
    with torch.no_grad():  # an attack's or an evaluation's pass: no parameter gradients
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_layout_picks_format_per_stage_and_only_changes_rounding():
    """hybrid: channels-last where a stage works at 16x16 or more (32x32 input: stem, layer1, layer2), NCHW
    below; passes with parameter gradients stay NCHW on CPU; every layout gives the same logits, probe
    logits and input gradient up to float rounding, on a CIFS model in both modes."""
    from chanscope.accel.layout import resolve_layout

    assert resolve_layout("auto", "cpu") == "hybrid" and resolve_layout("auto", "cuda") == "keep"
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, feature_select="cifs")
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    set_layout(model, "hybrid")
    assert _stage_input_formats(model.eval(), x) == {"stem": "channels_last", "layer1": "channels_last",
                                                     "layer2": "channels_last", "layer3": "nchw", "layer4": "nchw"}
    set_layout(model, "auto")  # on CPU: hybrid
    assert _stage_input_formats(model, x)["layer2"] == "channels_last"
    set_layout(model, "channels_last")
    assert set(_stage_input_formats(model, x).values()) == {"channels_last"}
    set_layout(model, "nchw")
    assert set(_stage_input_formats(model, torch.rand(4, 3, 32, 32).contiguous(
        memory_format=torch.channels_last)).values()) == {"nchw"}
    # a pass that computes parameter gradients stays NCHW on CPU (oneDNN's channels-last weight gradient faults)
    seen = []
    handle = model.conv1.register_forward_pre_hook(lambda _m, a: seen.append(a[0].is_contiguous()))
    set_layout(model, "channels_last")
    model(x)
    for p in model.parameters():
        p.requires_grad_(False)
    model(x)  # frozen: channels-last again
    for p in model.parameters():
        p.requires_grad_(True)
    handle.remove()
    assert seen == [True, False]
    # 28x28 input: layer2 works at 14x14, below the line
    m28 = create_model("resnet18", width=0.125, in_channels=1)
    set_layout(m28, "hybrid")
    assert _stage_input_formats(m28, torch.rand(2, 1, 28, 28))["layer2"] == "nchw"

    # the same numbers in every layout, on the passes the layout applies to (frozen parameters: an attack's
    # passes, in eval mode and in train mode with the label-driven training mask)
    import copy

    results = {}
    for layout in ("nchw", "hybrid", "channels_last"):
        m = copy.deepcopy(model)
        set_layout(m, layout)
        for p in m.parameters():
            p.requires_grad_(False)
        out = []
        for train in (True, False):
            m.train(train)
            xr = x.clone().requires_grad_(True)
            fmt = []
            h = m.layer1[0].conv1.register_forward_pre_hook(
                lambda _m, a, fmt=fmt: fmt.append(a[0].is_contiguous(memory_format=torch.channels_last)))
            logits, aux = m(xr, y, return_aux=True)
            h.remove()
            assert fmt == [layout != "nchw"]  # the comparison below is between different layouts
            gx, = torch.autograd.grad(F.cross_entropy(logits, y) + sum(F.cross_entropy(a, y) for a in aux), xr)
            out.append((logits.detach(), [a.detach() for a in aux], gx))
        results[layout] = out
    for layout in ("hybrid", "channels_last"):
        for train, (logits, aux, gx), (rl, ra, rg) in zip((True, False), results[layout], results["nchw"]):
            torch.testing.assert_close(logits, rl, rtol=1e-4, atol=1e-5)
            for a, b in zip(aux, ra):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            # in train mode the input gradient runs back through every BatchNorm's batch statistics, where
            # oneDNN's channels-last kernel sums in float32 in one pass per thread: rounding, not a changed
            # function, grows to a fraction of a percent of the norm on one thread (float64 agrees with NCHW)
            if train:
                assert float((gx - rg).norm() / rg.norm()) < 1e-2
            else:
                torch.testing.assert_close(gx, rg, rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match="unknown layout 'nhwc'; known: auto"):
        set_layout(model, "nhwc")


@pytest.mark.slow  # 120 training passes in a subprocess
def test_layout_training_pass_survives_the_onednn_weight_gradient_fault():
    """oneDNN 3.12 segfaults computing the weight gradient of a strided 1x1 convolution from channels-last
    input with < 16 input channels and an odd batch (width 1/16: 4 and 8 channels). Every layout must train
    such a model: run in a subprocess, so a fault fails this test instead of killing the suite."""
    import subprocess
    import sys

    code = (
        "import torch, torch.nn.functional as F\n"
        "from chanscope.models import create_model\n"
        "from chanscope.accel.layout import set_layout\n"
        "torch.manual_seed(0)\n"
        "m = create_model('resnet18', width=0.0625).train()\n"
        "for layout in ('channels_last', 'hybrid', 'auto'):\n"
        "    set_layout(m, layout)\n"
        "    for _ in range(40):\n"
        "        F.cross_entropy(m(torch.rand(25, 3, 32, 32)), torch.randint(0, 10, (25,))).backward()\n"
        "print('done')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "done" in res.stdout, res.stderr[-2000:]


def _ref_bn(m, x):
    return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)


def _ref_conv(m, x):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding)


def _reference_forward(model, x):
    """The CIFAR ResNets written out of place with functional ops (train-mode BN, batch statistics)."""
    h = _ref_conv(model.conv1, (x - model.normalize.mean) / model.normalize.std)
    h = h if model.preact else F.relu(_ref_bn(model.bn1, h))
    for name in model.stage_names:
        for blk in getattr(model, name):
            if model.preact:
                a = F.relu(_ref_bn(blk.bn1, h))
                sc = _ref_conv(blk.shortcut[0], a) if len(blk.shortcut) else h
                h = _ref_conv(blk.conv2, F.relu(_ref_bn(blk.bn2, _ref_conv(blk.conv1, a)))) + sc
            else:
                o = _ref_bn(blk.bn2, _ref_conv(blk.conv2, F.relu(_ref_bn(blk.bn1, _ref_conv(blk.conv1, h)))))
                sc = _ref_bn(blk.shortcut[1], _ref_conv(blk.shortcut[0], h)) if len(blk.shortcut) else h
                h = F.relu(o + sc)
    h = F.relu(_ref_bn(model.bn_final, h)) if model.preact else h
    return F.linear(h.mean(dim=(2, 3)), model.linear.weight, model.linear.bias)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_in_place_blocks_equal_an_out_of_place_reference(name):
    """The blocks rectify and add in place (fewer allocations); logits and every gradient stay those of the
    plain formula."""
    torch.manual_seed(0)
    model = create_model(name, width=0.125).train()
    set_layout(model, "nchw")
    x = torch.rand(6, 3, 32, 32)
    got = {}
    for tag, fn in (("model", model), ("reference", lambda t: _reference_forward(model, t))):
        xi = x.clone().requires_grad_(True)
        model.zero_grad()
        logits = fn(xi)
        (logits * torch.linspace(-1, 1, 10)).sum().backward()
        got[tag] = [logits.detach(), xi.grad] + [p.grad.clone() for p in model.parameters()]
    assert len(got["model"]) == len(list(model.parameters())) + 2
    for a, b in zip(got["model"], got["reference"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
