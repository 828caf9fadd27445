"""chanscope: channel-wise activation studies of adversarially trained CNNs (CIFS, Yan et al. 2021)."""

import os
from typing import TYPE_CHECKING

from chanscope._version import __version__

__all__ = ["share_cpu", "load_model", "study", "evaluate", "sensitivity", "zoo", "save_checkpoint", "create_model",
           "list_models", "ChanscopeError", "__version__"]

# imported on first use (PEP 562), so that `import chanscope` (and the `chanscope` command's help, version and
# usage errors) loads no torch: name -> the module that defines it
_LAZY = {"share_cpu": "chanscope.accel.threads", "load_model": "chanscope.models.sources",
         "save_checkpoint": "chanscope.checkpoint", "create_model": "chanscope.models",
         "list_models": "chanscope.models", "ChanscopeError": "chanscope.errors"}

if TYPE_CHECKING:
    from chanscope.accel.threads import share_cpu
    from chanscope.checkpoint import save_checkpoint
    from chanscope.errors import ChanscopeError
    from chanscope.models import create_model, list_models
    from chanscope.models.sources import load_model


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def study(model, data="embedded", layers=None, attack="pgd20", relevance="gradient", n=1000, **kwargs):
    """The activation study of any model on any data, in memory (`chanscope.workflows.notebook.study`)."""
    from chanscope.workflows.notebook import study as _study

    return _study(model, data, layers, attack, relevance, n, **kwargs)


def evaluate(model, data="embedded", attacks=("pgd20",), **kwargs):
    """Robust accuracy per attack and class (`chanscope.workflows.notebook.evaluate`): the eval.csv table."""
    from chanscope.workflows.notebook import evaluate as _evaluate

    return _evaluate(model, data, attacks, **kwargs)


def sensitivity(models, data="embedded", layers=None, relevances=("gradient", "grad-x-act", "ablation"),
                attacks=("pgd20", "cw20", "tpgd20"), n=500, device=None, threat_model="linf"):
    """The observations on a grid of layers x relevances x attacks (`chanscope sensitivity`) for models a user
    loads: `models` maps roles to models or checkpoints ({"standard": ..., "at": ..., "random": ...}; a list of
    such dicts for several seeds); returns the tidy table (`chanscope.observe.grid.GRID_COLUMNS`). threat_model:
    linf (attacks at 8/255) or l2 (at 0.5)."""
    from chanscope.errors import check_threat_model
    from chanscope.workflows.sensitivity import GridPlan, sensitivity_grid

    seeds = list(models) if isinstance(models, (list, tuple)) else [models]
    if layers is None:
        from chanscope.workflows.notebook import _model
        from chanscope.workflows.sensitivity import default_layers

        layers = default_layers(_model(seeds[0]["at"], device, {}))
    plan = GridPlan(seeds, list(layers), list(relevances), list(attacks), n, check_threat_model(threat_model))
    return sensitivity_grid(plan, data, device=device)


def zoo(models, data="embedded", out=None, *, attack="pgd20", threat_model="linf", eps=None, n=500, layer=None,
        relevance="gradient", aa_n=0, seed=0, device=None, model_dir="models", dataset="cifar10", progress=None):
    """`chanscope zoo` from Python: `models` are specs (checkpoints, run or study folders, torchvision:/timm:/
    robustbench:NAME, ...); measured into `out` (default a temporary folder); returns the zoo table (one row per
    model and random control) with the across-model analysis as its `.attrs["analysis"]`."""
    import tempfile

    from chanscope.errors import check_threat_model
    from chanscope.workflows.zoo import Protocol, parse_models, run_zoo

    norm = check_threat_model(threat_model)
    p = Protocol(data=str(data), attack=attack, threat_model=norm, eps=eps, n=n, layer=layer, relevance=relevance,
                 aa_n=aa_n, seed=seed, model_options={"model_dir": str(model_dir), "dataset": dataset,
                                                      "threat_model": {"linf": "Linf", "l2": "L2"}[norm]})
    specs = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    with tempfile.TemporaryDirectory(prefix="chanscope-zoo-") as tmp:
        df, analysis = run_zoo(parse_models([str(m) for m in specs]), p, out or tmp, device=device,
                               progress=progress)
    df.attrs["analysis"] = analysis
    return df
