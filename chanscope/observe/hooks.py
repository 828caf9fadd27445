"""Streaming per-class, per-channel activation statistics from forward hooks.

A layer is a module's name (its output) or `name:in` (its input, through a forward pre-hook): `linear:in`,
`fc:in` or `head.fc:in` is the penultimate representation of a network whose last module is a linear
classifier, the default for models that do not name their feature layer.

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
from chanscope.models.wrappers import inner

__all__ = ["ChannelStats", "ActivationRecorder", "resolve_layers", "default_layer", "channel_magnitude", "tap",
           "list_layers", "INPUT"]

INPUT = ":in"  # a layer name ending so means the module's input


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


def _no_hooks(model: nn.Module) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise ChanscopeError("a TorchScript model runs compiled code that Python hooks cannot see, so its layers "
                             "cannot be recorded; save it with torch.export.save (a .pt2 file) or as a state_dict "
                             "of its architecture (evaluation works on TorchScript as it is)")


def resolve_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Look names up in the model's named_modules() (`name:in` names the module's input); unknown names list
    the nearest valid ones."""
    _no_hooks(inner(model))
    modules = dict(inner(model).named_modules())
    out = {}
    for n in names:
        base = n[:-len(INPUT)] if n.endswith(INPUT) else n
        if base not in modules or base == "":
            near = difflib.get_close_matches(base, [m for m in modules if m], n=5, cutoff=0.4)
            hint = f"nearest: {', '.join(near)}" if near else f"e.g. {', '.join(list(modules)[1:6])}"
            raise ChanscopeError(f"unknown layer {n!r}; {hint} (`chanscope layers` lists them)")
        out[n] = modules[base]
    return out


def tap(module: nn.Module, name: str, fn):
    """Call fn(tensor) with layer `name`'s tensor (the module's output, or its input for `name:in`) at every
    forward; a returned tensor replaces it. Returns the hook's handle."""
    if name.endswith(INPUT):
        def pre(m, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])
        return module.register_forward_pre_hook(pre)

    def post(m, inputs, output):
        if isinstance(output, (tuple, list)):  # e.g. a selector block's (features, heads): the features
            new = fn(output[0])
            if new is None:
                return None
            rest = (new, *output[1:])
            return output._make(rest) if hasattr(output, "_make") else type(output)(rest)  # a namedtuple too
        return fn(output)
    return module.register_forward_hook(post)


def _is_linear(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(m, nn.Linear) or (isinstance(w, torch.Tensor) and w.ndim == 2 and not list(m.children()))


def _is_head(m: nn.Module) -> bool:
    """A module that can be a classifier: a linear layer, or a 1x1 convolution (timm's heads after pooling)."""
    return _is_linear(m) or (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1)


def _is_output(o: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether a module's output is the model's output: equal, or equal after flattening a 1x1 spatial map, or
    a positive multiple of it (a temperature: the logits divided by T keep every relevance's sign)."""
    if not (torch.is_tensor(o) and torch.is_tensor(out)):
        return False
    if o.ndim == 4 and o.shape[2:] == (1, 1):
        o = o.flatten(1)
    if o.shape != out.shape:
        return False
    if torch.equal(o, out):
        return True
    o64, out64 = o.double(), out.double()
    c = float((o64 * out64).sum() / (o64 * o64).sum().clamp_min(1e-30))
    return c > 0 and torch.allclose(out64, c * o64, rtol=1e-5, atol=1e-6 * float(out64.abs().max()))


def _classifier_input(model: nn.Module, example: torch.Tensor) -> str | None:
    """`name:in` of the last classifier-like module (`_is_head`) whose output is the model's output
    (`_is_output`), if any."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: calls.append((n, o)))
               for n, m in inner(model).named_modules() if _is_head(m)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    for name, o in reversed(calls):
        if _is_output(o, out):
            return name + INPUT
    return None


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The penultimate representation: the model's `feature_layer` (chanscope's ResNets: the last stage), else
    the input of its classifier (a linear layer or 1x1 convolution whose output is the model's output, up to a
    positive scale). A model without one is refused in one line naming the candidates: a default layer is never
    guessed silently."""
    if hasattr(inner(model), "feature_layer"):
        return inner(model).feature_layer
    _no_hooks(inner(model))
    found = _classifier_input(model, example)
    if found:
        return found
    finished: list[str] = []
    handles = []
    for name, mod in inner(model).named_modules():
        if name:
            def hook(m, i, o, name=name):
                if torch.is_tensor(o) and o.ndim == 4 and name not in finished:
                    finished.append(name)
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    last = ", ".join(finished[-4:]) or "none"
    raise ChanscopeError("found no classifier whose output is the model's output (a linear layer or 1x1 "
                         f"convolution) to take the input of; name the layer with `layer` (the last 4-D outputs: "
                         f"{last}; `chanscope layers` lists all)")


def list_layers(model: nn.Module, example: torch.Tensor) -> list[dict]:
    """Every named module with its output shape, channel count and calls in one forward on `example`, and the
    classifier's input; `default` marks the layer a study takes when none is named."""
    _no_hooks(inner(model))
    seen: dict[str, list] = {}
    mods = {n: m for n, m in inner(model).named_modules() if n}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(o)) for n, m in mods.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    default = default_layer(model, example)
    rows = []
    for n, m in mods.items():
        outs = seen.get(n, [])
        o = outs[0] if outs else None
        o = o[0] if isinstance(o, (tuple, list)) and o else o
        shape = tuple(o.shape) if torch.is_tensor(o) else None
        rows.append({"layer": n, "type": type(m).__name__, "output": shape, "calls": len(outs),
                     "channels": shape[1] if shape is not None and len(shape) in (2, 4) else None,
                     "default": n == default})
        if default == n + INPUT:
            rows.append({"layer": default, "type": "input of " + type(m).__name__, "output": None, "calls": len(outs),
                         "channels": int(m.weight.shape[1]), "default": True})
    return rows


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
        self.modules = resolve_layers(model, layers)  # name (or name:in) -> module
        self.num_classes, self.threshold = num_classes, threshold
        self.stats: dict[str, dict[str, ChannelStats]] = {n: {} for n in self.modules}
        self._handles: list = []
        self._batch: dict[str, list[torch.Tensor]] = {}
        self._armed = False

    def __enter__(self) -> ActivationRecorder:
        for name, mod in self.modules.items():
            self._handles.append(tap(mod, name, self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def fn(out: torch.Tensor) -> None:
            if self._armed:
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
