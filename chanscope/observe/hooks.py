"""Streaming per-class, per-channel activation statistics from forward hooks.

Each hooked module's output is reduced at once to one number per channel and image, the magnitude
m = spatial mean of |activation| (for a post-ReLU layer that is the plain mean; a 2-D output (N, C) is
taken as is), and folded into per-class sums, sums of squares, counts and active counts. Memory is
O(classes x channels) whatever the number of images. A channel is active on an input when its
magnitude exceeds `threshold` x the largest channel magnitude of that input (CAS's count).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from chanscope.errors import ChanscopeError

__all__ = ["ChannelStats", "ActivationRecorder", "resolve_layers", "default_layer", "channel_magnitude"]


def channel_magnitude(out: torch.Tensor, layer: str = "") -> torch.Tensor:
    """(N, C, H, W) -> spatial mean of |a|; (N, C) -> |a|. Other shapes are an error."""
    if out.ndim == 4:
        return out.detach().abs().float().mean(dim=(2, 3))
    if out.ndim == 2:
        return out.detach().abs().float()
    raise ChanscopeError(f"layer {layer!r} outputs a {out.ndim}-D tensor {tuple(out.shape)}; pick a layer with "
                         "a 4-D (N, C, H, W) or 2-D (N, C) output")


@dataclass
class ChannelStats:
    """Per-class streaming sums for one layer and one input kind (natural or adversarial)."""

    num_classes: int
    channels: int
    sum: torch.Tensor = field(init=False)
    sumsq: torch.Tensor = field(init=False)
    active: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        k, c = self.num_classes, self.channels
        self.sum = torch.zeros(k, c, dtype=torch.float64)
        self.sumsq = torch.zeros(k, c, dtype=torch.float64)
        self.active = torch.zeros(k, c, dtype=torch.float64)
        self.count = torch.zeros(k, dtype=torch.float64)

    def update(self, mag: torch.Tensor, labels: torch.Tensor, threshold: float) -> None:
        mag = mag.double().cpu()
        labels = labels.cpu()
        act = (mag > threshold * mag.amax(dim=1, keepdim=True)).double()
        self.sum.index_add_(0, labels, mag)
        self.sumsq.index_add_(0, labels, mag * mag)
        self.active.index_add_(0, labels, act)
        self.count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def tensors(self) -> list[torch.Tensor]:
        """The state, for all-reduce across ranks (sums add up exactly)."""
        return [self.sum, self.sumsq, self.active, self.count]

    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1)[:, None]

    def std(self) -> torch.Tensor:
        n = self.count.clamp_min(1)[:, None]
        var = (self.sumsq - self.sum * self.sum / n) / (n - 1).clamp_min(1)
        return var.clamp_min(0).sqrt()

    def frequency(self) -> torch.Tensor:
        return self.active / self.count.clamp_min(1)[:, None]


def resolve_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Look names up in model.named_modules(); unknown names list the nearest valid ones."""
    modules = dict(model.named_modules())
    out = {}
    for n in names:
        if n not in modules or n == "":
            near = difflib.get_close_matches(n, [m for m in modules if m], n=5, cutoff=0.4)
            hint = f"nearest: {', '.join(near)}" if near else f"e.g. {', '.join(list(modules)[1:6])}"
            raise ChanscopeError(f"unknown layer {n!r}; {hint}")
        out[n] = modules[n]
    return out


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The penultimate feature map: the model's `feature_layer`, else the last module to finish with a
    spatial (H, W > 1) 4-D output (torchvision's ResNet: `layer4`)."""
    if hasattr(model, "feature_layer"):
        return model.feature_layer
    finished: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if name:
            def hook(m, i, o, name=name):
                if torch.is_tensor(o) and o.ndim == 4 and o.shape[2] * o.shape[3] > 1:
                    finished.append(name)
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    if not finished:
        raise ChanscopeError("found no module with a 4-D output; name one with `layer`")
    return finished[-1]


class ActivationRecorder:
    """Context manager: record per-class channel statistics of named modules.

    Example:
        >>> with ActivationRecorder(model, ["layer4"], num_classes=10) as rec:
        ...     rec.observe(x_nat, y, "natural")
        ...     rec.observe(x_adv, y, "adversarial")
        >>> rec.stats["layer4"]["natural"].mean()   # (classes, channels)
    """

    def __init__(self, model: nn.Module, layers: list[str], num_classes: int, threshold: float = 1e-2) -> None:
        self.model = model
        self.modules = resolve_layers(model, layers)
        self.num_classes, self.threshold = num_classes, threshold
        self.stats: dict[str, dict[str, ChannelStats]] = {n: {} for n in self.modules}
        self._handles: list = []
        self._batch: dict[str, list[torch.Tensor]] = {}
        self._armed = False

    def __enter__(self) -> ActivationRecorder:
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def fn(module: nn.Module, inputs, output) -> None:
            if self._armed:
                out = output[0] if isinstance(output, (tuple, list)) else output
                self._batch.setdefault(name, []).append(channel_magnitude(out, name))
        return fn

    def magnitudes(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward; per hooked layer the (N, C) magnitudes. A layer that did not run exactly once is
        an error: a module reused inside one forward (torchvision's BasicBlock ReLU) would mix calls."""
        self._batch = {}
        self._armed = True
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            self._armed = False
        out = {}
        for name in self.modules:
            calls = self._batch.get(name, [])
            if len(calls) != 1:
                what = "never ran" if not calls else f"ran {len(calls)} times in one forward"
                raise ChanscopeError(f"layer {name!r} {what}; hook a module that runs once per forward, such "
                                     "as a block's output (e.g. layer4.1 rather than layer4.1.relu)")
            out[name] = calls[0]
        return out

    def observe(self, x: torch.Tensor, y: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
        mags = self.magnitudes(x)
        for name, m in mags.items():
            st = self.stats[name].get(kind)
            if st is None:
                st = self.stats[name][kind] = ChannelStats(self.num_classes, m.shape[1])
            st.update(m, y, self.threshold)
        return mags
