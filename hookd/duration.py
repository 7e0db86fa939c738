"""The one duration syntax of hookd: ``90d``, ``12h``, ``1d12h``, ``30m``, ``2w``, ``1y``.

Used by `hookd backfill --since` and by `hookd provision` (token validity, retention periods).
A year is 365 days, a week 7 days; there are no months (their length varies).
"""

from __future__ import annotations

import re

from hookd.errors import ConfigError

_DURATION_RE = re.compile(r"(?:\d+[smhdwy]\s*)+")
UNITS: dict[str, int] = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}


def is_duration(text: str) -> bool:
    return _DURATION_RE.fullmatch(text.strip()) is not None


def parse_duration(text: object, where: str) -> int:
    """A duration → seconds; ``where`` names the setting in the error."""
    if not isinstance(text, str) or not is_duration(text):
        raise ConfigError(
            f"{where}: invalid duration {text!r}: expected a number and a unit "
            "(s, m, h, d, w or y), e.g. 90d, 12h or 1d12h"
        )
    return sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)([smhdwy])", text))


def format_duration(seconds: int) -> str:
    """The largest whole unit (d, h, m, else s): 86400 → ``1d``, 5400 → ``90m``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
