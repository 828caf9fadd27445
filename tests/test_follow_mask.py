"""`--follow-mask` on real CIFS models built by the registry: the attack's input gradient is the full gradient
through relevance and mask (checked against finite differences of the forward, which is the same either way),
and the switch changes what the attack and the evaluation produce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chanscope.attacks.pgd import attack_loss, frozen_eval, pgd
from chanscope.attacks.suite import follow_mask, parse_attacks, run_attack
from chanscope.models import CIFS, create_model


def end_to_end_selectors(model: torch.nn.Module) -> list[CIFS]:
    return [m for m in model.modules() if isinstance(m, CIFS)]


def _cifs(arch: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, width=0.125, feature_select="cifs").double().eval()
    with torch.no_grad():  # a trained probe's sharper relevance: at initialisation the mask is nearly uniform and
        for sel in end_to_end_selectors(model):  # its gradient term negligible, so the check could not tell
            for p in sel.probe.parameters():
                p.mul_(50.0)
    return model


def _input_grad(model, x, y, loss: str) -> torch.Tensor:
    xa = x.clone().requires_grad_(True)
    with frozen_eval(model), torch.enable_grad():
        (g,) = torch.autograd.grad(attack_loss(loss)(model, xa, y).sum(), xa)
    return g


def _fd(model, x, y, v, loss: str, h: float = 1e-6) -> float:
    """Central finite difference of the summed loss along v: the true directional derivative."""
    fn = attack_loss(loss)
    with torch.no_grad():
        return float((fn(model, x + h * v, y).sum() - fn(model, x - h * v, y).sum()) / (2 * h))


def test_follow_mask_gradient_is_the_full_gradient(cifar_batch):
    """Cross-entropy of the final logits (the adaptive attack's first component)."""
    loss = "ce"
    model = _cifs()
    x, y = cifar_batch[0][:4].double(), cifar_batch[1][:4]
    assert len(end_to_end_selectors(model)) == 2  # both CIFS blocks of layer4, found although selectors are pairs
    with follow_mask(model):
        g_full = _input_grad(model, x, y, loss)
    g_stop = _input_grad(model, x, y, loss)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        fd = _fd(model, x, y, v, loss)
        assert float((g_full * v).sum()) == pytest.approx(fd, rel=1e-3)
        assert float((g_stop * v).sum()) != pytest.approx(fd, rel=0.02)  # what shipped: not the gradient
    cos = F.cosine_similarity(g_full.flatten(), g_stop.flatten(), dim=0)
    assert cos < 0.999  # the stopped gradient drops the mask's term: a different direction
    assert all(not s.end_to_end for s in end_to_end_selectors(model))  # restored


def test_follow_mask_changes_the_pgd_step(cifar_batch):
    model = _cifs()
    x, y = cifar_batch[0][:4].double(), cifar_batch[1][:4]
    with follow_mask(model):
        g_full = _input_grad(model, x, y, "ce")
        step_on = pgd(model, x, y, eps=8 / 255, alpha=1 / 255, steps=1, loss="ce", random_start=False)
    step_off = pgd(model, x, y, eps=8 / 255, alpha=1 / 255, steps=1, loss="ce", random_start=False)
    expected = (x + g_full.sign() / 255).clamp(0, 1)
    assert torch.allclose(step_on, expected)
    assert (step_on != step_off).any()


def test_adaptive_attack_spec_switches_the_mask(cifar_batch):
    """run_attack with a spec parsed with follow=True crafts other examples than with follow=False."""
    model = _cifs().float()
    x, y = cifar_batch
    on, off = (parse_attacks("adaptive3", 8 / 255, follow=f)[0] for f in (True, False))
    assert on.follow_mask and not off.follow_mask
    seen = []

    def spy(m, x_, y_):
        seen.append(any(s.end_to_end for s in end_to_end_selectors(m)))
        return F.cross_entropy(m(x_), y_, reduction="none")

    from chanscope.attacks import suite

    orig = suite.adaptive_losses
    try:
        suite.adaptive_losses = lambda m, beta=2.0: {"final": spy}
        run_attack(on, model, x, y)
        assert seen and all(seen)
        seen.clear()
        run_attack(off, model, x, y)
        assert seen and not any(seen)
    finally:
        suite.adaptive_losses = orig
    _, _, adv_on = run_attack(on, model, x, y)
    _, _, adv_off = run_attack(off, model, x, y)
    assert not torch.equal(adv_on, adv_off)
