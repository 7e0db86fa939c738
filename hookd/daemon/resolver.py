"""The resolver: turns queued requests (a .drv and/or output paths) into filtered, pinned items."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from hookd.backoff import Backoff
from hookd.daemon.events import wait_event
from hookd.errors import NixError
from hookd.filters import Filter
from hookd.gcroots import GcRoots
from hookd.nix import Nix
from hookd.queue import Queue, Request

log = structlog.get_logger("hookd.daemon")

RESOLVE_BATCH = 256
IDLE_RESCAN = 30.0


def _gone(error: NixError) -> bool:
    """Whether nix said the path is not in the store (rather than failing for another reason)."""
    text = str(error)
    return "not valid" in text or "does not exist" in text or "No such file" in text


class Resolver:
    def __init__(
        self,
        *,
        queue: Queue,
        nix: Nix,
        filter: Filter,
        gcroots: GcRoots,
        target_ids: Callable[[], Sequence[str]],
        backoff: Backoff,
        stopping: asyncio.Event,
        on_resolved: Callable[[], None],
    ) -> None:
        self.queue = queue
        self.nix = nix
        self.filter = filter
        self.gcroots = gcroots
        self.target_ids = target_ids
        self.backoff = backoff
        self.stopping = stopping
        self.on_resolved = on_resolved
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            requests = await self.queue.due_requests(RESOLVE_BATCH)
            # Concurrently: their queue writes then share one transaction (group commit).
            await asyncio.gather(*(self.resolve(r) for r in requests))
            if requests:
                self.on_resolved()
                if len(requests) == RESOLVE_BATCH:
                    continue
            await wait_event(self.wake, self.stopping, IDLE_RESCAN)

    async def resolve(self, request: Request) -> None:
        outs = list(request.out_paths)
        fixed = False
        try:
            if request.drv_path:
                drv_outs, fixed = await asyncio.to_thread(
                    self.nix.derivation_outputs, request.drv_path
                )
                outs = outs or drv_outs
        except NixError as e:
            if _gone(e):
                outs = await self._without_derivation(request)
                if not outs:
                    await self.queue.drop_request(request.id)
                    return
            else:
                delay = self.backoff.delay(request.attempts)
                log.warning("resolve.retry", drv=request.drv_path, seconds=delay, error=str(e))
                await self.queue.defer_request(request.id, time.time() + delay)
                return
        keep, skipped = [], {}
        for path in outs:
            reason = self.filter.skip_reason(path, fixed_output=fixed)
            if reason:
                skipped[path] = reason
                log.info("skip", path=path, reason=reason)
            else:
                keep.append(path)
        await asyncio.to_thread(self.gcroots.pin, keep)
        added = await self.queue.resolve_request(request.id, keep, self.target_ids(), skipped)
        log.debug(
            "resolved", drv=request.drv_path, paths=keep, new_items=added, source=request.source
        )

    async def _without_derivation(self, request: Request) -> list[str]:
        """The .drv was garbage-collected (keep-derivations = false): its outputs may well still
        be there (the hook sent them). Keep those that are valid; name each one that is gone."""
        if not request.out_paths:
            log.warning(
                "resolve.dropped",
                drv=request.drv_path,
                reason="derivation no longer in the store and the request names no outputs",
            )
            return []
        try:
            infos = await asyncio.to_thread(self.nix.path_info, request.out_paths)
        except NixError as e:
            # Not knowing is not "gone": keep them all; the pusher re-checks validity per path.
            log.warning("resolve.validity_unknown", drv=request.drv_path, error=str(e))
            return list(request.out_paths)
        valid = {i.path for i in infos}
        for path in request.out_paths:
            if path not in valid:
                log.warning(
                    "resolve.dropped",
                    drv=request.drv_path,
                    path=path,
                    reason="output no longer in the store",
                )
        log.info(
            "resolve.derivation_gone",
            drv=request.drv_path,
            kept=[p for p in request.out_paths if p in valid],
        )
        return [p for p in request.out_paths if p in valid]
