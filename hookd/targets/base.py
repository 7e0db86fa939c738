"""The interface every target implements. The pusher only ever sees this."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hookd.models import PathInfo, PushReport


class Target(Protocol):
    """One (server, cache) or one store URL.

    ``push`` receives a closure (every path it needs, references included; the pusher has
    already dropped paths this target is known to have). It returns a PushReport with one
    entry per path in uploaded/present/upstream/failed. Per-path failures go in
    ``report.failed`` as PushError subclasses; a failure that stops the whole batch (server
    down, token refused, cache missing) is raised as a PushError subclass. Classification
    happens here, once; the pusher acts on the class.
    """

    @property
    def id(self) -> str: ...

    @property
    def server_key(self) -> str:
        """Paths sharing a server share a circuit breaker."""
        ...

    async def push(self, closure: Sequence[PathInfo]) -> PushReport: ...

    async def check(self) -> str:
        """Reach the target and return a one-line description; raise PushError if unusable."""
        ...

    async def close(self) -> None: ...
