"""Progress notification: who made progress, and waiting for it (or for a stop request)."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, stopping: asyncio.Event, timeout: float | None) -> None:
    """Wait for ``event``, for a stop request or for ``timeout`` seconds, whichever comes first."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Progress:
    """A generation counter that wakes every waiter when queue state moved (a push, a resolve)."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        self.generation = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> None:
        await wait_event(self._event, self.stopping, timeout)
