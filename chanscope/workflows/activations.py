"""`chanscope activations`: one pass over the test set, natural and adversarial statistics of the same
images, relevance per class, and the alignment tables."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from chanscope.errors import ChanscopeError
from chanscope.observe.study import LayerResult
from chanscope.observe.study import study_activations as _study
from chanscope.workflows.options import ActivationOptions

DEFAULT_N = 1000  # test images when none are asked for: a full test set under PGD-20 is a long wait on a CPU

__all__ = ["run_activations", "ActivationOptions", "study_activations",
           "LayerResult", "write_examples", "read_examples", "write_results", "layer_suffix"]


def write_examples(path, examples: dict[str, np.ndarray]) -> None:
    """The per-image arrays of one layer as a .npz file, written atomically."""
    import io

    from chanscope.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **examples)
    atomic_write_bytes(path, buf.getvalue())


def with_intervals(classes: pd.DataFrame, examples: dict[str, np.ndarray] | None) -> pd.DataFrame:
    """classes.csv with 95% bootstrap intervals (over each class's images) beside the numbers verdicts read."""
    if examples is None:
        return classes
    from chanscope.observe.verdicts import class_intervals

    return classes.merge(class_intervals(examples), on="class", how="left")


def read_examples(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def layer_suffix(layer: str) -> str:
    """The part of a file name that says which layer it holds, when a study records several: `-layer4`,
    `-fc-in` for `fc:in`."""
    return "-" + layer.replace(":", "-")


def output_suffix(out_dir, layer: str, meta: dict, *, several: bool, default: str | None, owned: bool = False) -> str:
    """The part of the file names that says what a measurement measured, so one never replaces another:
    `-<layer>` unless it is the model's default layer (and the only one), `-<relevance>` unless gradient, and
    `-<attack>` where files of the same name already hold a measurement under another attack (unless the caller
    owns those names: a study's stage rewrites its own files)."""
    import json
    from pathlib import Path

    parts = [layer] if several or (default is not None and layer != default) else []
    if meta.get("relevance", "gradient") != "gradient":
        parts.append(meta["relevance"])
    suffix = "".join(layer_suffix(p) for p in parts)
    prev = Path(out_dir) / f"activations{suffix}.json"
    attack = (meta.get("attack") or {}).get("name")
    if prev.is_file() and attack and not owned:
        try:
            before = (json.loads(prev.read_text()).get("attack") or {}).get("name")
        except (OSError, json.JSONDecodeError):
            before = None
        if before is not None and before != attack:
            suffix += layer_suffix(attack)
    return suffix


def write_results(out_dir, results: list[LayerResult], meta: dict, t0: float | None = None,
                  default_layer: str | None = None, owned: bool = False) -> list[str]:
    """channels.csv, classes.csv (with intervals), examples.npz and activations.json per layer, atomically,
    named by what they measured (`output_suffix`); returns each layer's suffix."""
    from chanscope.io import atomic_write_csv, atomic_write_json
    from chanscope.observe.analysis import CHANNEL_COLUMNS, CLASS_COLUMNS

    suffixes = []
    for res in results:
        suffix = output_suffix(out_dir, res.layer, meta, several=len(results) > 1, default=default_layer, owned=owned)
        suffixes.append(suffix)
        atomic_write_csv(out_dir / f"channels{suffix}.csv", res.channels[CHANNEL_COLUMNS])
        atomic_write_csv(out_dir / f"classes{suffix}.csv", with_intervals(res.classes[CLASS_COLUMNS], res.examples))
        if res.examples is not None:
            write_examples(out_dir / f"examples{suffix}.npz", res.examples)
        wall = {"wall_seconds": round(time.time() - t0, 1)} if t0 is not None else {}
        atomic_write_json(out_dir / f"activations{suffix}.json", {"layer": res.layer, **meta, **wall})
    return suffixes


def study_activations(model, x, y, classes, layers, attack, **kw) -> tuple[list[LayerResult], float]:
    """`chanscope.observe.study.study_activations`, sharded over torchrun's ranks when there are several."""
    from chanscope.accel import distributed

    return _study(model, x, y, classes, layers, attack, sharding=distributed, **kw)


def run_activations(model_path: str, options: ActivationOptions | None = None, *, model_options=None,
                    progress: Callable[[int, int], None] | None = None,
                    on_ready: Callable[[dict], None] | None = None, owned: bool = False,
                    ) -> tuple[list[LayerResult], dict]:
    """Record a checkpoint's channel statistics and write channels.csv, classes.csv, activations.json
    (suffixed `-<layer>`, `:` as `-`, when several layers are asked for) atomically into `options.out` or
    the run folder.

    options.n: class-balanced test images; None: DEFAULT_N, or the whole test set where it is smaller.
    owned: the caller owns the unsuffixed file names (a study's stage): they are rewritten, never suffixed by the
    attack."""
    from chanscope.observe.hooks import default_layer, resolve_layers
    from chanscope.workflows.runs import folder_lock, open_measurement, resolve_threat_model, run_dir_of, writable_dir

    t0 = time.time()
    o = ActivationOptions.given(options, "run_activations")
    o.check()
    resolve_threat_model(o, model_path)
    spec = o.spec()  # every option checked before the model is read
    _, ds, net, x, y, class_note = open_measurement(model_path, o, model_options, default_n=DEFAULT_N)
    try:
        default = default_layer(net, x[:1].to(next(net.parameters()).device))
    except ChanscopeError:
        if not o.layers:
            raise
        default = ""  # the model has no default layer: the layers named are the files' names
    layers = list(o.layers) if o.layers else [default]
    resolve_layers(net, layers)
    out_dir = writable_dir(o.out or run_dir_of(model_path))
    with folder_lock(out_dir):
        return _study_into(out_dir, model_path, o, spec, ds, net, x, y, layers, default, class_note, t0, progress,
                           on_ready, owned)


def _study_into(out_dir, model_path, o, spec, ds, net, x, y, layers, default, class_note, t0, progress, on_ready,
                owned=False):
    # the walk over the images is 95% of the bar; the tables with their bootstrap intervals are the rest
    tail = max(1, len(y) // 20)
    walk = (lambda d, t: progress(d, t + tail)) if progress else None
    from chanscope.accel import distributed as dist_util
    from chanscope.io import versions

    if on_ready:
        on_ready({"layers": layers, "n": len(y), "data": ds.name, "attack": spec.name, "spec": spec, "out": out_dir,
                  "notes": [class_note] if class_note else []})
    results, seconds = study_activations(net, x, y, ds.classes, layers, spec, relevance=o.relevance,
                                         relevance_on=o.relevance_on, threshold=o.threshold,
                                         batch_size=o.batch_size, beta_atk=o.beta_atk, seed=o.seed,
                                         progress=walk)
    if not dist_util.is_main():
        return results, {"out": str(out_dir), "wall_seconds": round(time.time() - t0, 1)}
    meta = {"attack": spec.to_dict(), "relevance": o.relevance, "relevance_on": o.relevance_on,
            "threshold": o.threshold, "data": ds.describe() | {"n_used": len(y), "n_requested": o.n},
            "classes_note": class_note,
            "model": str(model_path), "model_source": getattr(net, "source", None),
            "arch": getattr(net, "arch", None), "model_kwargs": getattr(net, "model_kwargs", None), "seed": o.seed,
            "seconds": round(seconds, 1), "versions": versions(), "out": str(out_dir)}
    meta["files"] = [f"classes{sfx}.csv" for sfx in write_results(out_dir, results, meta, t0, default, owned)]
    if progress:
        progress(len(y) + tail, len(y) + tail)
    meta["wall_seconds"] = round(time.time() - t0, 1)
    return results, meta
