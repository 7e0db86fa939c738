"""The failure policy as a component: the real TargetWorker and a real queue, no Nix.

A fake target raises each error class of hookd/errors.py (or reports per-path failures); the
closures come from a fixed graph of PathInfos through the worker's ClosureSource seam; the queue
is the real SQLite queue in a temporary directory. The breaker runs on a clock the test moves.
Each test checks what the queue holds afterwards: state, due time, attempts, reason.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import pytest

from hookd.backoff import Backoff
from hookd.errors import (
    AuthError,
    CacheGoneError,
    CorruptUploadError,
    NixError,
    ParkedError,
    PermanentError,
    TransientError,
)
from hookd.models import PathInfo, PushReport
from hookd.pusher import PARK_RECHECK, Breaker, TargetWorker
from hookd.queue import DONE, FAILED, PARKED, PENDING, Item, Queue

P = ParamSpec("P")
R = TypeVar("R")
T = "attic:prod/main"
OTHER = "attic:prod/other"
MIN_BACKOFF, MAX_BACKOFF = 1.0, 60.0
COOLDOWN, THRESHOLD = 10.0, 2


def aio(fn: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def sp(name: str) -> str:
    h = hashlib.sha256(name.encode()).hexdigest()
    return f"/nix/store/{''.join('0123456789abcdfghijklmnpqrsvwxyz'[int(c, 16)] for c in h[:32])}-{name}"


def info(name: str, *refs: str) -> PathInfo:
    return PathInfo(sp(name), b"\1" * 32, 1024, tuple(sp(r) for r in refs))


# app -> lib -> libc, tool -> libc; `gone` is not in the store any more.
GRAPH = {
    i.path: i for i in (info("app", "lib"), info("lib", "libc"), info("libc"), info("tool", "libc"))
}
APP, LIB, LIBC, TOOL, GONE = sp("app"), sp("lib"), sp("libc"), sp("tool"), sp("gone")


class Graph:
    """ClosureSource over a fixed graph: what `nix path-info --recursive` would answer."""

    def __init__(self, graph: dict[str, PathInfo]) -> None:
        self.graph = graph
        self.error: NixError | None = None

    async def apath_info(self, paths: Iterable[str], *, recursive: bool = False) -> list[PathInfo]:
        if self.error is not None:
            raise self.error
        seen: dict[str, PathInfo] = {}
        stack = [p for p in paths if p in self.graph]
        while stack:
            p = stack.pop()
            if p not in seen:
                seen[p] = self.graph[p]
                if recursive:
                    stack.extend(r for r in self.graph[p].references if r in self.graph)
        return list(seen.values())


Outcome = Exception | Callable[[Sequence[PathInfo]], PushReport]


def uploaded(closure: Sequence[PathInfo]) -> PushReport:
    return PushReport(
        uploaded=[i.path for i in closure], bytes_sent=sum(i.nar_size for i in closure)
    )


def failing(path: str, err: Exception) -> Callable[[Sequence[PathInfo]], PushReport]:
    def report(closure: Sequence[PathInfo]) -> PushReport:
        ok = [i.path for i in closure if i.path != path]
        return PushReport(
            uploaded=ok, failed={path: err} if path in {i.path for i in closure} else {}
        )

    return report


class FakeTarget:
    """A Target whose push does what the test scripted, in order (then: uploads everything)."""

    def __init__(self, tid: str = T) -> None:
        self._id = tid
        self.script: list[Outcome] = []
        self.pushed: list[list[str]] = []  # the closure of every call

    @property
    def id(self) -> str:
        return self._id

    @property
    def server_key(self) -> str:
        return "prod"

    async def push(self, closure: Sequence[PathInfo]) -> PushReport:
        self.pushed.append(sorted(i.path for i in closure))
        outcome = self.script.pop(0) if self.script else uploaded
        if isinstance(outcome, Exception):
            raise outcome
        return outcome(closure)

    async def check(self) -> str:
        return "fake"

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.clock = Clock()
        self.target = FakeTarget()
        self.source = Graph(GRAPH)
        self.breaker = Breaker(THRESHOLD, COOLDOWN, max_cooldown=100.0, clock=self.clock)
        self.progress = 0
        self.worker = TargetWorker(
            self.target,
            queue=queue,
            nix=self.source,
            breaker=self.breaker,
            backoff=Backoff(MIN_BACKOFF, MAX_BACKOFF, random.Random(7)),
            batch_size=10,
            on_progress=self._progressed,
        )

    def _progressed(self) -> None:
        self.progress += 1

    async def add(self, *paths: str, targets: Sequence[str] = (T,)) -> None:
        for p in paths:  # as the resolver does: a request, then its items
            await self.queue.add_request(None, [p], "hook")
            [req] = [r for r in await self.queue.due_requests() if r.out_paths == (p,)]
            await self.queue.resolve_request(req.id, [p], list(targets), {})

    async def round(self, limit: int = 10) -> list[Item]:
        """Claim what is due for the target and push it once, as the worker's loop does."""
        items = await self.queue.claim(T, limit)
        if items:
            await self.worker.push_batch(items)
        return items

    async def item(self, path: str, target: str = T) -> Item:
        [it] = [i for i in await self.queue.items_for([path]) if i.target == target]
        return it

    async def make_due(self, *paths: str) -> None:
        """Time passes for the queue: the items' due time has come (attempts stay)."""
        for p in paths:
            it = await self.item(p)
            await self.queue.reschedule(
                T, [p], state=it.state, due=0, reason=it.reason or "", count_attempt=False
            )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    q = Queue(tmp_path / "queue.sqlite").open()
    try:
        yield Rig(q)
    finally:
        q.close()


