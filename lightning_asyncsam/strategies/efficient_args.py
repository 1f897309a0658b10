"""Argument checks shared by ESAM, AE-SAM and MESA: a bad value raises a ValueError naming it."""

from __future__ import annotations

import math
from typing import Any


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, or a ValueError naming ``name`` and the allowed interval.

    Example::

        >>> check_real("beta", 0.5, 0.0, 1.0, low_open=True)
        0.5
        >>> check_real("beta", 0.0, 0.0, 1.0, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: beta=0.0 is not allowed: expected a finite number in (0.0, 1.0]
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is not allowed: expected a finite number in {interval}")
    return float(value)


def check_count(name: str, value: Any) -> int:
    """``value`` as an int >= 0, or a ValueError naming ``name``.

    Example::

        >>> check_count("start_epoch", 5)
        5
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= 0")
    return value


__all__ = ["check_count", "check_real"]
