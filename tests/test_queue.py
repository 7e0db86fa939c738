"""The durable queue on a real SQLite file: idempotence, group commit, item states, kill -9."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

from hookd.queue import DONE, FAILED, PARKED, PENDING, Item, Queue, TargetCounts

P = ParamSpec("P")
R = TypeVar("R")
ROOT = Path(__file__).resolve().parent.parent

T1 = "attic:prod/team"
T2 = "store:file:///var/cache/mirror"


def aio(fn: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    """Run an async test body in a fresh event loop (no plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def sp(name: str) -> str:
    h = hashlib.sha256(name.encode()).hexdigest()
    h32 = "".join("0123456789abcdfghijklmnpqrsvwxyz"[int(c, 16)] for c in h[:32])
    return f"/nix/store/{h32}-{name}"


@pytest.fixture
def q(tmp_path: Path) -> Iterator[Queue]:
    queue = Queue(tmp_path / "state" / "queue.sqlite").open()
    yield queue
    queue.close()


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def seed(q: Queue, paths: list[str], targets: list[str]) -> None:
    assert await q.add_request(None, paths, "test")
    (req,) = [r for r in await q.due_requests() if r.out_paths == tuple(sorted(paths))]
    await q.resolve_request(req.id, paths, targets, {})


# -- lifecycle --------------------------------------------------------------------------------


def test_open_creates_parent_directories_wal_and_schema(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "queue.sqlite"
    q = Queue(db).open()
    try:
        assert db.exists()
        assert rows(db, "PRAGMA journal_mode") == [("wal",)]
        tables = {r[0] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"requests", "items", "pushed", "skipped"} <= tables
    finally:
        q.close()
    q.close()  # closing twice is harmless


def test_open_fails_loudly_on_an_unusable_path(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(sqlite3.Error):
        Queue(tmp_path / "dir.sqlite").open()


@aio
async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    q = Queue(db).open()
    await q.add_request(None, [sp("a")], "hook")
    await seed(q, [sp("b")], [T1])
    await q.mark_done(T1, [sp("b")], [sp("b-dep")])
    q.close()
    q2 = Queue(db).open()
    try:
        (req,) = await q2.due_requests()
        assert req.out_paths == (sp("a"),)
        assert await q2.known_pushed(T1, [sp("b"), sp("b-dep"), sp("c")]) == {sp("b"), sp("b-dep")}
    finally:
        q2.close()


# -- requests ---------------------------------------------------------------------------------


@aio
async def test_add_request_is_idempotent(q: Queue) -> None:
    drv = sp("hello.drv")
    assert await q.add_request(drv, [sp("hello"), sp("hello-doc")], "hook") is True
    assert await q.add_request(drv, [sp("hello-doc"), sp("hello")], "hook") is False  # order
    assert await q.add_request(drv, [sp("hello"), sp("hello-doc"), sp("hello")], "spool") is False
    assert await q.add_request(drv, [sp("hello")], "hook") is True  # a different set
    assert await q.add_request(None, [sp("x")], "cli") is True
    assert await q.add_request("", [sp("x")], "cli") is False  # no drv == empty drv
    assert await q.add_request(drv, [], "hook") is True  # DRV_PATH only (Nix 2.8 bug)
    assert await q.add_request(drv, [], "hook") is False
    assert await q.pending_requests() == 4


@aio
async def test_due_requests_shape_and_order(q: Queue) -> None:
    await q.add_request(sp("a.drv"), [sp("a-out"), sp("a-dev")], "hook")
    await q.add_request(None, [sp("b")], "cli")
    reqs = await q.due_requests()
    assert [r.drv_path for r in reqs] == [sp("a.drv"), None]
    assert reqs[0].out_paths == tuple(sorted([sp("a-out"), sp("a-dev")]))
    assert (reqs[0].source, reqs[1].source) == ("hook", "cli")
    assert reqs[0].id < reqs[1].id and reqs[0].attempts == 0
    assert len(await q.due_requests(limit=1)) == 1


@aio
async def test_add_requests_in_bulk_counts_new_ones(q: Queue) -> None:
    batch = [(None, [sp(f"p{i}")], "backfill") for i in range(50)]
    assert await q.add_requests(batch) == 50
    assert await q.add_requests([*batch, (None, [sp("new")], "backfill")]) == 1
    assert await q.pending_requests() == 51


@aio
async def test_defer_and_drop_request(q: Queue) -> None:
    await q.add_request(sp("a.drv"), [], "hook")
    (req,) = await q.due_requests()
    await q.defer_request(req.id, time.time() + 3600)
    assert await q.due_requests() == []
    assert await q.pending_requests() == 1
    await q.defer_request(req.id, 0)
    (again,) = await q.due_requests()
    assert again.id == req.id and again.attempts == 2
    await q.drop_request(req.id)
    assert await q.pending_requests() == 0


@aio
async def test_resolve_request_replaces_it_by_items_and_records_skips(q: Queue) -> None:
    await q.add_request(sp("a.drv"), [sp("a"), sp("a-source")], "hook")
    (req,) = await q.due_requests()
    added = await q.resolve_request(
        req.id, [sp("a")], [T1, T2], {sp("a-source"): "source (name ends in -source)"}
    )
    assert added == 2
    assert await q.pending_requests() == 0
    items = await q.all_items()
    assert sorted(
        (i.path, i.target, i.state, i.attempts, i.due, i.reason) for i in items
    ) == sorted([(sp("a"), T1, PENDING, 0, 0, None), (sp("a"), T2, PENDING, 0, 0, None)])
    assert await q.skipped() == {sp("a-source"): "source (name ends in -source)"}
    # the same path announced again does not duplicate or reset items
    await q.reschedule(T1, [sp("a")], state=FAILED, due=0, reason="boom")
    await q.add_request(None, [sp("a")], "cli")
    (req2,) = await q.due_requests()
    assert await q.resolve_request(req2.id, [sp("a")], [T1, T2], {}) == 0
    assert {(i.target, i.state) for i in await q.items_for([sp("a")])} == {
        (T1, FAILED),
        (T2, PENDING),
    }


# -- group commit -----------------------------------------------------------------------------


@aio
async def test_500_concurrent_adds_share_few_commits(q: Queue) -> None:
    before = q.commits
    results = await asyncio.gather(
        *(q.add_request(None, [sp(f"c{i}")], "hook") for i in range(500))
    )
    assert results == [True] * 500
    commits = q.commits - before
    assert 1 <= commits <= 50, commits  # one fsync per group, not per operation
    assert await q.pending_requests() == 500
    assert rows(q.path, "SELECT COUNT(*) FROM requests") == [
        (500,)
    ]  # visible to another connection


@aio
async def test_sequential_operations_each_commit(q: Queue) -> None:
    before = q.commits
    for i in range(5):
        await q.add_request(None, [sp(f"s{i}")], "hook")
    assert q.commits - before == 5  # an awaited op is committed before its caller resumes


@aio
async def test_a_failing_operation_does_not_sink_its_group(q: Queue) -> None:
    await seed(q, [sp("x")], [T1])
    adds = [q.add_request(None, [sp(f"g{i}")], "hook") for i in range(100)]
    bad = q.reschedule(T1, [sp("x")], state="bogus", due=0, reason="violates the CHECK constraint")
    results = await asyncio.gather(*adds[:50], bad, *adds[50:], return_exceptions=True)
    assert isinstance(results[50], sqlite3.IntegrityError)
    assert results[:50] + results[51:] == [True] * 100
    assert await q.pending_requests() == 100
    (item,) = await q.items_for([sp("x")])
    assert item.state == PENDING and item.reason is None  # the bad op was rolled back whole


# -- items ------------------------------------------------------------------------------------


@aio
async def test_claim_returns_due_pending_items_of_one_target(q: Queue) -> None:
    paths = [sp(f"i{i}") for i in range(5)]
    await seed(q, paths, [T1, T2])
    claimed = await q.claim(T1, 10)
    assert sorted(i.path for i in claimed) == sorted(paths)
    assert all(isinstance(i, Item) and i.target == T1 and i.state == PENDING for i in claimed)
    assert len(await q.claim(T1, 3)) == 3
    assert await q.claim("attic:other/x", 10) == []


@aio
async def test_reschedule_sets_due_state_reason_and_attempts(q: Queue) -> None:
    a, b = sp("a"), sp("b")
    await seed(q, [a, b], [T1])
    later = time.time() + 3600
    await q.reschedule(T1, [a], state=PENDING, due=later, reason="503 from server")
    assert [i.path for i in await q.claim(T1, 10)] == [b]
    (item,) = await q.items_for([a])
    assert (item.state, item.attempts, item.reason) == (PENDING, 1, "503 from server")
    assert item.due == pytest.approx(later)
    assert await q.next_due(T1) == 0  # b is due now
    await q.reschedule(T1, [b], state=PENDING, due=later + 10, reason="x", count_attempt=False)
    assert await q.next_due(T1) == pytest.approx(later)
    attempts = {i.path: i.attempts for i in await q.items_for([a, b, sp("unknown")])}
    assert attempts == {a: 1, b: 0}
    await q.reschedule(T1, [a], state=PENDING, due=0, reason="again")
    assert (await q.items_for([a]))[0].attempts == 2
    assert [i.path for i in await q.claim(T1, 10)] == [a]  # due 0 again


@aio
async def test_claim_orders_by_due_then_added(q: Queue) -> None:
    a, b, c = sp("a"), sp("b"), sp("c")
    await seed(q, [a, b, c], [T1])
    now = time.time()
    await q.reschedule(T1, [a], state=PENDING, due=now - 10, reason="r")
    await q.reschedule(T1, [b], state=PENDING, due=now - 20, reason="r")
    assert [i.path for i in await q.claim(T1, 10)] == [c, b, a]  # c has due 0


@aio
async def test_mark_done_and_known_pushed(q: Queue) -> None:
    root, dep1, dep2 = sp("root"), sp("dep1"), sp("dep2")
    await seed(q, [root], [T1, T2])
    await q.reschedule(T1, [root], state=PENDING, due=0, reason="transient")
    await q.mark_done(T1, [root], [dep1, dep2])
    (item,) = [i for i in await q.items_for([root]) if i.target == T1]
    assert (item.state, item.reason) == (DONE, None)
    assert await q.claim(T1, 10) == []
    assert [i.path for i in await q.claim(T2, 10)] == [root]  # the other target still has it
    assert await q.known_pushed(T1, [root, dep1, dep2, sp("other")]) == {root, dep1, dep2}
    assert await q.known_pushed(T2, [root, dep1]) == set()
    assert await q.known_pushed(T1, []) == set()
    await q.record_pushed(T2, [dep1])
    assert await q.known_pushed(T2, [root, dep1]) == {dep1}
    assert await q.is_settled([root]) is False  # pending for T2
    await q.mark_done(T2, [root], [])
    assert await q.is_settled([root]) is True
    assert await q.done_since(time.time() - 60) == 2


@aio
async def test_known_pushed_with_more_paths_than_one_sql_chunk(q: Queue) -> None:
    many = [sp(f"k{i}") for i in range(1234)]
    await q.record_pushed(T1, many[::2])
    assert await q.known_pushed(T1, many) == set(many[::2])


@aio
async def test_parked_items_wait_for_their_due_time_or_unpark(q: Queue) -> None:
    a, b = sp("a"), sp("b")
    await seed(q, [a, b], [T1, T2])
    later = time.time() + 3600
    await q.reschedule(T1, [a], state=PARKED, due=later, reason="401 Unauthorized")
    await q.reschedule(T2, [a], state=PARKED, due=later, reason="403")
    assert [i.path for i in await q.claim(T1, 10)] == [b]
    assert await q.active_roots() == {a, b}  # parked still needs its GC root
    assert await q.unpark("attic:prod/") == 1  # only T1's
    claimed = {i.path: i for i in await q.claim(T1, 10)}
    assert set(claimed) == {a, b}
    assert claimed[a].state == PARKED and claimed[a].reason == "401 Unauthorized"
    assert [i.path for i in await q.claim(T2, 10)] == [b]  # T2's parked item still waits
    # a parked item whose re-check time has come is claimable without unpark
    await q.reschedule(T2, [a], state=PARKED, due=time.time() - 1, reason="403")
    assert {i.path for i in await q.claim(T2, 10)} == {a, b}


@aio
async def test_unpark_matches_the_prefix_literally(q: Queue) -> None:
    a = sp("a")
    targets = ["attic:a_b/c", "attic:aXb/c", "attic:PROD/c"]
    await seed(q, [a], targets)
    for t in targets:
        await q.reschedule(t, [a], state=PARKED, due=time.time() + 3600, reason="401")
    assert await q.unpark("attic:a_b/") == 1
    assert await q.unpark("attic:prod/") == 0


@aio
async def test_retry_resets_failed_and_parked(q: Queue) -> None:
    a, b, c, d = sp("a"), sp("b"), sp("c"), sp("d")
    await seed(q, [a, b, c, d], [T1])
    later = time.time() + 3600
    await q.reschedule(T1, [a], state=FAILED, due=later, reason="413")
    await q.reschedule(T1, [b], state=PARKED, due=later, reason="401")
    await q.reschedule(T1, [c], state=PENDING, due=later, reason="503")
    await q.mark_done(T1, [d], [])
    assert await q.claim(T1, 10) == []
    assert await q.retry([a]) == 1
    (item,) = await q.items_for([a])
    assert (item.state, item.attempts, item.due) == (PENDING, 0, 0)
    assert [i.path for i in await q.claim(T1, 10)] == [a]
    assert await q.retry([c, d, sp("unknown")]) == 0  # pending and done are not touched
    await q.reschedule(T1, [a], state=FAILED, due=later, reason="413")
    assert await q.retry(None) == 2  # --all: a and b
    assert {i.path for i in await q.claim(T1, 10)} == {a, b}
    (done,) = await q.items_for([d])
    assert done.state == DONE


@aio
async def test_drop_forgets_items_on_every_target(q: Queue) -> None:
    a, b = sp("a"), sp("b")
    await seed(q, [a, b], [T1, T2])
    assert await q.drop([a, sp("unknown")]) == 2
    assert await q.items_for([a]) == []
    assert len(await q.items_for([b])) == 2
    assert await q.drop([a]) == 0


@aio
async def test_counts_and_problems(q: Queue) -> None:
    paths = [sp(f"c{i}") for i in range(6)]
    await seed(q, paths, [T1])
    await seed(q, [sp("other")], [T2])
    later = time.time() + 3600
    await q.mark_done(T1, paths[:2], [])
    await q.reschedule(T1, [paths[2]], state=FAILED, due=0, reason="413 too large")
    await q.reschedule(T1, [paths[3]], state=PARKED, due=later, reason="401")
    await q.reschedule(T1, [paths[4]], state=PENDING, due=later, reason="503")
    counts = {c.target: c for c in await q.counts()}
    assert set(counts) == {T1, T2}
    c1 = counts[T1]
    assert (c1.pending, c1.done, c1.failed, c1.parked) == (2, 2, 1, 1)
    assert c1.oldest_pending is not None and c1.oldest_pending <= time.time()
    assert counts[T2] == TargetCounts(T2, pending=1, oldest_pending=counts[T2].oldest_pending)
    problems = await q.problems()
    assert {(p.path, p.state, p.reason) for p in problems} == {
        (paths[2], FAILED, "413 too large"),
        (paths[3], PARKED, "401"),
        (paths[4], PENDING, "503"),
    }
    assert len(await q.problems(limit=1)) == 1
    assert await q.active_roots() == {paths[3], paths[4], paths[5], sp("other")}


# -- durability across kill -9 ----------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from hookd.queue import Queue

    async def main() -> None:
        q = Queue(Path(sys.argv[1])).open()
        start = int(sys.argv[2])
        print("ready", flush=True)

        async def one(i: int) -> None:
            await q.add_request(None, ["/nix/store/" + "%032d" % i + "-p"], "hook")
            print(i, flush=True)  # the acknowledgement: only after the commit returned

        i = start
        while True:  # until killed
            await asyncio.gather(*(one(i + k) for k in range(16)))
            i += 16

    asyncio.run(main())
    """
)


def run_and_kill(db: Path, start: int, kill_after: int) -> set[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    acked: set[int] = set()
    try:
        first = proc.stdout.readline()
        assert first == "ready\n", first + (proc.stderr.read() if proc.stderr else "")
        while len(acked) < kill_after:
            line = proc.stdout.readline()
            assert line, f"child ended early: {proc.stderr.read() if proc.stderr else ''}"
            acked.add(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: more operations are in flight
        acked.update(int(line) for line in proc.stdout.read().split())  # printed before death
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.fault
def test_every_acknowledged_request_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite"
    acked: set[int] = set()
    start = 0
    for kill_after in (37, 400, 1111):
        acked |= run_and_kill(db, start, kill_after)
        start = max(acked) + 1000
        stored = {
            int(json.loads(outs)[0].split("/")[-1].split("-")[0])
            for (outs,) in rows(db, "SELECT out_paths FROM requests")
        }
        missing = acked - stored
        assert not missing, (
            f"{len(missing)} acknowledged request(s) lost, e.g. {sorted(missing)[:5]}"
        )
        assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert len(acked) >= 37 + 400 + 1111
    # and the queue itself opens and works on the recovered file
    q = Queue(db).open()
    try:
        assert asyncio.run(q.pending_requests()) >= len(acked)
        assert asyncio.run(q.add_request(None, [f"/nix/store/{0:032d}-p"], "hook")) is False
    finally:
        q.close()
