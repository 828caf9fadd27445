"""One exception type for bad input, so the CLI can print a single line and exit non-zero."""

from __future__ import annotations

import math

__all__ = ["ChanscopeError", "check_eps", "check_positive_int", "check_positive", "check_range", "parse_int_list"]


class ChanscopeError(ValueError):
    """A user-facing problem: the message names what is wrong and how to fix it."""


def check_eps(eps: float, name: str = "eps") -> float:
    """Reject perturbation budgets outside (0, 1] (pixel units, images in [0, 1])."""
    if not (0.0 < eps <= 1.0):
        raise ChanscopeError(
            f"{name}={eps:g} is outside (0, 1]; give it in pixel units of [0,1] images, e.g. 8/255"
        )
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
