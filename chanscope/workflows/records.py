"""A study folder's record (`StudyRecord`: pipeline.json, series.json, compare.json, ablation.json, a seed
process's record) and the one check of "was this folder made with these options?", for every kind of study
folder: its record's options against the ones given, refused in one line that names each one that differs.
Nothing is written before the check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chanscope.errors import ChanscopeError
from chanscope.io import atomic_write_json
from chanscope.scales import SCALES, Scale

__all__ = ["StudyRecord", "made_with", "refuse_other_options", "study_options"]


@dataclass
class StudyRecord:
    """What a study folder records: each finished stage (name -> command, kind, run, seed, seconds), the
    options it was made with, and what else it keeps (`notes`: the scale's settings, versions, and the keys of
    older layouts, as written). `load` a folder's (a new one: empty), `save` it atomically."""

    path: Path
    stages: dict[str, dict] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> StudyRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ChanscopeError(f"{path} is not valid JSON; delete it and run again (finished stages are found "
                                 "again from their run folders)") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path = "record.json") -> StudyRecord:
        """A record of the layout the files have (`stages`, `options`, anything else)."""
        data = dict(data)
        stages, options = data.pop("stages", None) or {}, data.pop("options", None) or {}
        return cls(Path(path), stages, options, data)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, **self.notes, **({"options": self.options} if self.options else {})}

    def save(self) -> None:
        atomic_write_json(self.path, self.to_dict())

    def made_with(self, legacy_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        """The options the folder was made with ({} for a new one); `legacy_keys`: where older versions kept
        them at the top level instead."""
        return made_with({"options": self.options}, {k: self.notes[k] for k in legacy_keys if k in self.notes})

# options that records of older versions did not keep, with the value those versions always used
_BEFORE_RECORDED = {"threat_model": "linf"}


def made_with(record: dict, legacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options a folder's record says it was made with ({} for a new folder), with what older versions did
    not record filled in (`legacy`: a record of another layout's keys, e.g. a study's early top-level ones)."""
    made = dict(record.get("options") or legacy or {})
    return {**_BEFORE_RECORDED, **made} if made else {}


def refuse_other_options(made: dict[str, Any], given: dict[str, Any], what: str,
                         fix: str = "rerun with its options, or pick another `out`") -> None:
    """One line naming every option in `given` that the folder (`what`: study, series, comparison) recorded
    with another value; options the folder did not record are new and pass."""
    diff = [f"{k} {made[k]!r} (given {v!r})" for k, v in given.items() if k in made and made[k] != v]
    if diff:
        raise ChanscopeError(f"this {what} folder was made with {', '.join(diff)}; {fix}")


_STUDY_DEFAULTS = {"scale": "smoke", "data": "embedded", "seed": 0, "bf16": None, "with_cas": False,
                   "cifs_scratch": True, "seeds": 1, "threat_model": "linf"}
_ADDITIVE = ("with_cas", "cifs_scratch", "seeds")  # may change later: they add models (or leave some out)


def _data_key(data: str | None) -> str:
    """The data as recorded: a path resolved (a study may be continued from another folder), a name as is."""
    if not data:
        return "embedded"
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else data


def study_options(record: StudyRecord, given: dict[str, Any]) -> dict[str, Any]:
    """The options a study runs with: those given, else those the folder was made with, else the defaults.

    Raises a one-line error naming every option that differs from the folder's (nothing is written): a
    study's models, evaluations and figures all come from one data set, scale, seed and recipe.
    """
    made = record.made_with(("scale", "data", "seed", "bf16", "with_cas"))  # older records: at the top level
    if "data" in made:
        made["data"] = _data_key(made["data"])
    if "data" in given and given["data"] is not None:
        given = {**given, "data": _data_key(given["data"])}
    opts = {k: given[k] if given.get(k) is not None else made.get(k, default) for k, default in _STUDY_DEFAULTS.items()}
    if record.stages:
        asked = {k: g for k, g in given.items() if k in _STUDY_DEFAULTS and g is not None
                 and not (k in _ADDITIVE and g)}
        refuse_other_options(made, asked, "study", "rerun with its options to continue it (or leave them out), "
                             "or pick another `out` for a new study")
    settings = record.notes.get("scale_settings")
    if record.stages and settings is not None and not _same_settings(settings, SCALES[opts["scale"]]):
        raise ChanscopeError(f"scale {opts['scale']!r} has other settings than when this study folder was made "
                             "(another chanscope version); pick another `out` for a new study")
    return opts


def _same_settings(recorded: dict[str, Any], scale: Scale) -> bool:
    """Whether a study folder's recorded scale settings are this scale's (records of older versions also
    named a preset; the training recipe itself is compared run by run)."""
    now = json.loads(json.dumps(scale.settings()))
    return all(recorded[k] == now[k] for k in now if k in recorded)
