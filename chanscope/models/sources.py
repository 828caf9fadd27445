"""Open any image classifier as a model that takes images in [0, 1] and returns logits.

Sources (`spec`):
- a chanscope checkpoint or run folder, or an official CIFS/CAS checkpoint;
- `torchvision:NAME` (an architecture of torchvision.models) with `weights` (a state_dict file);
- `timm:NAME` with `weights` (timm is optional: `pip install chanscope[zoo]`);
- `robustbench:NAME` with `dataset`, `threat_model` and `model_dir`: RobustBench's own zoo and loading code,
  which reads the weights file a user has in model_dir and downloads only where the machine has internet;
- a TorchScript file (torch.jit.save) or an exported program (torch.export.save, .pt2);
- `package.module:callable`, a factory returning an nn.Module, with optional `weights`.

`mean`/`std` (or the source's own: RobustBench models normalise inside, timm's pretrained config names its
statistics) wrap the model so that it takes [0, 1] images and `eps` stays in pixel units. Every model carries
`model.source`: what was loaded (source, name, weights and their sha256, normalisation), for the records.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from chanscope.device import pick_device
from chanscope.errors import ChanscopeError
from chanscope.models.wrappers import Normalized

__all__ = ["ModelOptions", "open_model", "load_model", "PREFIXES", "spec_label", "import_robustbench"]

PREFIXES = ("torchvision", "timm", "robustbench")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class ModelOptions:
    """How to open a model spec (the fields a source does not use are ignored)."""

    weights: str | None = None  # state_dict file (torchvision, timm, factory)
    num_classes: int | None = None  # torchvision/timm head size (default: the data's class count, else 10)
    dataset: str = "cifar10"  # robustbench: cifar10 | cifar100 | imagenet
    threat_model: str = "Linf"  # robustbench: Linf | L2 | corruptions
    model_dir: str = "models"  # robustbench: the zoo folder (<dir>/<dataset>/<threat_model>/<name>.pt)
    mean: Sequence[float] | None = None  # input normalisation the model expects (per channel)
    std: Sequence[float] | None = None


def spec_label(spec: str) -> str:
    """A folder name for a model spec: `torchvision:resnet18` -> `torchvision-resnet18`."""
    return re.sub(r"[^\w.-]+", "-", Path(spec).stem if Path(spec).suffix else spec).strip("-") or "model"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_weights(model: nn.Module, path: str, what: str) -> dict[str, Any]:
    """Load a state_dict file into `model`, strictly; one line naming the first key that does not fit."""
    from chanscope.checkpoint import read_checkpoint

    p = Path(path).expanduser()
    if not p.is_file():
        raise ChanscopeError(f"weights file {str(p)!r} does not exist; check `weights`")
    obj = read_checkpoint(p)
    sd = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    own = model.state_dict()
    stripped = None
    for prefix in ("module.", "_orig_mod."):  # saved from DataParallel / DDP, or from a torch.compile'd model
        if sd and all(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in own):
            sd, stripped = {k[len(prefix):]: v for k, v in sd.items()}, prefix
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or extra or shape:
        first = (f"shape of {shape[0]}: file {tuple(sd[shape[0]].shape)}, model {tuple(own[shape[0]].shape)}"
                 if shape else f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
        raise ChanscopeError(f"weights {str(p)!r} do not fit {what} (first mismatch: {first}); give the weights "
                             "of this architecture (and `num_classes` if its head differs)")
    model.load_state_dict(sd)
    rec = {"weights": str(p), "weights_sha256": _sha256(p)}
    if stripped:
        rec["stripped_prefix"] = stripped
    return rec


def _weights(model: nn.Module, o: ModelOptions, what: str) -> dict[str, Any]:
    """The weights of an architecture-only source (torchvision, timm): a file, or 'none' for the network as
    initialised on purpose; never a random network silently."""
    if o.weights is None:
        raise ChanscopeError(f"{what} has no `weights`: it would study a randomly initialised network; give "
                             "`weights` FILE (a state_dict), or `weights`='none' to study a random network on purpose")
    if str(o.weights).lower() == "none":
        return {"weights": None, "random_init": True}
    return _load_weights(model, o.weights, what)


def _torchvision(name: str, o: ModelOptions) -> tuple[nn.Module, dict]:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ChanscopeError(f"torchvision has no model {name!r}; e.g. resnet18, wide_resnet50_2, vgg11_bn")
    model = torchvision.models.get_model(name, weights=None, num_classes=o.num_classes or 10)
    rec = _weights(model, o, f"torchvision:{name}")
    return model, rec


def _timm(name: str, o: ModelOptions) -> tuple[nn.Module, dict]:
    try:
        import timm
    except ImportError:
        raise ChanscopeError("timm models need timm: pip install 'chanscope[zoo]'") from None
    if not timm.is_model(name):
        raise ChanscopeError(f"timm has no model {name!r}; timm.list_models('*resnet*') lists some")
    model = timm.create_model(name, pretrained=False, num_classes=o.num_classes or 10)
    rec = _weights(model, o, f"timm:{name}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if o.mean is None and cfg.get("mean") and cfg.get("std"):
        rec["default_normalisation"] = {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    return model, rec


def import_robustbench() -> None:
    """Make `import robustbench` work from PyPI: robustbench 1.1 imports `autoattack`, the name the AutoAttack
    authors' code has when installed from GitHub; on PyPI the same code is `pyautoattack`."""
    import importlib.util
    import sys

    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        sys.modules["autoattack"] = importlib.import_module("pyautoattack")


