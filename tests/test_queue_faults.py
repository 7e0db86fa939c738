"""The queue heals itself: a failed transaction fails its callers, never the writer thread.

Real SQLite, a real second connection holding the write lock, and a real (small) tmpfs that
fills up. Each case waits on the queue with a deadline: before the fix, the writer thread died
and these calls hung for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

import pytest

from hookd.errors import QueueError
from hookd.queue import Queue
from tests.conftest import HookdProcess, fill, small_tmpfs

P = ParamSpec("P")
R = TypeVar("R")
DEADLINE = 30.0  # generous: only a hung writer exceeds it


def aio(fn: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def path(i: int, pad: int = 0) -> str:
    return f"/nix/store/{i:032d}-p{'x' * pad}"


async def enqueue(q: Queue, i: int, pad: int = 0) -> bool:
    return await asyncio.wait_for(q.add_request(None, [path(i, pad)], "hook"), DEADLINE)


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@aio
async def test_lock_held_past_busy_timeout_fails_the_group_and_the_writer_recovers(
    tmp_path: Path,
) -> None:
    db = tmp_path / "queue.sqlite"
    q = Queue(db, busy_timeout=0.2).open()
    try:
        assert await enqueue(q, 1)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. an operator's sqlite3 shell, or a backup
        try:
            with pytest.raises(QueueError, match=r"could not commit.*locked"):
                await enqueue(q, 2)
            assert q.writer_alive()
            with pytest.raises(QueueError):  # still locked: fails again, still no hang
                await enqueue(q, 3)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await enqueue(q, 4)  # the lock is gone: the very next transaction commits
        assert await asyncio.wait_for(q.pending_requests(), DEADLINE) == 2
        assert q.writer_alive() and q.failed_groups == 2
    finally:
        q.close()
    assert not q.writer_alive()


@aio
async def test_a_caller_that_gives_up_does_not_kill_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite"
    q = Queue(db, busy_timeout=DEADLINE).open()
    try:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.ensure_future(q.add_request(None, [path(1)], "hook"))
        await wait_until(lambda: q._busy_since is not None)  # the writer waits for the lock
        task.cancel()  # e.g. the socket handler's client went away
        with contextlib.suppress(asyncio.CancelledError):
            await task
        other.execute("ROLLBACK")
        other.close()
        assert await enqueue(q, 2)
        assert q.writer_alive()
    finally:
        q.close()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tmpfs") as mnt:
        yield mnt


@aio
async def test_disk_full_fails_the_group_and_the_writer_recovers_when_space_returns(
    tiny_tmpfs: Path,
) -> None:
    q = Queue(tiny_tmpfs / "queue.sqlite").open()
    try:
        acknowledged = 0
        for i in range(5):
            acknowledged += await enqueue(q, i)
        filler = fill(tiny_tmpfs)
        failure: QueueError | None = None
        for i in range(100, 400):  # big rows: the WAL must grow, which a full disk refuses
            try:
                acknowledged += await enqueue(q, i, pad=4000)
            except QueueError as e:
                failure = e
                break
        assert failure is not None, "the disk never filled up"
        assert "full" in str(failure)
        assert q.writer_alive()
        filler.unlink()
        assert await enqueue(q, 1000, pad=4000)  # space is back: the next transaction commits
        acknowledged += 1
        # Every acknowledged request is there; the failed one left nothing half-written.
        assert await asyncio.wait_for(q.pending_requests(), DEADLINE) == acknowledged
        assert q.writer_alive()
    finally:
        q.close()


# -- the daemon: a locked queue is an error reply, the hook spools, everything comes back ------


@pytest.mark.fault
def test_daemon_answers_an_error_while_the_queue_is_locked_and_recovers(
    hookd: HookdProcess,
) -> None:
    hookd.start()
    out = f"/nix/store/{'1' * 32}-locked"
    other = sqlite3.connect(hookd.state / "queue.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # held past the daemon's 10 s busy_timeout
    try:
        hook = subprocess.run(
            [str(hookd.hook_script)],
            env={"OUT_PATHS": out, "DRV_PATH": "", "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert hook.returncode == 0 and "spooled" in hook.stderr, hook.stderr
        assert list(hookd.spool.glob("*.json")), "the hook did not spool"
        reply = hookd.client.raw(
            json.dumps({"v": 1, "op": "enqueue", "out_paths": [out + "2"]}).encode() + b"\n",
            timeout=DEADLINE,
        )
        assert reply["ok"] is False and reply["error"] == "queue-unavailable", reply
        assert "locked" in reply["message"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    # No restart: the next request is acknowledged, status answers, the spool is imported.
    reply = hookd.client.raw(
        json.dumps({"v": 1, "op": "enqueue", "out_paths": [out + "3"]}).encode() + b"\n",
        timeout=DEADLINE,
    )
    assert reply["ok"] is True, reply
    assert hookd.client.call({"v": 1, "op": "status"}, timeout=DEADLINE)["ok"] is True
    deadline = time.monotonic() + DEADLINE
    while list(hookd.spool.glob("*.json")):
        assert time.monotonic() < deadline, f"spool never imported:\n{hookd.log()[-3000:]}"
        time.sleep(0.1)
    assert hookd.proc is not None and hookd.proc.poll() is None
