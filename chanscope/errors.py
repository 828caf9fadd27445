"""One exception type for bad input, so the CLI can print a single line and exit non-zero."""

from __future__ import annotations

import math

__all__ = ["ChanscopeError", "check_eps", "check_threat_model", "THREAT_MODELS", "DEFAULT_EPS",
           "check_positive_int", "check_positive", "check_range", "parse_int_list"]


class ChanscopeError(ValueError):
    """A user-facing problem: the message names what is wrong and how to fix it."""


THREAT_MODELS = ("linf", "l2")
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}  # on [0, 1] images: the paper's L-inf budget, RobustBench's L2
_EPS_RANGE = {"linf": (1.0, "8/255"), "l2": (64.0, "0.5")}  # largest sane budget, an example


def check_threat_model(name: str | None) -> str:
    """'linf' or 'l2' (any case: Linf, L2 as RobustBench writes them); None is linf."""
    t = "linf" if name is None else str(name).strip().lower()
    if t not in THREAT_MODELS:
        raise ChanscopeError(f"unknown threat model {name!r}; use linf or l2 (e.g. --threat-model l2 --eps 0.5)")
    return t


def check_eps(eps: float, name: str = "eps", norm: str = "linf", warn: bool = True) -> float:
    """Reject budgets outside the threat model's sane range (images in [0, 1]: L-inf (0, 1], L2 (0, 64]); warn
    about an L2 budget under 0.1, the size of an L-inf one (8/255 = 0.031), which is allowed but rarely meant."""
    top, example = _EPS_RANGE[check_threat_model(norm)]
    if not (0.0 < eps <= top):
        raise ChanscopeError(f"{name}={eps:g} is outside (0, {top:g}] for {norm}; give it in units of [0,1] "
                             f"images, e.g. {example}")
    if warn and norm == "l2" and eps < 0.1:
        import warnings

        warnings.warn(f"{name}={eps:g} under L2 is an L-infinity-sized budget (8/255 = 0.031); L2 studies "
                      "on CIFAR-10 use 0.5", stacklevel=3)
    return float(eps)


def check_positive_int(value: int, name: str) -> int:
    if value < 1:
        raise ChanscopeError(f"{name}={value} must be at least 1")
    return int(value)


def parse_fraction(text: str | float) -> float:
    """Parse '8/255', '0.03' or a float; raise a one-line error otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        raise ChanscopeError(f"cannot read {text!r} as a number; write e.g. 8/255 or 0.0314") from None


def check_positive(value: float, name: str, example: str) -> float:
    """Reject zero, negatives, NaN and inf: NaN passes `value <= 0`."""
    if not 0 < value < math.inf:
        raise ChanscopeError(f"{name}={value} must be a positive number, e.g. {example}")
    return float(value)


def check_range(value: float, name: str, low: float, high: float = math.inf, *, closed_high: bool = False,
                example: str = "") -> float:
    """Reject NaN and values outside [low, high) (or [low, high] with closed_high): NaN passes `x < low`."""
    if not (low <= value and (value <= high if closed_high else value < high)):  # NaN compares False
        span = f"[{low:g}, {high:g}{']' if closed_high else ')'}" if math.isfinite(high) else f"at least {low:g}"
        raise ChanscopeError(f"{name}={value:g} must be {'in ' if math.isfinite(high) else ''}{span}"
                             + (f", e.g. {example}" if example else ""))
    return float(value)


def parse_int_list(text: str, name: str, example: str) -> list[int]:
    """'75,90' -> [75, 90]; a one-line error for anything else."""
    try:
        return [int(v) for v in str(text).replace("+", ",").split(",") if v.strip()]
    except ValueError:
        raise ChanscopeError(f"{name} {text!r} is not a list of whole numbers; write e.g. {example}") from None
