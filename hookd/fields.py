"""The one reader of values in hookd's YAML files (the daemon's config and the provision spec).

Each check raises a ConfigError naming the file, the key and what is expected. The two files
were written with two message forms that tests and users rely on, so the reader speaks both:

- ``style="key"`` (hookd/config.py): ``FILE: key 'upload.concurrency': expected ..., got 3``,
  unknown keys all named at once with the sorted known keys;
- ``style="place"`` (hookd/provision/spec.py): ``FILE: caches[0] (team): priority: expected
  ..., got str 'x'``, an unknown key with a "did you mean" and the known keys in their order.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from hookd.errors import ConfigError

MAX_NUMBER = 1e12  # the largest number any setting takes (seconds, sizes, counts)
Style = Literal["key", "place"]
_UNSET: Any = object()  # fail() without a value to show


def text(value: object) -> str:
    """str() that cannot fail: YAML hex/octal ints may exceed Python's int-to-str digit limit."""
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


def show(value: object) -> str:
    """repr() that cannot fail and stays short enough for one line."""
    try:
        shown = repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"
    return shown if len(shown) <= 200 else shown[:200] + "…"


def kind(value: object) -> str:
    """The value with its type, for the place style: ``str 'x'``, ``nothing``."""
    return "nothing" if value is None else f"{type(value).__name__} {show(value)}"


class Fields:
    """Walks a YAML mapping of the file ``source``; ``key`` arguments are relative to it."""

    def __init__(self, source: str, style: Style = "key") -> None:
        self.source = source
        self.style = style

    def where(self, key: str) -> str:
        """The file and key as messages start: ``FILE: key 'a.b'`` or ``FILE: a.b``."""
        if self.style == "key":
            return f"{self.source}: key '{key}'"
        return f"{self.source}: {key}" if key else self.source

    def fail(self, key: str, expected: str, got: object = _UNSET) -> ConfigError:
        if got is _UNSET or (got is None and self.style == "key"):
            shown = ""
        else:
            shown = f", got {show(got) if self.style == 'key' else kind(got)}"
        return ConfigError(f"{self.where(key)}: expected {expected}{shown}")

    def mapping(self, value: object, key: str, allowed: Collection[str]) -> dict[str, Any]:
        """A mapping with only ``allowed`` keys; nothing (None) is the empty mapping."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(
                key, "a mapping", type(value).__name__ if self.style == "key" else value
            )
        unknown = sorted({text(k) for k in value} - set(allowed))
        if not unknown:
            return value
        if self.style == "key":
            where = f"'{key}'" if key else "the top level"
            raise ConfigError(
                f"{self.source}: unknown key(s) {', '.join(unknown)} in {where}; "
                f"known keys: {', '.join(sorted(allowed))}"
            )
        first = next(text(k) for k in value if text(k) not in allowed)
        close = difflib.get_close_matches(first, list(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{self.where(key)}: unknown key '{first}'{hint}; known keys: {', '.join(allowed)}"
        )

    def items(self, value: object, key: str, expected: str) -> list[object]:
        """A YAML list (nothing is the empty list); ``expected`` says of what."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, expected, value)
        return value

    def string(self, value: object, key: str) -> str:
        """A string with something in it besides white space; surrounding white space dropped
        in the place style (the provision spec always did)."""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        return value.strip() if self.style == "place" else value

    def strings(self, value: object, key: str, *, single: bool = False) -> tuple[str, ...]:
        """A list of strings (nothing is the empty list). Numbers count as their text (a uid in
        allowed_users); with ``single`` a lone string is a list of one (``permissions: write``)."""
        if value is None:
            return ()
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise self.fail(key, "a list of strings", value)
        items = tuple(text(v) for v in value)
        too_large = any(i.startswith("<") and i.endswith("too large to show>") for i in items)
        if too_large or (self.style == "place" and not all(items)):
            raise self.fail(key, "a list of strings", value)
        return items

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def integer(
        self, value: object, key: str, low: int, high: int, expected: str = "an integer"
    ) -> int:
        """An integer in [low, high] (YAML's true/false are not integers)."""
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, expected, value)
        return value

    def number(self, value: object, key: str, *, minimum: float = 0, integer: bool = False) -> Any:
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            bad = True
        else:  # math.isfinite only for floats: a huge int would overflow the conversion
            bad = (isinstance(value, float) and not math.isfinite(value)) or value < minimum  # type: ignore[operator]
        if bad:
            what = "an integer" if integer else "a number"
            raise self.fail(key, f"{what} >= {minimum}", value)
        if isinstance(value, int | float) and value > MAX_NUMBER:  # a 5000-digit int breaks repr
            raise self.fail(key, f"a number <= {MAX_NUMBER:g}")
        return value

    def regexes(self, value: object, key: str) -> tuple[str, ...]:
        items = self.strings(value, key)
        for i, pattern in enumerate(items):
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as e:
                raise self.fail(
                    f"{key}[{i}]", f"a valid regular expression ({e})", pattern
                ) from None
        return items

    def path(self, value: object, key: str) -> Path:
        given = self.string(value, key)
        if not given.startswith("/"):
            raise self.fail(key, "an absolute path", given)
        return Path(given)