# -- transient failures: backoff and due times -------------------------------------------------


@aio
async def test_transient_error_keeps_the_path_pending_with_a_growing_due_time(rig: Rig) -> None:
    await rig.add(APP)
    rig.target.script = [TransientError("503 from server"), TransientError("503 again")]
    before = time.time()
    await rig.round()
    it = await rig.item(APP)
    assert (it.state, it.attempts, it.reason) == (PENDING, 1, "503 from server")
    # First failure: about min_backoff, jittered into [½, 1] of it.
    assert before + 0.5 * MIN_BACKOFF <= it.due <= time.time() + MIN_BACKOFF
    assert await rig.round() == []  # not due yet: nothing is claimed, nothing pushed
    assert len(rig.target.pushed) == 1
    await rig.make_due(APP)
    before = time.time()
    await rig.round()
    it = await rig.item(APP)
    assert (it.state, it.attempts) == (PENDING, 2)
    assert before + 0.5 * 2 * MIN_BACKOFF <= it.due <= time.time() + 2 * MIN_BACKOFF
    await rig.make_due(APP)
    await rig.round()  # the script is used up: the target takes everything
    assert (await rig.item(APP)).state == DONE
    assert rig.target.pushed[-1] == sorted([APP, LIB, LIBC])


@aio
async def test_retry_after_sets_the_due_time_capped_by_max_backoff(rig: Rig) -> None:
    await rig.add(APP, TOOL)
    rig.target.script = [TransientError("429", status=429, retry_after=30)]
    before = time.time()
    await rig.round()
    for p in (APP, TOOL):
        it = await rig.item(p)
        assert it.state == PENDING and before + 30 <= it.due <= time.time() + 30
    await rig.make_due(APP, TOOL)
    rig.target.script = [TransientError("429", status=429, retry_after=3600)]
    before = time.time()
    await rig.round()
    assert before + MAX_BACKOFF * 0.99 <= (await rig.item(APP)).due <= time.time() + MAX_BACKOFF


@aio
async def test_a_nix_failure_is_transient_and_loses_nothing(rig: Rig) -> None:
    await rig.add(APP)
    rig.source.error = NixError("nix path-info timed out after 120 s")
    await rig.round()
    it = await rig.item(APP)
    assert it.state == PENDING and it.attempts == 1 and "nix path-info failed" in (it.reason or "")
    assert rig.target.pushed == []  # the target was never asked
    assert rig.breaker.failures == 0  # the server is not to blame
    rig.source.error = None
    await rig.make_due(APP)
    await rig.round()
    assert (await rig.item(APP)).state == DONE


@aio
async def test_a_bug_in_the_target_keeps_the_paths_queued(rig: Rig) -> None:
    await rig.add(APP)
    rig.target.script = [KeyError("upstream_cache_key_names")]
    await rig.round()
    it = await rig.item(APP)
    assert it.state == PENDING and "internal error: KeyError" in (it.reason or "")
    await rig.make_due(APP)
    await rig.round()
    assert (await rig.item(APP)).state == DONE


# -- parking: token and cache problems hold for the whole target ---------------------------------


@aio
async def test_auth_error_parks_every_pending_item_of_the_target_until_unparked(rig: Rig) -> None:
    q = rig.queue
    await rig.add(APP, TOOL, targets=(T, OTHER))
    rig.target.script = [AuthError("401: the token for prod is not valid", status=401)]
    before = time.time()
    await rig.round(limit=1)  # one item in the batch; the other is parked with it
    for p in (APP, TOOL):
        it = await rig.item(p)
        assert it.state == PARKED and "token for prod" in (it.reason or "")
        assert before + PARK_RECHECK <= it.due <= time.time() + PARK_RECHECK
        assert (await rig.item(p, OTHER)).state == PENDING  # another cache is not touched
    assert rig.worker.stats.last_error == "401: the token for prod is not valid"
    assert await rig.round() == []  # parked items wait for their re-check time
    assert len(rig.target.pushed) == 1
    assert (
        await q.unpark("attic:prod/") == 2
    )  # a new token: due now (OTHER's are pending, not parked)
    claimed = await rig.round()
    assert {i.path for i in claimed} == {APP, TOOL}
    assert {(await rig.item(p)).state for p in (APP, TOOL)} == {DONE}


