"""Scrubbing secrets from text that is stored or shown (status, logs, the queue's reasons).

Text from a server is untrusted: it may echo the request's token, whole or in pieces (a proxy's
error page quoting the ``Authorization`` header, a JSON body holding just the signature). So
``redact`` removes every known secret, every run of text that shares a window of
``FRAGMENT`` (16) characters with a known secret, and anything shaped like a JWT. ``clean``
does that FIRST and only then shortens the text: cutting first could split a secret so that
neither half is recognised any more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
FRAGMENT = 16
MASK = "***"
SHOWN = 200  # characters of server text kept in a message, after redaction
# Text longer than this is cut before it is scanned (the scan is linear, but a 20 MB error
# message must not cost 20 MB of work per log line); a secret straddling this cut is gone
# from what is shown because SHOWN is far smaller.
SCAN_LIMIT = 64 * 1024


def _windows(secrets: Iterable[str]) -> frozenset[str]:
    grams: set[str] = set()
    for s in secrets:
        if len(s) >= FRAGMENT:
            grams.update(s[i : i + FRAGMENT] for i in range(len(s) - FRAGMENT + 1))
    return frozenset(grams)


class Redactor:
    """Holds the secrets to scrub; ``add`` more at any time (a rotated token)."""

    def __init__(self, secrets: Iterable[str] = (), *, mask: str = MASK) -> None:
        self.mask = mask
        self._secrets: set[str] = set()
        self._grams: frozenset[str] = frozenset()
        for s in secrets:
            self.add(s)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"

    def add(self, secret: str | None) -> None:
        if secret and secret not in self._secrets:
            self._secrets.add(secret)
            self._grams = _windows(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` without any secret, fragment of one (>= 16 characters) or JWT."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, self.mask)
        text = JWT_RE.sub(self.mask, text)
        if self._grams and len(text) >= FRAGMENT:
            text = self._drop_fragments(text)
        return text

    def _drop_fragments(self, text: str) -> str:
        covered: list[tuple[int, int]] = []
        grams = self._grams
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in grams:
                end = i + FRAGMENT
                if covered and i <= covered[-1][1]:
                    covered[-1] = (covered[-1][0], end)
                else:
                    covered.append((i, end))
        if not covered:
            return text
        out: list[str] = []
        last = 0
        for start, end in covered:
            out.append(text[last:start])
            out.append(self.mask)
            last = end
        out.append(text[last:])
        return "".join(out)

    def clean(self, text: str, limit: int = SHOWN) -> str:
        """Server text made fit to store or show: whitespace collapsed, redacted, THEN cut to
        ``limit`` characters."""
        return shorten(self.redact(" ".join(text[:SCAN_LIMIT].split())), limit)


def shorten(text: str, limit: int = SHOWN) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
