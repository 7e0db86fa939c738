"""Closure → per-target plan → push, and the retry policy: the one place failures are acted on.

Each target has its own worker, so a dead server never stalls the others; targets that share a
server also share a circuit breaker, so a dead server is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from hookd import metrics
from hookd.backoff import Backoff
from hookd.errors import (
    AuthError,
    CacheGoneError,
    CorruptUploadError,
    NixError,
    ParkedError,
    PermanentError,
    PushError,
    TransientError,
)
from hookd.models import PathInfo
from hookd.queue import FAILED, PARKED, PENDING, Item, Queue
from hookd.targets.base import Target

log = structlog.get_logger("hookd.pusher")

PARK_RECHECK = 900.0  # a parked target is probed again after this long even if nothing changed
BURST_QUIET = 0.05  # seconds without new work that end a burst
DEFAULT_MAX_TIMEOUTS = 3  # = UploadConfig.max_timeouts


class ClosureSource(Protocol):
    """Where a worker learns the paths' infos and closures: hookd.nix.Nix in the daemon (`nix
    path-info --recursive`), a fixed graph in the failure-policy tests."""

    async def apath_info(
        self, paths: Iterable[str], *, recursive: bool = False
    ) -> list[PathInfo]: ...


@dataclass
class Breaker:
    """Per-server circuit breaker: opens after ``threshold`` consecutive transient failures."""

    threshold: int
    cooldown: float
    max_cooldown: float
    failures: int = 0
    open_until: float = 0.0
    opened: int = 0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def allow(self) -> float:
        """0 if a request may go now, else seconds to wait."""
        return max(0.0, float(self.open_until - self.clock()))

    def success(self) -> None:
        self.failures = 0
        self.opened = 0
        self.open_until = 0.0

    def failure(self) -> None:
        self.failures += 1
        # Once opened, the first request after the cool-down is a probe: if it fails, the
        # breaker opens again at once (for twice as long) instead of allowing `threshold` more.
        if self.failures >= self.threshold or self.opened > 0:
            wait = min(self.max_cooldown, self.cooldown * (2**self.opened))
            self.open_until = self.clock() + wait
            self.opened += 1
            self.failures = 0
            log.warning("breaker.open", seconds=round(wait, 1))

    @property
    def state(self) -> str:
        return "open" if self.allow() > 0 else "closed"


def timed_out(err: Exception) -> bool:
    """HTTP 504: a gateway (nginx, Traefik, a load balancer) gave up waiting for the server's
    answer. For one upload this usually repeats on every try (the server needs longer for this
    NAR than the proxy waits), so retrying it forever would only resend the same bytes."""
    return isinstance(err, PushError) and err.status == 504


class TimeoutBudget:
    """How many push rounds in a row each root's upload timed out at a gateway.

    A round is one claim of the item (``upload.retry_attempts`` tries in the target, with
    backoff). After ``limit`` such rounds the root is dead-lettered with an explanation instead
    of being retried forever; any other outcome resets its count. Whole-batch timeouts (the
    server's API as a whole not answering) are an outage, not this, and stay retried behind the
    breaker. The counts live in memory: a restarted daemon grants a fresh budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._rounds: dict[str, int] = {}

    def forget(self, roots: Sequence[str]) -> None:
        for root in roots:
            self._rounds.pop(root, None)

    def count(self, root: str, err: PushError) -> PermanentError | None:
        """Count one timed-out round; the dead-letter error once the budget is spent."""
        n = self._rounds.get(root, 0) + 1
        if n < self.limit:
            self._rounds[root] = n
            return None
        self._rounds.pop(root, None)
        return PermanentError(
            f"gave up after {n} push round(s) that each timed out at a gateway (last: {err}). "
            "The server needs longer to answer this upload than a reverse proxy in front of it "
            "waits: raise the proxy's upstream read timeout (nginx `proxy_read_timeout`, "
            f"default 60s), then run `hookd retry {root}`. (`upload.max_timeouts` sets how many "
            "rounds hookd tries first.)",
            status=err.status,
        )


def closure_of(root: str, graph: dict[str, PathInfo]) -> set[str]:
    seen: set[str] = set()
    stack = [root]
    while stack:
        p = stack.pop()
        if p in seen or p not in graph:
            continue
        seen.add(p)
        stack.extend(r for r in graph[p].references if r not in seen)
    return seen


@dataclass
class TargetStats:
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    pushed_paths: int = 0
    pushed_bytes: int = 0
    parked_class: metrics.FailureClass | None = None  # why the target's items are parked


class TargetWorker:
    """Claims due items of one target, computes their closure and pushes what the target lacks."""

    def __init__(
        self,
        target: Target,
        *,
        queue: Queue,
        nix: ClosureSource,
        breaker: Breaker,
        backoff: Backoff,
        batch_size: int,
        on_progress: Callable[[], None],
        batch_window: float = 0.0,
        remember: float = 3600.0,
        max_timeouts: int = DEFAULT_MAX_TIMEOUTS,
    ) -> None:
        self.target = target
        self.queue = queue
        self.nix = nix
        self.breaker = breaker
        self.backoff = backoff
        self.batch_size = batch_size
        self.batch_window = batch_window
        self.remember = remember  # how long "this target has that path" is trusted without asking
        self.wake = asyncio.Event()
        self.progress = on_progress
        self.stats = TargetStats()
        self.busy = False
        self.timeouts = TimeoutBudget(max_timeouts)

    async def run(self, stopping: asyncio.Event) -> None:
        idle = False
        while not stopping.is_set():
            wait = self.breaker.allow()
            if wait > 0:
                await self._sleep(wait, stopping)
                continue
            if idle and self.batch_window > 0:
                await self._gather_burst(stopping)
            items = await self.queue.claim(self.target.id, self.batch_size)
            if not items:
                idle = True
                nxt = await self.queue.next_due(self.target.id)
                timeout = None if nxt is None else max(0.05, nxt - time.time())
                await self._sleep(timeout, stopping)
                continue
            idle = False
            self.busy = True
            try:
                await self.push_batch(items)
            finally:
                self.busy = False
                self.progress()

    async def _sleep(self, timeout: float | None, stopping: asyncio.Event) -> None:
        self.wake.clear()
        waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _gather_burst(self, stopping: asyncio.Event) -> None:
        """Woken from idle by fresh work: while more keeps arriving (builds finishing one after
        another), wait for it, up to ``batch_window``, so one closure query and one cache
        round-trip serve the whole burst; a lone push waits only one quiet period."""
        deadline = time.monotonic() + self.batch_window
        quiet = min(BURST_QUIET, self.batch_window)
        while not stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), min(quiet, left))
                continue  # more work arrived: keep gathering
            return  # a quiet period passed

    async def push_batch(self, items: Sequence[Item]) -> None:
        tid = self.target.id
        roots = [i.path for i in items]
        attempts = {i.path: i.attempts for i in items}
        try:
            infos = await self.nix.apath_info(roots, recursive=True)
        except NixError as e:
            await self._transient(roots, attempts, TransientError(f"nix path-info failed: {e}"))
            return
        graph = {i.path: i for i in infos}
        gone = [r for r in roots if r not in graph]
        if gone:
            for path in gone:
                log.warning(
                    "skip.gone",
                    path=path,
                    target=tid,
                    reason="no longer valid (garbage-collected?)",
                )
            await self.queue.reschedule(
                tid, gone, state=FAILED, due=0, reason="path is no longer valid in the local store"
            )
        live = [r for r in roots if r in graph]
        if not live:
            return
        closures = {r: closure_of(r, graph) for r in live}
        wanted = set().union(*closures.values())
        known = await self.queue.known_pushed(tid, wanted, since=time.time() - self.remember)
        needed = [graph[p] for p in sorted(wanted - known)]
        start = time.monotonic()
        if not needed:  # the whole closure is known to be there: no request at all
            metrics.record_completed(await self.queue.mark_done(tid, live, ()))
            return
        try:
            report = await self.target.push(needed)
        except TransientError as e:
            self.breaker.failure()
            await self._transient(live, attempts, e)
            return
        except (AuthError, ParkedError) as e:
            await self._park(live, e)
            return
        except PushError as e:
            await self._fail(live, e)
            return
        except Exception as e:  # a bug in a target must not lose the paths: keep them queued
            log.exception("push.bug", target=tid)
            await self._transient(
                live, attempts, TransientError(f"internal error: {type(e).__name__}: {e}")
            )
            return
        self.breaker.success()
        ok = set(report.uploaded) | set(report.present) | set(report.upstream)
        await self.queue.record_pushed(tid, ok)
        done: list[str] = []
        by_error: dict[str, Exception] = {}
        for root in live:
            failed = [p for p in closures[root] if p in report.failed]
            if not failed:
                done.append(root)
            else:
                by_error.setdefault(root, report.failed[failed[0]])
        if done:
            self.timeouts.forget(done)
            metrics.record_completed(await self.queue.mark_done(tid, done, ()))
        for root, err in by_error.items():
            await self._apply(root, attempts, err)
        elapsed = int((time.monotonic() - start) * 1000)
        self.stats.last_success = time.time()
        self.stats.pushed_paths += len(report.uploaded)
        self.stats.pushed_bytes += report.bytes_sent
        metrics.record_push(tid, len(report.uploaded), report.bytes_sent)
        log.info(
            "batch",
            target=tid,
            roots=len(live),
            closure=len(wanted),
            asked=len(needed),
            uploaded=len(report.uploaded),
            present=len(report.present),
            upstream=len(report.upstream),
            failed=len(report.failed),
            bytes=report.bytes_sent,
            ms=elapsed,
        )

    async def _apply(self, root: str, attempts: dict[str, int], err: Exception) -> None:
        if not timed_out(err):
            self.timeouts.forget([root])
        if isinstance(err, TransientError) and timed_out(err):
            given_up = self.timeouts.count(root, err)
            if given_up is not None:
                await self._fail([root], given_up)
            else:
                await self._transient([root], attempts, err)
        elif isinstance(err, TransientError):
            await self._transient([root], attempts, err)
        elif isinstance(err, AuthError | ParkedError):
            await self._park([root], err)
        elif isinstance(err, CorruptUploadError) and attempts.get(root, 0) < 1:
            await self._transient([root], attempts, err)  # one more try, then it fails for good
        else:
            await self._fail([root], err if isinstance(err, PushError) else PushError(str(err)))

    def _note(self, err: Exception) -> metrics.FailureClass:
        self.stats.last_error = str(err)
        self.stats.last_error_at = time.time()
        return metrics.record_failure(self.target.id, err)

    async def _transient(
        self, roots: Sequence[str], attempts: dict[str, int], err: TransientError | PushError
    ) -> None:
        self._note(err)
        retry_after = err.retry_after if isinstance(err, TransientError) else None
        worst = max((attempts.get(r, 0) for r in roots), default=0)
        delay = self.backoff.delay(worst, retry_after)
        log.warning(
            "push.retry",
            target=self.target.id,
            paths=len(roots),
            seconds=round(delay, 1),
            error=str(err),
        )
        await self.queue.reschedule(
            self.target.id, roots, state=PENDING, due=time.time() + delay, reason=str(err)
        )

    async def _park(self, roots: Sequence[str], err: PushError) -> None:
        """A token or cache problem holds for the whole target: park everything queued for it,
        not just this batch, so the rest of the queue does not knock on the same door."""
        self.stats.parked_class = self._note(err)
        if isinstance(err, CacheGoneError):
            forgotten = await self.queue.forget_pushed(self.target.id)
            log.warning("cache.gone", target=self.target.id, forgotten=forgotten)
        due = time.time() + PARK_RECHECK
        await self.queue.reschedule(self.target.id, roots, state=PARKED, due=due, reason=str(err))
        others = await self.queue.park_pending(self.target.id, due=due, reason=str(err))
        log.error("push.parked", target=self.target.id, paths=len(roots) + others, error=str(err))

    async def _fail(self, roots: Sequence[str], err: PushError) -> None:
        self._note(err)
        for root in roots:
            log.error("push.failed", path=root, target=self.target.id, error=str(err))
        await self.queue.reschedule(self.target.id, roots, state=FAILED, due=0, reason=str(err))
