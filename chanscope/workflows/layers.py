"""`chanscope layers`: a model's named modules with their output shapes and channel counts on one batch, so a
user can pick `layer` for a study."""

from __future__ import annotations

import torch

from chanscope.observe.hooks import list_layers
from chanscope.workflows.runs import check_fits, data_of_run, open_model_for

__all__ = ["model_layers"]


def model_layers(model_path: str, *, data: str | None = None, data_root: str | None = None, download: bool = False,
                 device: str | None = None, model_options=None) -> tuple[list[dict], dict]:
    """Rows (layer, type, output, channels, calls, default) on two test images of the data, and what was
    loaded."""
    ds = data_of_run(model_path, data, data_root, download)
    net = open_model_for(model_path, ds, device, model_options)
    x = ds.x_test[:2].float().div(255)
    check_fits(net, tuple(x.shape[1:]), ds.num_classes, f"model {model_path!r}", f"data {ds.name!r}")
    with torch.no_grad():
        rows = list_layers(net, x.to(next(net.parameters()).device))
    return rows, {"data": ds.name, "source": getattr(net, "source", None), "input": tuple(x.shape[1:])}
