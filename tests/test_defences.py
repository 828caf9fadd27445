"""The defence registry: a defence is its selector module, a factory and the registration, and the network,
the joint loss, the hooks and the attacks' probe heads take it without another change."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.losses import joint_ce
from chanscope.models import create_model
from chanscope.models.select import DEFENCES, Heads, _Selector, register_defence
from chanscope.observe.hooks import ActivationRecorder


class Gate(_Selector):
    """A toy defence: channels scaled by a learned sigmoid gate, one linear head on the gated features."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(channels))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, feat, label=None):
        g = torch.sigmoid(self.gate)
        out = feat * g[None, :, None, None]
        return out, Heads([self.head(out.mean(dim=(2, 3)))], g.detach().expand(feat.shape[0], -1))


@pytest.fixture
def gate():
    """'gate' registered for one test (then removed, so the registry is as every other test sees it)."""
    register_defence("gate")(lambda channels, num_classes, *, block_index, depth, **_:
                             Gate(channels, num_classes) if block_index == depth - 1 else None)
    try:
        yield
    finally:
        del DEFENCES["gate"]


def test_a_registered_defence_is_built_trained_and_observed(gate):
    torch.manual_seed(0)
    model = create_model("resnet10", width=0.125, feature_select="gate", select_stages=["layer3", "layer4"])
    assert [n for n, _ in model.selectors] == ["layer3.0.select", "layer4.0.select"]
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    logits, aux = model.train()(x, y, return_aux=True)
    assert len(aux) == 2 and aux[1].shape == (4, 10)
    joint_ce(logits, aux, y).backward()
    assert all(s.gate.grad is not None and s.gate.grad.abs().sum() > 0 for _, s in model.selectors)
    # the heads are the gated features' own, by hand
    model.eval()
    sel = model.layer4[0].select
    with torch.no_grad():
        sel.gate.normal_()  # a gate that differs per channel
    with torch.no_grad():
        stem = F.relu(model.bn1(model.conv1(model.normalize(x))))
        feat = model.layer4[0].block(model.layer3(model.layer2(model.layer1(stem)))[0])
        _, (h3, h4) = model(x, return_aux=True)
    gated = feat * torch.sigmoid(sel.gate.detach())[None, :, None, None]
    torch.testing.assert_close(h4, sel.head(gated.mean((2, 3))))
    # hooks on the stage see the gated features, on the block the ungated ones: they differ by the gate
    with ActivationRecorder(model, ["layer4", "layer4.0.block"], num_classes=10) as rec:
        mags = rec.magnitudes(x)
    used = mags["layer4.0.block"] > 1e-6
    ratio = mags["layer4"][used] / mags["layer4.0.block"][used]
    torch.testing.assert_close(ratio, torch.sigmoid(sel.gate.detach()).expand_as(used)[used], rtol=1e-4, atol=1e-6)


def test_an_unknown_defence_names_the_registered_ones():
    with pytest.raises(Exception, match="unknown feature_select 'gate'; known: none, cifs, cas, fsr"):
        create_model("resnet10", width=0.125, feature_select="gate")
