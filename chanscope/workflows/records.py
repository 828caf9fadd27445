"""The one check of "was this folder made with these options?", for every kind of study folder (a study, a
series, a comparison): its record's options against the ones given, refused in one line that names each one
that differs. Nothing is written before the check."""

from __future__ import annotations

from typing import Any

from chanscope.errors import ChanscopeError

__all__ = ["made_with", "refuse_other_options"]

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
