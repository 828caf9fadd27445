"""Run folders: where a checkpoint's outputs go and which data it was trained on."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from chanscope.data import ImageData, balanced_subset, check_classes, load_data
from chanscope.errors import ChanscopeError

__all__ = ["run_dir_of", "data_of_run", "open_model_for", "test_subset", "writable_dir", "check_fits", "match_classes",
           "CLASSES_BY", "Measurement", "open_measurement", "folder_lock", "LOCK_NAME",
           "locks_out"]

LOCK_NAME = ".chanscope.lock"
_HELD: dict[str, int] = {}  # folders this process holds: path -> depth (a workflow may lock inside another)


@contextmanager
def folder_lock(path: str | Path) -> Iterator[Path]:
    """One writer per folder: an exclusive lock on `path/.chanscope.lock` for the duration, so a second command
    writing into the same folder is refused in one line (nothing of the first one's is touched). The lock is the
    operating system's (flock): a crashed or killed command never leaves it held; the file is removed when the
    lock is released. Re-entrant in one process. A folder this call made is removed again if the command inside
    fails before writing anything into it."""
    p = Path(path)
    made = not p.exists()
    p = writable_dir(p)
    key = str(p.resolve())
    try:
        if key in _HELD or sys.platform == "win32" or os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 locks
            _HELD[key] = _HELD.get(key, 0) + 1
            try:
                yield p
            finally:
                _HELD[key] -= 1
                if not _HELD[key]:
                    del _HELD[key]
            return
        fd = _acquire(p / LOCK_NAME)
        _HELD[key] = 1
        try:
            yield p
        finally:
            del _HELD[key]
            (p / LOCK_NAME).unlink(missing_ok=True)  # before unlocking: a newcomer then makes a file of its own
            os.close(fd)  # closing releases the flock
    except BaseException:
        if made and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
        raise


def _acquire(lock: Path) -> int:
    """An open file descriptor holding an exclusive flock on `lock`, or a one-line refusal naming the holder."""
    import fcntl

    for _ in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ChanscopeError(f"{lock.parent} is being written by {holder}; wait for it to finish, or pick "
                                 "another `out`") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino  # not removed by a holder releasing just now
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({' '.join(os.path.basename(a) for a in sys.argv[:3])})".encode(), 0)
            return fd
        os.close(fd)
    raise ChanscopeError(f"could not lock {lock.parent} (it changed hands three times); run the command again")


def locks_out(fn):
    """Run a workflow `fn(out, ...)` holding `folder_lock(out)`: one study command per folder at a time."""
    import functools

    @functools.wraps(fn)
    def wrapper(out, *args, **kwargs):
        with folder_lock(out):
            return fn(out, *args, **kwargs)
    return wrapper


def run_dir_of(model_path: str | Path) -> Path:
    """Where a model's outputs go by default: its run folder (or the folder of a model file); for a model
    named by a source (torchvision:NAME, a factory, ...), a folder under runs/ named after it."""
    p = Path(model_path)
    if p.exists() or ":" not in str(model_path):
        return p if p.is_dir() else p.parent
    from chanscope.models.sources import spec_label

    return Path("runs") / spec_label(str(model_path))


def run_config_of(model_path: str | Path) -> dict | None:
    """The training config recorded in the model's run folder (config.json), None where there is none (or the
    model is a source spec such as timm:NAME, not a path)."""
    if not (Path(model_path).exists() or ":" not in str(model_path)):
        return None
    try:
        return json.loads((run_dir_of(model_path) / "config.json").read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def resolve_threat_model(options, model_path: str | Path) -> None:
    """Fill `options.threat_model` (None: the run's own, else linf) and `options.eps` (None: the threat model's
    default)."""
    from chanscope.errors import check_threat_model

    own = check_threat_model((run_config_of(model_path) or {}).get("threat_model"))
    options.threat_model = check_threat_model(options.threat_model or own)
    options.eps = float(options.budget())


def data_of_run(model_path: str | Path, data: str | None = None, data_root: str | None = None,
                download: bool = False) -> ImageData:
    """The data named on the command line, else the run's own (config.json), else the embedded set."""
    from_run = None
    cfg = run_config_of(model_path) if data is None else None
    if cfg is not None:
        data, data_root = cfg.get("data"), data_root or cfg.get("data_root")
        from_run = run_dir_of(model_path) / "config.json"
    try:
        return load_data(data, data_root, download)
    except ChanscopeError as e:
        if from_run is None:
            raise
        raise ChanscopeError(f"{e} (this is the data {from_run} names: give `data` where it is now)") from None


def open_model_for(model_path: str | Path, data: ImageData, device: str | None = None,
                   model_options=None) -> nn.Module:
    """`chanscope.load_model(model_path, device, **options)`; a torchvision/timm head is as wide as the data's
    classes unless `num_classes` says otherwise."""
    from chanscope.models.sources import load_model

    opts = dict(vars(model_options)) if model_options is not None else {}
    if "num_classes" in opts and opts["num_classes"] is None:
        opts["num_classes"] = data.num_classes
    return load_model(model_path, device, **opts)


class Measurement(NamedTuple):
    """What a measurement of a model (eval, activations) runs on."""

    device: str
    data: ImageData
    net: nn.Module
    x: torch.Tensor  # the test images, in [0, 1]
    y: torch.Tensor
    class_note: str | None  # how the data's labels were matched to the model's classes, where it says


