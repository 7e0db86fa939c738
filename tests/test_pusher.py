"""The retry policy's parts: circuit breaker, backoff, and what the queue trusts about a target."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hookd.backoff import Backoff
from hookd.errors import PermanentError, TransientError
from hookd.models import PathInfo
from hookd.pusher import Breaker, TimeoutBudget, closure_of, timed_out
from hookd.queue import Queue


def info(name: str, refs: list[str]) -> PathInfo:
    """A synthetic PathInfo: these tests need no store."""

    def full(n: str) -> str:
        return f"/nix/store/{'0' * 31}{n[0]}-{n}"

    return PathInfo(full(name), b"\0" * 32, 8, tuple(full(r) for r in refs))


def test_breaker_opens_after_threshold_and_a_failed_probe_reopens_at_once() -> None:
    b = Breaker(threshold=3, cooldown=10, max_cooldown=100)
    b.failure()
    b.failure()
    assert b.allow() == 0 and b.state == "closed"
    b.failure()
    assert 9 < b.allow() <= 10 and b.state == "open"
    b.open_until = 0  # the cool-down has passed: one probe may go
    b.failure()  # the probe failed: open again at once, for twice as long
    assert 19 < b.allow() <= 20
    b.open_until = 0
    b.success()
    b.failure()
    assert b.allow() == 0  # after a success it takes `threshold` failures again


def test_breaker_cooldown_is_capped() -> None:
    b = Breaker(threshold=1, cooldown=10, max_cooldown=25)
    for _ in range(5):
        b.open_until = 0
        b.failure()
    assert b.allow() <= 25


def test_backoff_grows_with_jitter_caps_and_honours_retry_after() -> None:
    import random

    bo = Backoff(1.0, 60.0, random.Random(1))
    delays = [bo.delay(n) for n in range(10)]
    assert all(0.5 * min(60, 2**n) <= d <= min(60, 2**n) for n, d in enumerate(delays))
    assert bo.delay(50) <= 60
    assert bo.delay(0, retry_after=30) == 30
    assert bo.delay(0, retry_after=600) == 60  # capped by max_backoff


def test_closure_of_follows_references_and_ignores_unknown_paths() -> None:
    a, b, c = info("a", ["b", "a"]), info("b", ["c"]), info("c", ["zzz"])
    graph = {p.path: p for p in (a, b, c)}
    assert closure_of(a.path, graph) == {a.path, b.path, c.path}
    assert closure_of(c.path, graph) == {c.path}


def test_known_pushed_trusts_only_recent_confirmations_and_forget_clears(tmp_path: Path) -> None:
    async def run() -> None:
        q = Queue(tmp_path / "q.sqlite").open()
        try:
            await q.record_pushed("t", ["/p1", "/p2"])
            now = time.time()
            assert await q.known_pushed("t", ["/p1", "/p2", "/p3"], since=now - 60) == {
                "/p1",
                "/p2",
            }
            assert await q.known_pushed("t", ["/p1"], since=now + 60) == set()  # too old: ask again
            assert await q.known_pushed("other", ["/p1"]) == set()
            assert await q.forget_pushed("t") == 2
            assert await q.known_pushed("t", ["/p1", "/p2"]) == set()
        finally:
            q.close()

    asyncio.run(run())


def test_park_pending_parks_every_pending_item_of_the_target_only(tmp_path: Path) -> None:
    async def run() -> None:
        q = Queue(tmp_path / "q.sqlite").open()
        try:
            await q.add_request(None, ["/nix/store/x"], "t")
            (req,) = await q.due_requests()
            rid = req.id
            await q.resolve_request(rid, ["/a", "/b"], ["t1", "t2"], {})
            n = await q.park_pending("t1", due=time.time() + 900, reason="401")
            assert n == 2
            items = {(i.path, i.target): i.state for i in await q.all_items()}
            assert items == {
                ("/a", "t1"): "parked",
                ("/b", "t1"): "parked",
                ("/a", "t2"): "pending",
                ("/b", "t2"): "pending",
            }
            assert await q.claim("t1", 10) == []  # parked until the re-check time or an unpark
            assert await q.unpark("t1") == 2
            assert len(await q.claim("t1", 10)) == 2
        finally:
            q.close()

    asyncio.run(run())


def test_a_path_timed_out_at_a_gateway_is_given_up_after_the_budget_with_the_fix() -> None:
    err = TransientError("upload-path on server prod: HTTP 504: 504 Gateway Time-out", status=504)
    assert timed_out(err)
    assert not timed_out(TransientError("HTTP 502", status=502))
    assert not timed_out(TransientError("cannot connect"))  # an outage, not a slow upload
    budget = TimeoutBudget(3)
    a, b = "/nix/store/" + "a" * 32 + "-a", "/nix/store/" + "b" * 32 + "-b"
    assert budget.count(a, err) is None and budget.count(a, err) is None
    assert budget.count(b, err) is None  # counted per path
    given_up = budget.count(a, err)
    assert isinstance(given_up, PermanentError) and given_up.status == 504
    assert "gave up after 3" in str(given_up) and "proxy_read_timeout" in str(given_up)
    assert f"hookd retry {a}" in str(given_up)
    assert budget.count(a, err) is None  # a retried path starts a fresh budget
    budget.forget([b])  # any other outcome resets the count
    assert budget.count(b, err) is None and budget.count(b, err) is None
    assert isinstance(budget.count(b, err), PermanentError)
