"""The socket's request handlers: one coroutine per op, typed request in, typed reply out."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hookd import __version__, metrics
from hookd import protocol as proto
from hookd.config import Config
from hookd.daemon.events import Progress
from hookd.daemon.server import Handler, Route
from hookd.daemon.supervisor import Liveness
from hookd.gcroots import GcRoots
from hookd.nix import Nix
from hookd.pusher import TargetWorker
from hookd.queue import Queue, TargetCounts

if TYPE_CHECKING:
    from hookd.tokens import TokenStore

BACKFILL_CHUNK = 500


def counts(c: TargetCounts | None) -> proto.Counts:
    if c is None:
        return {"pending": 0, "done": 0, "failed": 0, "parked": 0}
    return {"pending": c.pending, "done": c.done, "failed": c.failed, "parked": c.parked}


@dataclass
class Handlers:
    config: Config
    queue: Queue
    nix: Nix
    gcroots: GcRoots
    workers: Sequence[TargetWorker]
    tokens: TokenStore | None
    progress: Progress
    liveness: Liveness
    wake_resolver: Callable[[], None]
    import_spool: Callable[[], Awaitable[int]]
    wake_workers: Callable[[], None]
    started: float

    def routes(self) -> dict[str, Route]:
        """The table the socket server dispatches on: op name -> handler."""
        return {
            proto.Ping.op: Handler(proto.Ping, self.ping),
            proto.Enqueue.op: Handler(proto.Enqueue, self.enqueue),
            proto.Status.op: Handler(proto.Status, self.status),
            proto.Wait.op: Handler(proto.Wait, self.wait),
            proto.Retry.op: Handler(proto.Retry, self.retry),
            proto.Drop.op: Handler(proto.Drop, self.drop),
            proto.Backfill.op: Handler(proto.Backfill, self.backfill),
        }

    async def ping(self, request: proto.Ping) -> proto.PingReply:
        return {"version": __version__, "pid": os.getpid()}

    async def enqueue(self, request: proto.Enqueue) -> proto.EnqueueReply:
        fresh = await self.queue.add_request(request.drv_path, request.out_paths, request.source)
        metrics.record_requests("socket", request.source)
        self.wake_resolver()
        return {"queued": fresh}

    async def wait(self, request: proto.Wait) -> proto.WaitReply:
        deadline = time.monotonic() + request.timeout
        while True:
            if await self.settled(request.paths):
                return {"drained": True, **(await self.summary(request.paths))}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"drained": False, **(await self.summary(request.paths))}
            await self.progress.wait(min(remaining, 1.0))

    async def retry(self, request: proto.Retry) -> proto.RetryReply:
        n = await self.queue.retry(request.paths)
        self.wake_workers()
        return {"retried": n}

    async def drop(self, request: proto.Drop) -> proto.DropReply:
        return {"dropped": await self.queue.drop(request.paths)}

    async def backfill(self, request: proto.Backfill) -> proto.BackfillReply:
        infos = await asyncio.to_thread(self.nix.paths_registered_since, request.since)
        candidates = [
            i.path
            for i in infos
            if (i.ultimate or not i.signatures) and not i.path.endswith(".drv")
        ]
        chunks = range(0, len(candidates), BACKFILL_CHUNK)
        added = await self.queue.add_requests(
            (None, candidates[i : i + BACKFILL_CHUNK], "backfill") for i in chunks
        )
        self.wake_resolver()
        return {"scanned": len(infos), "queued": len(candidates), "requests": added}

    # -- queue state -------------------------------------------------------------------

    async def settled(self, paths: Sequence[str] | None) -> bool:
        # A spooled request is handed over too: a file that arrived after the watcher's last
        # look (while the daemon started, say) is imported now rather than at the next rescan.
        if await self.import_spool():
            return False
        if await self.queue.pending_requests():
            return False
        if paths is not None:
            return await self.queue.is_settled(paths)
        active = {w.target.id for w in self.workers}
        return all(c.pending == 0 for c in await self.queue.counts() if c.target in active)

    async def summary(self, paths: Sequence[str] | None) -> proto.WaitReply:
        if paths is None:
            return {"targets": {c.target: counts(c) for c in await self.queue.counts()}}
        out: dict[str, dict[str, proto.PathState]] = {}
        for item in await self.queue.items_for(paths):
            out.setdefault(item.path, {})[item.target] = {
                "state": item.state,
                "reason": item.reason,
            }
        return {"paths": out}

    async def status(self, request: proto.Status | None = None) -> proto.StatusReply:
        by_target = {c.target: c for c in await self.queue.counts()}
        now = time.time()
        targets: list[proto.TargetStatus] = []
        for w in self.workers:
            c = by_target.get(w.target.id)
            targets.append(
                {
                    "id": w.target.id,
                    **counts(c),
                    "oldest_pending_age": round(now - c.oldest_pending, 1)
                    if c and c.oldest_pending
                    else None,
                    "breaker": w.breaker.state,
                    "busy": w.busy,
                    "last_success": w.stats.last_success,
                    "last_error": w.stats.last_error,
                    "pushed_paths": w.stats.pushed_paths,
                    "pushed_bytes": w.stats.pushed_bytes,
                }
            )
        problems: list[proto.Problem] = [
            {
                "path": i.path,
                "target": i.target,
                "state": i.state,
                "attempts": i.attempts,
                "reason": i.reason,
            }
            for i in await self.queue.problems()
        ]
        result: proto.StatusReply = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(now - self.started, 1),
            "socket": str(self.config.socket),
            "requests_pending": await self.queue.pending_requests(),
            "done_last_minute": await self.queue.done_since(now - 60),
            "targets": targets,
            "problems": problems,
            "gc_roots": await asyncio.to_thread(self.gcroots.count),
            "liveness": self.liveness.report(),
        }
        if not self.config.targets and self.config.default_public_key_file.exists():
            result["default_cache"] = {
                "url": f"file://{self.config.default_cache_dir}",
                "public_key": self.config.default_public_key_file.read_text().strip(),
            }
        if self.tokens is not None:
            checks = {name: self.tokens.check(name) for name in self.config.servers}
            result["token_problems"] = {name: issues for name, issues in checks.items() if issues}
        return result