@aio
async def test_parked_error_parks_and_the_recheck_time_probes_again(rig: Rig) -> None:
    await rig.add(APP)
    rig.target.script = [ParkedError("push is disabled for cache main: ask an admin")]
    await rig.round()
    assert (await rig.item(APP)).state == PARKED
    await rig.make_due(APP)  # PARK_RECHECK has passed
    [claimed] = await rig.round()
    assert claimed.state == PARKED  # claim hands back parked items whose time has come
    assert (await rig.item(APP)).state == DONE


@aio
async def test_cache_gone_parks_and_forgets_what_the_cache_was_known_to_hold(rig: Rig) -> None:
    q = rig.queue
    await rig.add(APP)
    await rig.round()
    assert await q.known_pushed(T, [APP, LIB, LIBC]) == {APP, LIB, LIBC}
    await rig.add(TOOL)  # needs libc, which the cache had
    rig.target.script = [CacheGoneError("cache main does not exist on server prod")]
    await rig.round()
    assert rig.target.pushed[-1] == [TOOL]  # libc was trusted to be there
    assert (await rig.item(TOOL)).state == PARKED
    assert await q.known_pushed(T, [APP, LIB, LIBC]) == set()
    await q.unpark(T)
    await rig.round()
    assert rig.target.pushed[-1] == sorted([TOOL, LIBC])  # asked again, with its closure
    assert (await rig.item(TOOL)).state == DONE


# -- dead letters and retry ----------------------------------------------------------------------


@aio
async def test_permanent_error_dead_letters_until_retried(rig: Rig) -> None:
    q = rig.queue
    await rig.add(APP)
    rig.target.script = [PermanentError("413 from the proxy: raise client_max_body_size")]
    await rig.round()
    it = await rig.item(APP)
    assert (it.state, it.due) == (FAILED, 0) and "client_max_body_size" in (it.reason or "")
    assert rig.breaker.failures == 0
    assert await rig.round() == []  # a dead letter is never claimed again by itself
    assert await q.retry([APP]) == 1
    it = await rig.item(APP)
    assert (it.state, it.attempts) == (PENDING, 0)
    await rig.round()
    assert (await rig.item(APP)).state == DONE


@aio
async def test_a_failed_closure_member_fails_only_the_roots_that_need_it(rig: Rig) -> None:
    q = rig.queue
    await rig.add(APP, TOOL)
    rig.target.script = [failing(LIB, PermanentError("lib: NAR too large for the server"))]
    await rig.round()
    assert (await rig.item(APP)).state == FAILED  # app needs lib
    assert (await rig.item(TOOL)).state == DONE  # tool does not
    # What the target accepted is remembered; what failed is asked again next time.
    assert await q.known_pushed(T, [APP, LIB, LIBC, TOOL]) == {APP, LIBC, TOOL}


@aio
async def test_a_corrupt_upload_is_retried_once_then_dead_lettered(rig: Rig) -> None:
    await rig.add(APP)
    corrupt = CorruptUploadError("server computed another NAR hash for lib")
    rig.target.script = [failing(LIB, corrupt), failing(LIB, corrupt)]
    await rig.round()
    it = await rig.item(APP)
    assert (it.state, it.attempts) == (PENDING, 1)
    await rig.make_due(APP)
    await rig.round()
    it = await rig.item(APP)
    assert it.state == FAILED and "NAR hash" in (it.reason or "")


@aio
async def test_a_path_gone_from_the_store_is_failed_with_the_reason(rig: Rig) -> None:
    await rig.add(APP, GONE)
    await rig.round()
    gone = await rig.item(GONE)
    assert gone.state == FAILED and "no longer valid" in (gone.reason or "")
    assert (await rig.item(APP)).state == DONE
    assert all(GONE not in pushed for pushed in rig.target.pushed)


# -- the circuit breaker -----------------------------------------------------------------------


