"""The durable queue: the only module that touches SQLite.

One connection, owned by one writer thread. Every operation is a function submitted to that
thread; the thread runs everything that is waiting in a single transaction (group commit), so a
burst of concurrent hooks costs one fsync and never meets SQLITE_BUSY. A caller's future resolves
only after the transaction that holds its operation has committed.

Tables:
- ``requests``: announcements as the hook sent them (drv + outputs), waiting to be resolved.
- ``items``: one row per (root path, target): pending / done / failed / parked, with attempts,
  a due time for the next try and the last reason.
- ``pushed``: every path a target is known to have (closure members included), so later
  closures do not ask again.
"""

from __future__ import annotations

import asyncio
import json
import queue as stdqueue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog

from hookd.errors import QueueError

T = TypeVar("T")
log = structlog.get_logger("hookd.queue")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY,
  drv_path TEXT NOT NULL DEFAULT '',
  out_paths TEXT NOT NULL,
  source TEXT NOT NULL,
  received REAL NOT NULL,
  due REAL NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  UNIQUE (drv_path, out_paths)
);
CREATE TABLE IF NOT EXISTS items (
  path TEXT NOT NULL,
  target TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'parked')),
  attempts INTEGER NOT NULL DEFAULT 0,
  due REAL NOT NULL DEFAULT 0,
  reason TEXT,
  added REAL NOT NULL,
  updated REAL NOT NULL,
  PRIMARY KEY (path, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_by_due ON items (target, state, due);
CREATE TABLE IF NOT EXISTS pushed (
  path TEXT NOT NULL,
  target TEXT NOT NULL,
  at REAL NOT NULL,
  PRIMARY KEY (target, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS skipped (
  path TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  at REAL NOT NULL
) WITHOUT ROWID;
"""

# An item's state, stored as these exact strings (the table's CHECK constraint names them too).
ItemState = Literal["pending", "done", "failed", "parked"]
PENDING: Final = "pending"
DONE: Final = "done"
FAILED: Final = "failed"
PARKED: Final = "parked"
ITEM_STATES: Final[tuple[ItemState, ...]] = (PENDING, DONE, FAILED, PARKED)
MAX_GROUP = 512
BUSY_TIMEOUT = 10.0  # seconds SQLite waits for another connection's write lock
STUCK_AFTER = 60.0  # a writer inside one transaction this long is not making progress

Op = tuple[Callable[[sqlite3.Connection], Any], Future[Any]]


@dataclass(frozen=True)
class Request:
    id: int
    drv_path: str | None
    out_paths: tuple[str, ...]
    source: str
    attempts: int


@dataclass(frozen=True)
class Item:
    path: str
    target: str
    state: ItemState
    attempts: int
    due: float
    reason: str | None


@dataclass(frozen=True)
class TargetCounts:
    target: str
    pending: int = 0
    done: int = 0
    failed: int = 0
    parked: int = 0
    oldest_pending: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """What metrics read at scrape time: per-target counts and unresolved requests."""

    counts: list[TargetCounts]
    requests: int


class Queue:
    """The queue. ``open()`` starts the writer thread; every public method is a coroutine."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._ops: stdqueue.SimpleQueue[Op | None] = stdqueue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None  # monotonic start of the running group, if any
        self.commits = 0  # number of transactions committed (for tests and status)
        self.failed_groups = 0  # transactions that failed as a whole (disk full, lock held...)
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> Queue:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._writer, args=(ready,), name="hookd-queue", daemon=True
        )
        self._thread.start()
        ready.result()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._ops.put(None)
            self._thread.join()
            self._thread = None

    def writer_alive(self, stuck_after: float = STUCK_AFTER) -> bool:
        """Cheap liveness check for the daemon's watchdog: the writer thread runs and is not
        stuck inside one transaction (a group normally takes milliseconds; waiting for a lock
        is bounded by ``busy_timeout``, so ``stuck_after`` must be well above it)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        since = self._busy_since
        return since is None or time.monotonic() - since < stuck_after

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged enqueue must survive power loss, not only a crash of the process.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        conn.executescript(SCHEMA)
        return conn

    def _writer(self, ready: Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        while True:
            first = self._ops.get()
            if first is None:
                break
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._ops.get_nowait()
                except stdqueue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            # A caller that gave up (its task was cancelled) is dropped here; once running, a
            # future can no longer be cancelled, so setting its result below cannot fail.
            group = [op for op in group if op[1].set_running_or_notify_cancel()]
            if group:
                self._busy_since = time.monotonic()
                try:
                    self._run_group(conn, group)
                except BaseException as e:  # never leave a caller waiting on a dead thread
                    self._fail_group(group, e)
                    if not isinstance(e, Exception):
                        raise
                finally:
                    self._busy_since = None
            if stop:
                break
        conn.close()

    def _run_group(self, conn: sqlite3.Connection, group: list[Op]) -> None:
        """One transaction for the whole group. A failing operation is rolled back to its
        savepoint and fails alone; a failing transaction (BEGIN meets a lock held past
        ``busy_timeout``, the disk is full, an I/O error) fails every caller of the group with
        a QueueError and leaves the connection usable, so the next group tries afresh."""
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut in group:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn)
                except Exception as e:
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back itself (SQLITE_FULL,
                        # SQLITE_IOERR...): the group's earlier operations are gone too.
                        raise
                    conn.execute("ROLLBACK TO op")  # one bad operation must not sink the others
                    conn.execute("RELEASE op")
                    results.append((fut, None, e))
                    continue
                conn.execute("RELEASE op")
                results.append((fut, value, None))
            conn.execute("COMMIT")
        except Exception as e:
            self._abort(conn)
            self._fail_group(group, e)
            return
        self.commits += 1
        for fut, value, err in results:
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(value)

    def _abort(self, conn: sqlite3.Connection) -> None:
        """Roll back what is left of a failed transaction. After a failed COMMIT (disk full)
        SQLite has usually rolled back already, and ROLLBACK would raise "no transaction is
        active": only roll back an open transaction, and never let this raise."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.error("queue.rollback_failed", db=str(self.path), error=str(e))

    def _fail_group(self, group: list[Op], cause: BaseException) -> None:
        self.failed_groups += 1
        self.last_error = f"{type(cause).__name__}: {cause}"
        log.error(
            "queue.transaction_failed", db=str(self.path), operations=len(group), error=str(cause)
        )
        err = QueueError(
            f"the queue database {self.path} could not commit ({cause}); nothing of this request "
            "was stored. Free disk space or stop whatever holds a lock on it; hookd retries by "
            "itself"
        )
        for _, fut in group:
            if not fut.done():
                fut.set_exception(err)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        fut: Future[T] = Future()
        self._ops.put((fn, fut))
        return await asyncio.wrap_future(fut)

    # -- requests ----------------------------------------------------------------------

    async def add_request(
        self, drv_path: str | None, out_paths: Sequence[str], source: str
    ) -> bool:
        """Record one announcement durably. Returns False when it was already queued (idempotent)."""
        outs = json.dumps(sorted(set(out_paths)))
        now = time.time()

        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO requests (drv_path, out_paths, source, received) VALUES (?, ?, ?, ?)",
                (drv_path or "", outs, source, now),
            )
            return cur.rowcount > 0

        return await self._call(op)

    async def add_requests(self, requests: Iterable[tuple[str | None, Sequence[str], str]]) -> int:
        rows = [(d or "", json.dumps(sorted(set(o))), s, time.time()) for d, o, s in requests]

        def op(c: sqlite3.Connection) -> int:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO requests (drv_path, out_paths, source, received) VALUES (?, ?, ?, ?)",
                rows,
            )
            return c.total_changes - before

        return await self._call(op)

    async def due_requests(self, limit: int = 256) -> list[Request]:
        now = time.time()

        def op(c: sqlite3.Connection) -> list[Request]:
            rows = c.execute(
                "SELECT id, drv_path, out_paths, source, attempts FROM requests WHERE due <= ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            return [Request(r[0], r[1] or None, tuple(json.loads(r[2])), r[3], r[4]) for r in rows]

        return await self._call(op)

    async def resolve_request(
        self, request_id: int, paths: Sequence[str], targets: Sequence[str], skipped: dict[str, str]
    ) -> int:
        """Replace a request by its items (one per path and target), in one transaction."""
        now = time.time()

        def op(c: sqlite3.Connection) -> int:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO items (path, target, state, due, added, updated) VALUES (?, ?, 'pending', 0, ?, ?)",
                [(p, t, now, now) for p in paths for t in targets],
            )
            added = c.total_changes - before
            c.executemany(
                "INSERT OR REPLACE INTO skipped (path, reason, at) VALUES (?, ?, ?)",
                [(p, r, now) for p, r in skipped.items()],
            )
            c.execute("DELETE FROM requests WHERE id = ?", (request_id,))
            return added

        return await self._call(op)

    async def defer_request(self, request_id: int, due: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE requests SET due = ?, attempts = attempts + 1 WHERE id = ?",
                (due, request_id),
            )

        await self._call(op)

    async def drop_request(self, request_id: int) -> None:
        await self._call(lambda c: c.execute("DELETE FROM requests WHERE id = ?", (request_id,)))

    # -- items -------------------------------------------------------------------------

    async def claim(self, target: str, limit: int) -> list[Item]:
        """Due work for one target: pending items, and parked items whose re-check time has come."""
        now = time.time()

        def op(c: sqlite3.Connection) -> list[Item]:
            rows = c.execute(
                "SELECT path, target, state, attempts, due, reason FROM items "
                "WHERE target = ? AND state IN ('pending', 'parked') AND due <= ? ORDER BY due, added LIMIT ?",
                (target, now, limit),
            ).fetchall()
            return [Item(*r) for r in rows]

        return await self._call(op)

    async def next_due(self, target: str) -> float | None:
        def op(c: sqlite3.Connection) -> float | None:
            row = c.execute(
                "SELECT MIN(due) FROM items WHERE target = ? AND state IN ('pending', 'parked')",
                (target,),
            ).fetchone()
            return row[0] if row else None

        return await self._call(op)

    async def mark_done(
        self, target: str, roots: Sequence[str], pushed: Iterable[str]
    ) -> list[float]:
        """Mark ``roots`` done on ``target``. Returns, for each root that thereby reached every
        target, the seconds since it entered the queue (the push latency metrics report)."""
        now = time.time()
        pushed_rows = [(p, target, now) for p in set(pushed) | set(roots)]

        def op(c: sqlite3.Connection) -> list[float]:
            c.executemany(
                "INSERT OR IGNORE INTO pushed (path, target, at) VALUES (?, ?, ?)", pushed_rows
            )
            fresh = [
                p
                for p in roots
                if c.execute(
                    "SELECT 1 FROM items WHERE path = ? AND target = ? AND state != 'done'",
                    (p, target),
                ).fetchone()
            ]
            c.executemany(
                "UPDATE items SET state = 'done', reason = NULL, updated = ? WHERE path = ? AND target = ?",
                [(now, p, target) for p in roots],
            )
            latencies = []
            for p in fresh:
                added, left = c.execute(
                    "SELECT MIN(added), SUM(state != 'done') FROM items WHERE path = ?", (p,)
                ).fetchone()
                if not left:
                    latencies.append(now - added)
            return latencies

        return await self._call(op)

    async def record_pushed(self, target: str, paths: Iterable[str]) -> None:
        """The target confirmed it has ``paths`` (uploaded, or present when asked): trust anew."""
        now = time.time()
        rows = [(p, target, now) for p in set(paths)]
        await self._call(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO pushed (path, target, at) VALUES (?, ?, ?)", rows
            )
        )

    async def reschedule(
        self,
        target: str,
        paths: Sequence[str],
        *,
        state: ItemState,
        due: float,
        reason: str,
        count_attempt: bool = True,
    ) -> None:
        now = time.time()
        inc = 1 if count_attempt else 0

        def op(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE items SET state = ?, due = ?, reason = ?, attempts = attempts + ?, updated = ? "
                "WHERE path = ? AND target = ?",
                [(state, due, reason, inc, now, p, target) for p in paths],
            )

        await self._call(op)

    async def known_pushed(
        self, target: str, paths: Iterable[str], *, since: float = 0.0
    ) -> set[str]:
        """Which of ``paths`` the target was seen to have at or after ``since``."""
        paths = list(paths)

        def op(c: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(paths), 500):
                chunk = paths[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    r[0]
                    for r in c.execute(
                        f"SELECT path FROM pushed WHERE target = ? AND at >= ? AND path IN ({marks})",
                        (target, since, *chunk),
                    )
                )
            return found

        return await self._call(op)

    async def last_pushed(self, target: str) -> str | None:
        """The path the target was most recently seen to have (``hookd check`` asks the cache
        for its narinfo), or None when nothing was pushed to it yet."""

        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT path FROM pushed WHERE target = ? ORDER BY at DESC LIMIT 1", (target,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(op)

    async def forget_pushed(self, target: str) -> int:
        """The target lost what it had (its cache was deleted): ask about every path again."""
        return await self._call(
            lambda c: c.execute("DELETE FROM pushed WHERE target = ?", (target,)).rowcount
        )

    async def park_pending(self, target: str, *, due: float, reason: str) -> int:
        """Park every pending item of a target (its token or cache is the problem, not a path)."""
        now = time.time()
        return await self._call(
            lambda c: (
                c.execute(
                    "UPDATE items SET state = 'parked', due = ?, reason = ?, updated = ? "
                    "WHERE target = ? AND state = 'pending'",
                    (due, reason, now, target),
                ).rowcount
            )
        )

    async def unpark(self, target_prefix: str) -> int:
        """Make parked items of matching targets due now (a token file changed, say)."""
        now = time.time()

        def op(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE items SET due = ?, updated = ? "
                "WHERE state = 'parked' AND substr(target, 1, length(?)) = ?",
                (now, now, target_prefix, target_prefix),
            ).rowcount

        return await self._call(op)

    async def retry(self, paths: Sequence[str] | None) -> int:
        now = time.time()

        def op(c: sqlite3.Connection) -> int:
            if paths is None:
                return c.execute(
                    "UPDATE items SET state = 'pending', due = 0, attempts = 0, updated = ? "
                    "WHERE state IN ('failed', 'parked')",
                    (now,),
                ).rowcount
            return sum(
                c.execute(
                    "UPDATE items SET state = 'pending', due = 0, attempts = 0, updated = ? "
                    "WHERE path = ? AND state IN ('failed', 'parked')",
                    (now, p),
                ).rowcount
                for p in paths
            )

        return await self._call(op)

    async def drop(self, paths: Sequence[str]) -> int:
        def op(c: sqlite3.Connection) -> int:
            return sum(c.execute("DELETE FROM items WHERE path = ?", (p,)).rowcount for p in paths)

        return await self._call(op)

    # -- reporting ---------------------------------------------------------------------

    async def counts(self) -> list[TargetCounts]:
        return await self._call(_counts)

    def snapshot(self) -> Snapshot:
        """Counts for a metrics scrape, from any thread, through a read-only connection of its
        own: WAL lets it read while the writer commits, and it never queues behind the writer."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=1.0, check_same_thread=False)
        try:
            counts = _counts(conn)
            requests = int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        finally:
            conn.close()
        return Snapshot(counts, requests)

    async def pending_requests(self) -> int:
        return await self._call(
            lambda c: int(c.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        )

    async def problems(self, limit: int = 20) -> list[Item]:
        def op(c: sqlite3.Connection) -> list[Item]:
            rows = c.execute(
                "SELECT path, target, state, attempts, due, reason FROM items "
                "WHERE state IN ('failed', 'parked') OR (state = 'pending' AND reason IS NOT NULL) "
                "ORDER BY updated DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [Item(*r) for r in rows]

        return await self._call(op)

    async def items_for(self, paths: Sequence[str]) -> list[Item]:
        def op(c: sqlite3.Connection) -> list[Item]:
            out: list[Item] = []
            for p in paths:
                out.extend(
                    Item(*r)
                    for r in c.execute(
                        "SELECT path, target, state, attempts, due, reason FROM items WHERE path = ?",
                        (p,),
                    )
                )
            return out

        return await self._call(op)

    async def done_since(self, since: float) -> int:
        return await self._call(
            lambda c: int(
                c.execute(
                    "SELECT COUNT(*) FROM items WHERE state = 'done' AND updated >= ?", (since,)
                ).fetchone()[0]
            )
        )

    async def active_roots(self) -> set[str]:
        """Paths that still have work (for GC-root bookkeeping)."""
        return await self._call(
            lambda c: {
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT path FROM items WHERE state IN ('pending', 'parked')"
                )
            }
        )

    async def is_settled(self, paths: Sequence[str]) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            for p in paths:
                row = c.execute(
                    "SELECT 1 FROM items WHERE path = ? AND state = 'pending' LIMIT 1", (p,)
                ).fetchone()
                if row:
                    return False
            return True

        return await self._call(op)

    async def all_items(self) -> list[Item]:
        return await self._call(
            lambda c: [
                Item(*r)
                for r in c.execute(
                    "SELECT path, target, state, attempts, due, reason FROM items ORDER BY path, target"
                )
            ]
        )

    async def skipped(self) -> dict[str, str]:
        return await self._call(
            lambda c: dict(c.execute("SELECT path, reason FROM skipped").fetchall())
        )


def _counts(c: sqlite3.Connection) -> list[TargetCounts]:
    by: dict[str, dict[str, Any]] = {}
    for target, state, n, oldest in c.execute(
        "SELECT target, state, COUNT(*), MIN(added) FROM items GROUP BY target, state"
    ):
        entry = by.setdefault(target, {"target": target})
        entry[state] = n
        if state == PENDING:
            entry["oldest_pending"] = oldest
    return [TargetCounts(**v) for _, v in sorted(by.items())]