def _robustbench(name: str, o: ModelOptions) -> tuple[nn.Module, dict]:
    import_robustbench()
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model
    except ImportError:
        raise ChanscopeError("RobustBench models need robustbench: pip install 'chanscope[zoo]'") from None
    try:
        ds, tm = BenchmarkDataset(o.dataset), ThreatModel(o.threat_model)
    except ValueError:
        raise ChanscopeError(f"RobustBench has no dataset {o.dataset!r} with threat model {o.threat_model!r}; "
                             "`dataset` is cifar10, cifar100 or imagenet, `threat_model` Linf, L2 or corruptions"
                             ) from None
    zoo = model_dicts[ds][tm]
    if name not in zoo:
        import difflib

        near = difflib.get_close_matches(name, list(zoo), n=3)
        raise ChanscopeError(f"RobustBench has no {o.dataset} {o.threat_model} model {name!r}"
                             + (f"; nearest: {', '.join(near)}" if near else "; see robustbench.model_zoo"))
    path = Path(o.model_dir).expanduser() / ds.value / tm.value / f"{name}.pt"
    try:
        model = load_model(name, model_dir=o.model_dir, dataset=ds.value, threat_model=tm.value)
    except Exception as e:  # noqa: BLE001  (no internet shows as many kinds of error inside gdown/requests)
        if not path.is_file():
            raise ChanscopeError(f"RobustBench model {name!r} is not in {str(path)!r} and could not be downloaded "
                                 f"({type(e).__name__}); put its weights file there, or run where there is "
                                 "internet") from None
        raise ChanscopeError(f"RobustBench could not load {str(path)!r} ({_first_key_error(e)}); "
                             "the file does not fit its architecture") from None
    rec = {"weights": str(path), "weights_sha256": _sha256(path) if path.is_file() else None,
           "dataset": ds.value, "threat_model": tm.value, "normalisation": "inside the model (RobustBench)"}
    return model, rec


def _first_key_error(e: Exception) -> str:
    """The line of a load_state_dict error that names a key (missing, unexpected, or of another shape)."""
    import re

    text = str(e)
    for what, pat in (("missing key", r"Missing key\(s\) in state_dict: \"([^\"]+)\""),
                      ("unexpected key", r"Unexpected key\(s\) in state_dict: \"([^\"]+)\""),
                      ("shape of", r"size mismatch for ([^:]+): ([^\n]{0,100})")):
        m = re.search(pat, text)
        if m:
            return f"{what} {m.group(1)}" + (f": {m.group(2)}" if m.lastindex and m.lastindex > 1 else "")
    return text.splitlines()[0][:150] if text else type(e).__name__


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that does not exist
        return False


def _factory(spec: str, o: ModelOptions) -> tuple[nn.Module, dict]:
    mod_name, fn_name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ChanscopeError(f"cannot import {spec!r} ({e}); give package.module:callable on the Python path"
                             ) from None
    try:
        model = fn()
    except TypeError as e:  # a factory that needs arguments
        raise ChanscopeError(f"{spec}() cannot be called without arguments ({e}); give a factory that needs none, "
                             "e.g. functools.partial in a module of yours") from None
    if not isinstance(model, nn.Module):
        raise ChanscopeError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    rec = _load_weights(model, o.weights, spec) if o.weights and str(o.weights).lower() != "none" else \
        {"weights": None}
    return model, rec


