"""Parsing and printing of durations ("15m", "90s", "1h30m", 120)."""

from __future__ import annotations

import math
import re
from typing import Union

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Union[str, int, float]) -> float:
    """Seconds in a duration: a number of seconds, or units like "1h30m", "90s".

    Raises ValueError with the reason on anything else.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"15m\", not a boolean")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"a duration must be a finite number, got {value!r:.40}")
        if number < 0:
            raise ValueError("a duration cannot be negative")
        return number
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"15m\", got {type(value).__name__}")
    text = value.strip().lower()
    if not text:
        raise ValueError("empty duration")
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # float() reads "nan" and "inf"
            raise ValueError(f"a duration must be a finite number, got {value!r}")
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return seconds
    pos = 0
    total = 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"cannot read duration {value!r}: use a number of seconds or units s, m, h, d (\"15m\")")
    return total


def format_duration(seconds: float) -> str:
    """A short human form: 900 -> "15m", 5400 -> "1h30m", 1.5 -> "1.5s"."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    s = int(round(seconds))
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            n, s = divmod(s, size)
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"
