"""Units and names in hermes-flare.yaml: durations, sizes, names, schedules.

Plain functions without pydantic, so code that only needs to read a
duration or check a name (the CLI, status output) stays light.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_FULL = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"


def parse_duration(value: Any) -> float:
    """``"1h30m"`` -> 5400.0 seconds; plain numbers are seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 1h or 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _DURATION_FULL.match(text):
            return float(sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))
    raise ValueError(f"invalid duration {value!r}: use a number with a unit, such as 30s, 15m, 1h or 7d")


def format_duration(seconds: float) -> str:
    """Shortest exact spelling of a duration, for JSON and docs."""
    if seconds == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]i?[bB]?|[bB])?$"


def parse_size(value: Any) -> int:
    """``"512MiB"`` -> bytes; ``KiB``/``MiB`` are binary, ``KB``/``MB`` decimal."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB, 1MiB or 2GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if m:
            number, unit = float(m.group(1)), m.group(2).lower()
            if "i" in unit:
                return int(number * 1024 ** "bkmgt".index(unit[0]))
            return int(number * _SIZE_UNITS[unit.rstrip("b") if unit != "b" else "b"])
    raise ValueError(f"invalid size {value!r}: use bytes or a unit, such as 64KiB, 1MiB or 2GiB")


def human_bytes(n: float | None) -> str:
    """A size as people read it (``12.9 KiB``): the CLI's and the operator bot's answers."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 40 lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    return value


_EVERY_RE = re.compile(r"^every\s+(.+)$", re.IGNORECASE)


def check_schedule(value: str) -> str:
    """A cron expression (5 fields) or ``every 2h``."""
    text = value.strip()
    m = _EVERY_RE.match(text)
    if m:
        if parse_duration(m.group(1)) < 1:
            raise ValueError("an 'every' schedule must be at least 1s")
        return text
    from croniter import croniter

    if not croniter.is_valid(text):
        raise ValueError(
            f"invalid schedule {value!r}: use a cron expression such as '0 9 * * 1-5' or 'every 2h'"
        )
    return text