def open_measurement(model_path: str | Path, options, model_options, default_n: int | None = None) -> Measurement:
    """The device, the run's (or `options.data`'s) data, the model (memory layout set, for speed only), its
    classes matched to the data's, and `options.n` class-balanced test images the model is checked to fit.

    options: the RunOptions of the measurement; default_n: images where `options.n` is None, at most the test
    set (None: the whole test set)."""
    from chanscope.accel import distributed as dist_util
    from chanscope.accel.layout import set_layout

    device = str(dist_util.setup_device(options.device)[0])
    ds = data_of_run(model_path, options.data, options.data_root, options.download)
    check_classes(ds)
    for key in ("mean", "std"):
        vals = getattr(model_options, key, None) if model_options is not None else None
        if vals is not None and len(vals) not in (1, ds.channels):
            raise ChanscopeError(f"`{key}` has {len(vals)} values, data {ds.name!r} has {ds.channels} channels; give "
                                 f"one value per channel (e.g. `{key}`=" + ",".join(["0.5"] * ds.channels) + ")")
    net = set_layout(open_model_for(model_path, ds, device, model_options), "auto")
    what = f"model {str(model_path)!r}"
    note = match_classes(net, ds, options.classes_by, what)
    n = options.n if options.n is not None or default_n is None else min(default_n, len(ds.y_test))
    x, y = test_subset(ds, n, options.seed)
    check_fits(net, tuple(x.shape[1:]), ds.num_classes, what, f"data {ds.name!r}")
    return Measurement(device, ds, net, x, y, note)


def test_subset(data: ImageData, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n class-balanced test images (all of them when n is None or equals the test set)."""
    total = len(data.y_test)
    if n is None or n == total:
        return data.x_test.float().div(255), data.y_test.clone()
    if n < 1 or n > total:
        raise ChanscopeError(f"`n` {n} is outside 1..{total}, the size of the test set")
    idx = balanced_subset(data.y_test, n, data.num_classes, seed) if n >= data.num_classes else torch.arange(n)
    return data.x_test[idx].float().div(255), data.y_test[idx]


def writable_dir(path: str | Path) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChanscopeError(f"cannot create output folder {str(p)!r} ({e.strerror}); pick another `out`") from None
    if not os.access(p, os.W_OK):
        raise ChanscopeError(f"output folder {str(p)!r} is not writable; pick another `out`")
    return p


def check_fits(model: nn.Module, shape: tuple[int, ...], num_classes: int, what: str = "the model",
               data_name: str = "the data") -> None:
    """Fail in one line when `model` cannot take images of `shape`, was trained on another image size, or
    predicts another number of classes.

    Checked with one forward pass on a random image before any attack runs: a model of another data set
    otherwise fails deep inside an attack's loss (cross_entropy's 'Target 2 is out of bounds').
    """
    from chanscope.attacks.pgd import frozen_eval

    trained_on = getattr(model, "input_shape", None)  # checkpoints record it; the convolutions would not mind
    if trained_on is not None and tuple(trained_on) != tuple(shape):
        raise ChanscopeError(f"{what} was trained on images of shape {tuple(trained_on)}, {data_name} has "
                             f"{tuple(shape)}; give the data it was trained on (`data`)")
    probe = torch.rand(2, *shape, device=next(model.parameters()).device)
    try:
        with torch.no_grad(), frozen_eval(model):
            logits = model(probe)
    except RuntimeError as e:
        raise ChanscopeError(f"{what} does not take images of shape {tuple(shape)} from {data_name} "
                             f"({str(e).splitlines()[0][:120]}); give the data it was trained on (`data`)") from None
    if not torch.is_tensor(logits) or logits.ndim != 2 or not logits.is_floating_point():
        got = f"a {type(logits).__name__}" if not torch.is_tensor(logits) else f"shape {tuple(logits.shape)}"
        raise ChanscopeError(f"{what} returns {got}, not logits (images, classes); give a model whose forward "
                             "returns the logits (wrap it if it returns more)")
    k = logits.shape[1]
    if k != num_classes:
        raise ChanscopeError(f"{what} predicts {k} classes, {data_name} has {num_classes}; "
                             "give the data it was trained on (`data`)")


CLASSES_BY = ("name", "position")


def match_classes(model: nn.Module, data: ImageData, by: str = "name", what: str = "the model") -> str | None:
    """Make the data's labels mean the model's classes; returns a note when something was mapped.

    by="name": the data must name the classes the model was trained on (checkpoints record them); the same
    names in another order are mapped by name, other names are refused. by="position": label i of the data is
    taken as the model's class i, whatever the names, and rows carry the model's names. Models that record no
    class names (older checkpoints, the official code's) keep the data's labels and names.
    """
    if by not in CLASSES_BY:
        raise ChanscopeError(f"classes_by must be one of {', '.join(CLASSES_BY)}, not {by!r}")
    names = getattr(model, "classes", None)
    if not names or list(names) == list(data.classes) or len(names) != data.num_classes:
        return None  # nothing recorded, the same, or a count mismatch that check_fits reports
    if by == "position":
        note = f"data {data.name!r} classes {data.classes[:3]}... taken by position as {list(names)[:3]}..."
        data.classes = list(names)
        return note
    if sorted(names) == sorted(data.classes):
        perm = torch.tensor([list(names).index(c) for c in data.classes])
        data.y_test, data.y_train = perm[data.y_test], perm[data.y_train]
        data.classes = list(names)
        return f"data {data.name!r} lists the model's classes in another order; labels mapped by name"
    first = next((a, b) for a, b in zip(names, data.classes) if a != b)
    raise ChanscopeError(f"{what} was trained on classes {', '.join(names)}; data {data.name!r} has "
                         f"{', '.join(data.classes)} (first difference: {first[0]!r} vs {first[1]!r}); give the data "
                         "it was trained on, or take the labels by position (`classes_by`='position')")
