"""Checkpoints that rebuild their own model, load with weights_only=True, and are written atomically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from chanscope.errors import ChanscopeError
from chanscope.io import atomic_torch_save
from chanscope.models import create_model
from chanscope.models.official import is_official_state_dict, load_official

__all__ = ["save_checkpoint", "read_checkpoint", "model_from_checkpoint", "FORMAT", "resolve",
           "archive_kind"]

FORMAT = "chanscope-checkpoint"


def save_checkpoint(path: Path, model: torch.nn.Module, **extra: Any) -> None:
    """Write {format, arch, model_kwargs, state_dict, **extra} atomically (temp file + rename)."""
    model = getattr(model, "module", model)  # DDP
    obj = {
        "format": FORMAT,
        "format_version": 1,
        "arch": model.arch,
        "model_kwargs": model.model_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    atomic_torch_save(obj, Path(path))


def resolve(path: str | Path) -> Path:
    """A checkpoint file: the path itself, or a run folder's best.pt (else last.pt)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise ChanscopeError(f"run folder {str(p)!r} has no best.pt or last.pt; train it first or name a .pt file")
    if not p.exists():
        raise ChanscopeError(f"checkpoint {str(p)!r} does not exist; check the path")
    return p


_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format; the legacy format starts as a pickle
_FOREIGN_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


_KINDS = {"export": "an exported program (torch.export.save)", "torchscript": "a TorchScript file (torch.jit.save)"}


def archive_kind(p: Path) -> str | None:
    """'torchscript' or 'export' for the zip archives torch.jit.save and torch.export.save write (torch.load
    cannot read them as checkpoints), else None."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    parts = {n.split("/")[1] for n in names if n.count("/") >= 1}  # entries sit under one top folder
    if "archive_format" in parts or "models" in parts:
        return "export"
    if "constants.pkl" in parts or "code" in parts:
        return "torchscript"
    return None


def _unreadable(p: Path, e: Exception) -> str:
    """One line saying why torch.load failed: torch's own messages run to paragraphs."""
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as oe:
        return f"cannot read checkpoint {str(p)!r} ({oe.strerror}); check the file's permissions"
    if not head.startswith(_TORCH_SAVE_MAGIC):
        return (f"{str(p)!r} is not a readable checkpoint: it was not written by torch.save (it starts with "
                f"{head!r}); name a run's best.pt or last.pt")
    foreign = _FOREIGN_GLOBAL.search(str(e))
    if foreign:
        return (f"{str(p)!r} is not a readable checkpoint: it pickles {foreign.group(1)}, and chanscope only loads "
                "tensors and plain containers (weights_only); save it as torch.save(model.state_dict(), path)")
    text = str(e).strip()
    first = text.splitlines()[0].split(". ")[0][:120] if text else type(e).__name__
    return (f"{str(p)!r} is not a readable checkpoint (truncated or corrupt: {first}); retrain or copy it again")


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True, turning every failure into a one-line error."""
    p = resolve(path)
    kind = archive_kind(p)  # torch.load would hand a TorchScript file to torch.jit.load
    if kind:
        raise ChanscopeError(f"{str(p)!r} is {_KINDS[kind]}, not a checkpoint or state_dict; `model` opens it as "
                             "a model, where weights are asked for save them with torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (a torn file fails in many ways inside the unpickler)
        raise ChanscopeError(_unreadable(p, e)) from None
    if not isinstance(obj, dict):
        raise ChanscopeError(f"{str(p)!r} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def model_from_checkpoint(obj: dict, origin: str = "checkpoint") -> torch.nn.Module:
    if obj.get("format") == FORMAT:
        model = create_model(obj["arch"], **obj["model_kwargs"])
        try:
            model.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise ChanscopeError(f"{origin}: weights do not fit arch {obj['arch']!r} "
                                 f"({str(e).splitlines()[0]})") from None
        if obj.get("input_shape"):  # (C, H, W) of the training images; absent before 2026-11-27
            model.input_shape = tuple(int(v) for v in obj["input_shape"])
        if obj.get("classes"):  # the training data's class names; absent before 2026-12-01
            model.classes = [str(c) for c in obj["classes"]]
        return model
    sd = obj.get("state_dict", obj)
    if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()) \
            and is_official_state_dict(sd):
        return load_official(sd)
    raise ChanscopeError(f"{origin} is not a chanscope checkpoint nor an official CIFS state_dict; "
                         "give a best.pt/last.pt written by `chanscope train`")