def _file(path: Path) -> tuple[nn.Module, dict]:
    """A checkpoint (chanscope's or the official CIFS code's), a TorchScript file or an exported program."""
    from chanscope.checkpoint import archive_kind, model_from_checkpoint, read_checkpoint, resolve

    p = resolve(path)
    kind = archive_kind(p)
    if kind == "torchscript":
        return torch.jit.load(str(p), map_location="cpu"), {"source": "torchscript", "weights": str(p)}
    if kind == "export":
        ep = torch.export.load(str(p))
        shape = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and "val" in n.meta]
        user = [v for v in shape if isinstance(v, torch.Tensor)][-1:]  # the image input comes after the weights
        if user and isinstance(user[0].shape[0], int):
            raise ChanscopeError(f"{str(p)!r} was exported with a fixed batch of {user[0].shape[0]}; export it with "
                                 "dynamic_shapes={'x': {0: torch.export.Dim('batch')}} so attacks can batch images")
        return torch.export.unflatten(ep), {"source": "export", "weights": str(p)}
    obj = read_checkpoint(p)
    model = model_from_checkpoint(obj, str(p))
    return model, {"source": "checkpoint", "weights": str(p), "arch": getattr(model, "arch", None)}


def open_model(spec: str | Path, options: ModelOptions | None = None) -> nn.Module:
    """The model `spec` names, in eval mode on the CPU, normalised inside, with `model.source` set."""
    o = options or ModelOptions()
    spec = str(spec)
    prefix, _, name = spec.partition(":")
    if prefix in PREFIXES:
        model, rec = {"torchvision": _torchvision, "timm": _timm, "robustbench": _robustbench}[prefix](name, o)
        rec = {"source": prefix, "name": name, **rec}
    elif _FACTORY.match(spec) and not Path(spec).exists() and _importable(prefix):
        model, rec = _factory(spec, o)
        rec = {"source": "factory", "name": spec, **rec}
    elif ":" in spec and not Path(spec).exists():
        raise ChanscopeError(f"unknown model source {prefix!r} (nor a Python module); use a checkpoint path, "
                             "torchvision:NAME, timm:NAME, robustbench:NAME, a TorchScript or .pt2 file, or "
                             "package.module:callable")
    else:
        model, rec = _file(Path(spec))
        rec.setdefault("name", spec)
    mean, std = o.mean, o.std
    if mean is None and "default_normalisation" in rec:
        mean, std = rec["default_normalisation"]["mean"], rec["default_normalisation"]["std"]
    if (mean is None) != (std is None):
        raise ChanscopeError("give both `mean` and `std` (per channel, e.g. 0.4914,0.4822,0.4465)")
    if mean is not None:
        if rec["source"] == "checkpoint":
            raise ChanscopeError("chanscope checkpoints normalise inside; leave out `mean` and `std`")
        model = Normalized(model, mean, std)
        rec["normalisation"] = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    rec.setdefault("normalisation", "inside the model" if rec["source"] == "checkpoint" else "none")
    rec.pop("default_normalisation", None)
    model.eval()
    try:
        model.source = rec
    except (AttributeError, RuntimeError):  # a ScriptModule takes no new attributes
        object.__setattr__(model, "source", rec)
    return model


def load_model(spec: str | Path, device: str | torch.device | None = None, **options: Any) -> torch.nn.Module:
    """Open any image classifier as a model in eval mode: [0, 1] images -> logits.

    spec: a chanscope checkpoint or run folder, an official CIFS/CAS checkpoint, `torchvision:NAME`,
    `timm:NAME`, `robustbench:NAME`, a TorchScript or exported (.pt2) file, or `package.module:callable`.
    options: the fields of `chanscope.models.sources.ModelOptions` (weights, num_classes, dataset,
    threat_model, model_dir, mean, std). `model.source` records what was loaded.

    Example:
        >>> model = chanscope.load_model("runs/cifs/best.pt")
        >>> tv = chanscope.load_model("torchvision:resnet18", weights="tv.pt", mean=[0.49, 0.48, 0.45],
        ...                           std=[0.25, 0.24, 0.26])
        >>> logits = model(images)  # images in [0, 1], shape (N, C, H, W)
    """
    try:
        opts = ModelOptions(**options)
    except TypeError as e:
        raise ChanscopeError(f"load_model: {e}; options are the fields of ModelOptions") from None
    model = open_model(spec, opts)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(dev).eval()
