"""`eval` on a run folder: loads the model and the data, runs `chanscope.attacks.evaluation` on the test
subset, and writes eval.csv / eval.json / examples and the masking checks (never over another option's
results without saying so)."""

from __future__ import annotations

import time
from collections.abc import Callable

from chanscope.attacks.evaluation import (
    ADAPTIVE_DEFAULT,
    DEFAULT_ATTACKS,
    EVAL_COLUMNS,
    EvalResult,
    accuracy_under,
    default_attacks,
    natural_correct,
    sanity_checks,
    strongest_components,
    verdict,
)
from chanscope.attacks.evaluation import evaluate as _evaluate
from chanscope.workflows.options import EvalOptions

Progress = Callable[[str, int, int], None]

__all__ = ["default_attacks", "evaluate", "run_eval", "EvalOptions", "sanity_checks", "EvalResult",
           "EVAL_COLUMNS", "accuracy_under", "natural_correct", "strongest_components", "verdict",
           "DEFAULT_ATTACKS", "ADAPTIVE_DEFAULT"]


def evaluate(model, x, y, classes, specs, **kw) -> EvalResult:
    """`chanscope.attacks.evaluation.evaluate`, sharded over torchrun's ranks when there are several."""
    from chanscope.accel import distributed

    return _evaluate(model, x, y, classes, specs, sharding=distributed, **kw)


def _replaced(path, summary: dict) -> str | None:
    """What an eval about to be written replaces, where the folder held one made with other attacks, images or
    seed (a study's stage redoes its own; a user should know)."""
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    def what(rec: dict) -> tuple:
        return ([a.get("name") for a in rec.get("attacks") or []], (rec.get("data") or {}).get("n_eval"),
                rec.get("seed"))
    if what(old) == what(summary):
        return None
    names, n, seed = what(old)
    return f"{path.parent / 'eval.csv'} made with attacks {','.join(map(str, names))} on {n} images (seed {seed})"


def run_eval(model_path: str, options: EvalOptions | None = None, *, model_options=None,
             progress: Progress | None = None,
             on_ready: Callable[[dict], None] | None = None) -> tuple[EvalResult, dict]:
    """Evaluate a model and write eval.csv and eval.json (atomically) into `options.out` or the run folder.

    model_path: any model spec of `chanscope.load_model`; model_options: its ModelOptions (weights, ...)."""

    from chanscope.accel.layout import set_layout
    from chanscope.models.sources import load_model
    from chanscope.workflows.runs import (
        check_fits,
        folder_lock,
        open_measurement,
        resolve_threat_model,
        run_dir_of,
        writable_dir,
    )

    t0 = time.time()
    o = EvalOptions.given(options, "run_eval")
    o.check()
    resolve_threat_model(o, model_path)
    specs = o.specs() if o.attacks is not None else None  # fails before the model is read
    device, ds, net, x, y, class_note = open_measurement(model_path, o, model_options)
    specs = specs or o.specs(default_attacks(net))
    sur = set_layout(load_model(o.surrogate, device), "auto") if o.surrogate else None
    if sur is not None:  # the model fits the data (checked above), so the surrogate must fit it too
        check_fits(sur, tuple(x.shape[1:]), ds.num_classes, "surrogate", "the model")
    out_dir = writable_dir(o.out or run_dir_of(model_path))
    with folder_lock(out_dir):
        return _eval_into(out_dir, model_path, o, net, ds, x, y, specs, sur, class_note, t0, progress, on_ready)


def _eval_into(out_dir, model_path, o, net, ds, x, y, specs, sur, class_note, t0, progress, on_ready):
    import json

    from chanscope.accel import distributed as dist_util
    from chanscope.attacks.suite import has_probes
    from chanscope.io import atomic_write_csv, atomic_write_json, versions

    if on_ready:
        on_ready({"n": len(y), "data": ds.name, "device": str(next(net.parameters()).device),
                  "specs": specs, "out": out_dir, "notes": [class_note] if class_note else []})
    result = evaluate(net, x, y, ds.classes, specs, batch_size=o.batch_size, beta_atk=o.beta_atk, seed=o.seed,
                      progress=progress)
    if o.sanity:
        result.sanity = sanity_checks(net, x, y, o.eps, batch_size=o.batch_size, surrogate=sur,
                                      square_queries=o.square_queries, seed=o.seed, norm=o.threat_model,
                                      loss="joint" if has_probes(net) else "ce", progress=progress)
    summary = {
        "model": str(model_path), "model_source": getattr(net, "source", None), "arch": getattr(net, "arch", None),
        "model_kwargs": getattr(net, "model_kwargs", None),
        "data": ds.describe() | {"n_eval": len(y), "n_requested": o.n},
        "classes_note": class_note,
        "threat_model": o.threat_model,
        "eps": o.eps, "attacks": [s.to_dict() for s in specs], "beta_atk": o.beta_atk, "seed": o.seed,
        "overall": json.loads(result.overall().to_json(orient="records")), "max_linf": result.max_linf,
        "attack_seconds": result.seconds, "adaptive_components": strongest_components(result.examples),
        "sanity": result.sanity,
        "verdict": verdict(result.sanity) if o.sanity else None, "surrogate": o.surrogate,
        "wall_seconds": round(time.time() - t0, 1), "versions": versions(), "out": str(out_dir),
    }
    summary["replaced"] = _replaced(out_dir / "eval.json", summary)
    if dist_util.is_main():
        atomic_write_csv(out_dir / "eval.csv", result.table)
        atomic_write_csv(out_dir / "eval_examples.csv", result.examples)
        atomic_write_json(out_dir / "eval.json", summary)
    return result, summary
