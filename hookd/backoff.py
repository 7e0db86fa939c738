"""The one backoff policy: exponential growth from ``minimum``, capped at ``maximum``, with
jitter, never shorter than a server's ``Retry-After``. Every retry loop in hookd uses it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    minimum: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th consecutive failure (0-based: the first
        failure waits about ``minimum``). Jitter spreads a fleet's retries over [½, 1] of the
        exponential step so that hosts that failed together do not retry together."""
        base = min(self.maximum, self.minimum * 2.0 ** min(max(attempts, 0), 30))
        jittered = base * self.rng.uniform(0.5, 1.0)
        return min(self.maximum, max(jittered, retry_after or 0.0))
