"""PGD whose iteration is captured once as a CUDA graph and replayed: the training attack without the host.

On a GPU a ResNet-18 training step at batch 128 is bound by the host: about 3,600 operators per CIFS
step (PGD-10 plus the update), each dispatched from Python, cost several times the GPU's kernel time
(bench/GPU_NOTES.md). One PGD iteration (forward, the CIFS relevance, the input gradient, the signed step
and the projection) has a fixed shape and fixed weights during an attack, so it can be recorded once
into a CUDA graph over static buffers and replayed `steps` times per batch with one launch each.

The graph reads the model's weights where they live: they must be updated in place between attacks
(the optimiser does that; `folded(model, keep=True)` refreshes the folded twin in place). On CPU, or
with capture=False, the same static-buffer iteration runs eagerly, which is what the CPU tests check
against `pgd`. A capture that fails falls back to eager PGD with one warning, so training never stops
for it.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn as nn

from chanscope.attacks.pgd import LossFn, attack_loss, frozen_eval, pgd

__all__ = ["PGDIteration", "graphed_pgd"]


class PGDIteration:
    """x_adv <- clip(x_adv + alpha * sign(grad loss(x_adv)), [lo, hi] and [0, 1]) on static buffers,
    captured as a CUDA graph when `capture` (the model must already be in frozen eval mode)."""

    def __init__(self, model: nn.Module, like: torch.Tensor, labels_like: torch.Tensor, loss_fn: LossFn,
                 alpha: float, autocast: Callable[[], AbstractContextManager] = nullcontext,
                 capture: bool = False) -> None:
        self.x_adv = torch.zeros_like(like)
        self.lo, self.hi = torch.zeros_like(like), torch.ones_like(like)
        self.y = torch.zeros_like(labels_like)
        self.graph = None
        net = weakref.ref(model)  # the cache entry (and its graph) must not keep the model alive

        def body() -> None:
            xin = self.x_adv.detach().requires_grad_(True)
            with autocast():
                obj = loss_fn(net(), xin, self.y).float().sum()
            (grad,) = torch.autograd.grad(obj, xin)
            step = xin.detach() + alpha * grad.sign()
            self.x_adv.copy_(torch.min(torch.max(step, self.lo), self.hi))  # lo, hi already inside [0, 1]

        self._body = body
        if capture:  # warm-up and capture run on real inputs; the bounds stay [0, 1] until `run` sets them
            self.x_adv.copy_(like.detach())
            self.y.copy_(labels_like)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.enable_grad():  # warm-up outside the graph (cuDNN choices,
                for _ in range(3):  # library handles), on the stream that then captures
                    body()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side), torch.enable_grad():  # a private memory pool
                body()

    def run(self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
        self.lo.copy_((x - eps).clamp_(min=0.0))
        self.hi.copy_((x + eps).clamp_(max=1.0))
        self.y.copy_(y)
        self.x_adv.copy_(torch.min(torch.max(start, self.lo), self.hi))
        with torch.enable_grad():
            for _ in range(steps):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._body()
        return self.x_adv.clone()


# attacked module -> {(shape, dtype, device, loss, beta, alpha, bf16, capture): PGDIteration or None (failed)}
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, PGDIteration | None]] = weakref.WeakKeyDictionary()


def graphed_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                loss: str = "ce", beta: float = 2.0, random_start: bool = True, bf16: bool = False,
                capture: bool | None = None, max_shapes: int = 2) -> torch.Tensor:
    """`pgd` with the same arguments and result (up to float rounding), each iteration a CUDA-graph replay.

    capture: None = on CUDA. A graph is kept per input shape (at most `max_shapes`; an epoch's last,
    smaller batch gets its own) and per attack setting; other shapes run eagerly. bf16: autocast to
    bfloat16 inside the graph (caching off, as capture requires).
    """
    capture = x.is_cuda if capture is None else capture
    dev_type = x.device.type

    def autocast() -> AbstractContextManager:
        return (torch.autocast(dev_type, dtype=torch.bfloat16, cache_enabled=False) if bf16 else nullcontext())

    x = x.detach()
    start = x + torch.empty_like(x).uniform_(-eps, eps) if random_start else x.clone()
    key = (tuple(x.shape), x.dtype, x.device, loss, beta, alpha, bf16, capture)
    with frozen_eval(model):
        per_model = _CACHE.setdefault(model, {})
        if key not in per_model and len(per_model) < max_shapes:
            try:
                per_model[key] = PGDIteration(model, start, y, attack_loss(loss, beta), alpha, autocast,
                                              capture=capture)
            except RuntimeError as e:  # an operator that cannot be captured: fall back, say so once
                warnings.warn(f"CUDA-graph capture of the attack failed ({str(e).splitlines()[0][:120]}); "
                              "running it eagerly", stacklevel=2)
                per_model[key] = None
        it = per_model.get(key)  # None: past max_shapes, or the capture failed
        if it is None:
            return pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, loss=loss, beta=beta, init=start,
                       autocast=autocast)
        return it.run(x, y, start, eps, steps)