@aio
async def test_breaker_opens_half_opens_and_reopens_for_twice_as_long(rig: Rig) -> None:
    await rig.add(APP)
    down: Outcome = TransientError("connection refused")
    rig.target.script = [down] * (THRESHOLD + 1)  # THRESHOLD failures, then a failed probe
    for n in range(THRESHOLD):
        assert rig.breaker.allow() == 0, f"open after {n} failures"
        await rig.make_due(APP)
        await rig.round()
    assert rig.breaker.state == "open" and rig.breaker.allow() == COOLDOWN
    rig.clock.now += COOLDOWN  # half-open: one probe may go
    assert rig.breaker.allow() == 0
    await rig.make_due(APP)
    await rig.round()  # the probe fails: open again at once, for twice as long
    assert rig.breaker.allow() == 2 * COOLDOWN
    rig.clock.now += 2 * COOLDOWN
    await rig.make_due(APP)
    await rig.round()  # the probe succeeds: closed, and the count starts afresh
    assert (await rig.item(APP)).state == DONE
    assert (rig.breaker.state, rig.breaker.failures, rig.breaker.opened) == ("closed", 0, 0)
    assert len(rig.target.pushed) == THRESHOLD + 2


@aio
async def test_other_failures_do_not_count_towards_the_breaker(rig: Rig) -> None:
    q = rig.queue
    await rig.add(APP)
    for err in (
        AuthError("401"),
        PermanentError("413"),
        ParkedError("push disabled"),
    ):
        rig.target.script = [err]
        await q.retry([APP])
        await rig.round()
    assert rig.breaker.failures == 0 and rig.breaker.state == "closed"


@aio
async def test_the_run_loop_waits_for_the_breaker_then_probes(rig: Rig) -> None:
    q = rig.queue
    rig.breaker.threshold = 1
    rig.breaker.cooldown = 1.0  # the worker's real sleep is bounded by this too
    rig.worker.backoff = Backoff(0.001, 0.002, random.Random(1))
    await rig.add(APP)
    rig.target.script = [TransientError("502 bad gateway")]
    stopping = asyncio.Event()
    task = asyncio.create_task(rig.worker.run(stopping))
    try:
        await until(lambda: rig.breaker.state == "open")
        assert len(rig.target.pushed) == 1
        rig.clock.now += 1.0  # the cool-down has passed
        rig.worker.wake.set()
        await until(lambda: rig.breaker.state == "closed" and rig.breaker.opened == 0)
        await until_async(lambda: _state(q, APP), DONE)
        assert len(rig.target.pushed) == 2 and rig.progress >= 2
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def _state(q: Queue, path: str) -> str:
    return next(i.state for i in await q.items_for([path]) if i.target == T)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def until_async(get: Callable[[], Awaitable[str]], want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await get()) != want:
        assert time.monotonic() < deadline, f"still {got}, expected {want}"
        await asyncio.sleep(0.01)


# -- gateway timeouts: a bounded number of rounds ----------------------------------------------


def gateway_timeout() -> TransientError:
    return TransientError("upload-path on server prod: HTTP 504: 504 Gateway Time-out", status=504)


@aio
async def test_an_upload_a_proxy_times_out_is_retried_then_dead_lettered_after_the_budget(
    rig: Rig,
) -> None:
    await rig.add(APP)
    rig.target.script = [failing(LIBC, gateway_timeout()) for _ in range(3)]
    for attempt in (1, 2):
        before = time.time()
        await rig.round()
        it = await rig.item(APP)
        assert (it.state, it.attempts) == (PENDING, attempt)
        assert it.due >= before + 0.5 * MIN_BACKOFF * 2 ** (attempt - 1)  # backoff, not a hot loop
        await rig.make_due(APP)
    await rig.round()
    it = await rig.item(APP)
    assert (it.state, it.attempts) == (FAILED, 3)
    reason = it.reason or ""
    assert "gave up after 3" in reason and "proxy_read_timeout" in reason
    assert f"hookd retry {APP}" in reason and "504" in reason
    assert len(rig.target.pushed) == 3


@aio
async def test_any_other_outcome_resets_the_timeout_budget(rig: Rig) -> None:
    await rig.add(APP)
    rig.target.script = [
        failing(LIBC, gateway_timeout()),
        failing(LIBC, gateway_timeout()),
        failing(LIBC, TransientError("503 from server", status=503)),  # resets the count
        failing(LIBC, gateway_timeout()),
        failing(LIBC, gateway_timeout()),
    ]
    for _ in range(5):
        await rig.round()
        await rig.make_due(APP)
    it = await rig.item(APP)
    assert (it.state, it.attempts) == (PENDING, 5)
    await rig.round()  # the script is used up: pushed
    assert (await rig.item(APP)).state == DONE


@aio
async def test_a_whole_server_timing_out_is_an_outage_and_never_given_up(rig: Rig) -> None:
    await rig.add(APP)
    rig.target.script = [gateway_timeout() for _ in range(5)]  # get-missing-paths answers 504
    for _ in range(5):
        await rig.round()
        await rig.make_due(APP)
    it = await rig.item(APP)
    assert (it.state, it.attempts) == (PENDING, 5)
