"""How every surface words counts and metric values, so they read the same everywhere."""

from __future__ import annotations

import math


def plural(count: int | float, noun: str, many: str | None = None) -> str:
    """`count` and its noun, singular only for 1: "1 round", "0 sites", "1.5 days", "2 entries"
    (many="entries"). A float is shown as `:g` shows it."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {noun if count == 1 else many or noun + 's'}"


MISSING = "missing"


def metric(value: float | None) -> str:
    """A metric value with 4 significant digits, and every digit of its whole part below 1e15:
    0.00075 stays 0.00075, 0.912345 is 0.9123, 123456.7 is 123457 (a count never reads 1.235e+05);
    None or a value that is not finite (NaN: missing in a DataFrame) is "missing"."""
    if value is None or not math.isfinite(value):
        return MISSING
    whole = len(str(round(abs(value)))) if abs(value) < 1e15 else 0
    return f"{value:.{max(4, whole)}g}"
