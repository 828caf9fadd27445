"""The Python API for notebooks: `chanscope.study`, `chanscope.evaluate`, on any model and any data, in memory.

A model is an nn.Module (images in [0, 1] -> logits) or any spec `chanscope.load_model` opens; data is a
chanscope data spec (as `--data`), a torch Dataset, a DataLoader or a pair of tensors (images in [0, 1], labels).
The tables have the columns of the CSVs the commands write; `Study.save` writes those files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from chanscope.data import ImageData, balanced_subset, load_data
from chanscope.errors import ChanscopeError
from chanscope.workflows.activations import DEFAULT_N, LayerResult, study_activations, write_results
from chanscope.workflows.options import ActivationOptions, EvalOptions

__all__ = ["study", "evaluate", "Study", "as_images"]


def _to_tensor(img: Any) -> torch.Tensor:
    if torch.is_tensor(img):
        return img.float() / 255 if img.dtype == torch.uint8 else img.float()
    from torchvision.transforms.functional import to_tensor

    return to_tensor(img)  # a PIL image or an HWC array


def _names(obj: Any) -> list[str] | None:
    names = getattr(obj, "classes", None) or getattr(getattr(obj, "dataset", None), "classes", None)
    return [str(c) for c in names] if names else None


def _all_images(data: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str] | None, str]:
    """Every image of `data` (a DataLoader: enough for n), its labels, class names where it has them, a name."""
    if isinstance(data, (str, Path)) or data is None or isinstance(data, ImageData):
        ds = data if isinstance(data, ImageData) else load_data(str(data) if data is not None else None)
        return ds.x_test.float().div(255), ds.y_test, list(ds.classes), ds.name
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        return data[0].float(), data[1].long(), None, "tensors"
    if isinstance(data, torch.utils.data.DataLoader):
        xs, ys, seen = [], [], 0
        for xb, yb in data:
            xs.append(_to_tensor(xb))
            ys.append(torch.as_tensor(yb))
            seen += len(ys[-1])
            if n is not None and seen >= 4 * n:  # enough to balance n over the classes
                break
        return torch.cat(xs), torch.cat(ys).long(), _names(data), type(data.dataset).__name__
    if isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]
        x = torch.stack([_to_tensor(a) for a, _ in items])
        return x, torch.as_tensor([int(b) for _, b in items]), _names(data), type(data).__name__
    raise ChanscopeError(f"data of type {type(data).__name__}: give a data spec (e.g. 'embedded', a folder or "
                         "archive), a torch Dataset, a DataLoader or (images, labels) tensors")


def as_images(data: Any, model: nn.Module, n: int | None = None,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """(images in [0, 1], labels, class names, a name) of up to n class-balanced images of `data`; classes
    without names are named by index, as many as the model predicts."""
    x, y, names, name = _all_images(data, n)
    if x.ndim != 4 or float(x.min()) < 0 or float(x.max()) > 1:
        raise ChanscopeError(f"images must be (N, C, H, W) in [0, 1], got shape {tuple(x.shape)} in "
                             f"[{float(x.min()):.2f}, {float(x.max()):.2f}]; leave normalisation to the model "
                             "(`mean`/`std` of load_model)")
    if names is None:
        with torch.no_grad():
            out = model(x[:1].to(next(model.parameters()).device))
        if not torch.is_tensor(out):
            raise ChanscopeError(f"the model returns a {type(out).__name__}, not logits (images, classes); give a "
                                 "model whose forward returns the logits (wrap it if it returns more)")
        k = out.shape[-1]
        names = [str(i) for i in range(max(k, int(y.max()) + 1))]
    if n is not None and n < len(y):
        idx = balanced_subset(y, n, len(names), seed)
        x, y = x[idx], y[idx]
    return x, y, names, name


def _model(model: nn.Module | str, device: str | None, options: dict) -> nn.Module:
    from chanscope.device import pick_device
    from chanscope.models.sources import load_model

    if isinstance(model, nn.Module):
        dev = pick_device(device) if device else next(model.parameters()).device
        return model.to(dev).eval()
    return load_model(model, device, **options)


@dataclass
class Study:
    """The activation study of one model: per layer the channels and classes tables."""

    layers: list[LayerResult]
    record: dict = field(default_factory=dict)
    _folder: Path | None = None

    @property
    def channels(self) -> pd.DataFrame:
        return pd.concat([r.channels for r in self.layers], ignore_index=True)

    @property
    def classes(self) -> pd.DataFrame:
        return pd.concat([r.classes for r in self.layers], ignore_index=True)

    def save(self, out: str | Path) -> Path:
        """Write the files `chanscope activations` writes (channels.csv, classes.csv, ...) into `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, self.layers, self.record)
        self._folder = out
        return out

    def _plot(self, draw):
        """Draw from the saved files: the folder `save` wrote, else a temporary one named after the model (so
        the figure is titled by it), removed afterwards."""
        if self._folder is not None:
            return draw(self._folder)
        with tempfile.TemporaryDirectory(prefix="chanscope-study-") as tmp:
            folder = Path(tmp) / _safe_name(self.record.get("name") or "model")
            folder.mkdir()
            write_results(folder, self.layers, self.record)
            return draw(folder)

    def plot_nr_channels(self, out: str | Path = "figures", class_name: str | None = None) -> pd.DataFrame:
        """The NR-channels figure (PNG, PDF and its data as CSV in `out`); returns the data drawn."""
        from chanscope.workflows.plots import nr_channels

        return self._plot(lambda folder: nr_channels([folder], out, class_name=class_name))

    def plot_class_alignment(self, out: str | Path = "figures", classes: list[str] | None = None) -> pd.DataFrame:
        """The per-class alignment figure (files in `out`); returns the data drawn."""
        from chanscope.workflows.plots import class_alignment

        return self._plot(lambda folder: class_alignment(folder, out, classes=classes))


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:60] or "model"


def _model_name(model: nn.Module | str) -> str:
    if isinstance(model, str):
        return Path(model).parent.name if model.endswith(".pt") else model.split(":")[-1]
    return type(model).__name__


def study(model: nn.Module | str, data: Any = "embedded", layers: list[str] | None = None, attack: str = "pgd20",
          relevance: str = "gradient", n: int | None = DEFAULT_N, *, eps: float | None = None,
          threat_model: str = "linf",
          relevance_on: str = "natural", threshold: float = 1e-2, batch_size: int = 250, seed: int = 0,
          follow_mask: bool = False, beta_atk: float = 2.0, device: str | None = None, progress: Any = None,
          **model_options: Any) -> Study:
    """Record per-class channel magnitudes of `layers` (default: the penultimate representation) on natural
    and `attack`ed images of `data`, with channel relevance; see `chanscope activations`. progress: True for a
    line on stderr, or a callable(done, total). A model passed in is left in the mode it came in."""
    from chanscope.observe.hooks import default_layer, resolve_layers
    from chanscope.workflows.runs import check_fits

    o = ActivationOptions(eps=eps, threat_model=threat_model,
                          n=n, follow_mask=follow_mask, beta_atk=beta_atk, batch_size=batch_size,
                          seed=seed, device=device, layers=list(layers) if layers else None, attack=attack,
                          relevance=relevance, relevance_on=relevance_on, threshold=threshold)
    spec = o.spec()  # every option checked before the model is read
    was_training = model.training if isinstance(model, nn.Module) else None
    net = _model(model, device, model_options)
    try:
        x, y, classes, name = as_images(data, net, n, seed)
        check_fits(net, tuple(x.shape[1:]), len(classes), "the model", f"data {name!r}")
        layers = o.layers or [default_layer(net, x[:2].to(next(net.parameters()).device))]
        resolve_layers(net, layers)
        results, seconds = study_activations(net, x, y, classes, layers, spec, relevance=relevance,
                                             relevance_on=relevance_on, threshold=threshold, batch_size=batch_size,
                                             beta_atk=beta_atk, seed=seed, progress=_progress(progress, "study"))
    finally:
        if was_training is not None:
            net.train(was_training)  # a model passed in keeps its mode
    record = {"name": _model_name(model), "attack": spec.to_dict(), "relevance": relevance,
              "relevance_on": relevance_on, "threshold": threshold, "data": {"name": name, "n_used": len(y)},
              "model_source": getattr(net, "source", None), "seed": seed, "seconds": round(seconds, 1)}
    return Study(results, record)


def _progress(progress: Any, what: str):
    """progress=True: a line on stderr as batches finish; a callable (done, total): called; else nothing."""
    if callable(progress):
        return progress
    if not progress:
        return None
    import sys

    def show(done: int, total: int) -> None:
        print(f"\r{what}: {done}/{total} images", end="\n" if done >= total else "", file=sys.stderr, flush=True)
    return show


def evaluate(model: nn.Module | str, data: Any = "embedded", attacks: list[str] | str = ("pgd20",), *,
             eps: float | None = None,
             threat_model: str = "linf", n: int | None = 1000, batch_size: int = 250, seed: int = 0,
             follow_mask: bool = False, beta_atk: float = 2.0, device: str | None = None, progress: Any = None,
             **model_options: Any) -> pd.DataFrame:
    """Robust accuracy of `model` on `data` under each attack, per class and `all` (the eval.csv table)."""
    from chanscope.workflows.evaluate import evaluate as run
    from chanscope.workflows.runs import check_fits

    o = EvalOptions(eps=eps, threat_model=threat_model,
                    n=n, follow_mask=follow_mask, beta_atk=beta_atk, batch_size=batch_size, seed=seed,
                    device=device, attacks=attacks if isinstance(attacks, str) else ",".join(attacks))
    o.check()
    specs = o.specs()  # before the model is read
    was_training = model.training if isinstance(model, nn.Module) else None
    net = _model(model, device, model_options)
    try:
        x, y, classes, name = as_images(data, net, n, seed)
        check_fits(net, tuple(x.shape[1:]), len(classes), "the model", f"data {name!r}")
        shown = _progress(progress, "evaluate")
        return run(net, x, y, classes, specs, batch_size=batch_size, beta_atk=beta_atk, seed=seed,
                   progress=(lambda what, done, total: shown(done, total)) if shown else None).table
    finally:
        if was_training is not None:
            net.train(was_training)
