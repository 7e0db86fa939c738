"""Prometheus metrics (docs/metrics.md): a read-only view of the queue and the workers.

Two kinds of metric:

- *events*, counted where they happen: paths and bytes pushed, failures by class, push latency,
  requests by how they arrived (the hook's socket acknowledgement or its spool file). These are
  module-level counters that the pusher and the daemon update with one call each;
- *state*, read at scrape time by ``StateCollector``: queue depth by target and state, the
  oldest pending item's age, breakers, parked targets with the class of the reason, workers in
  a push, spool files waiting. The queue is read through its own read-only SQLite connection
  (``Queue.snapshot``), so a scrape never waits behind the queue's writer.

Labels have bounded values: target ids (from the configuration), states, error classes. No
token and no text from a server ever becomes a label.

``Exporter`` serves them on an opt-in HTTP listener and/or rewrites a node-exporter textfile
atomically every ``textfile_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from hookd import __version__
from hookd.config import MetricsConfig
from hookd.errors import (
    AuthError,
    CacheGoneError,
    CorruptUploadError,
    ParkedError,
    PermanentError,
    TransientError,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from hookd.pusher import TargetWorker
    from hookd.queue import Snapshot

log = structlog.get_logger("hookd.metrics")

FailureClass = Literal[
    "transient", "auth", "missing_cache", "configuration", "permanent", "corrupt_upload"
]
FAILURE_CLASSES: tuple[FailureClass, ...] = (
    "transient",
    "auth",
    "missing_cache",
    "configuration",
    "permanent",
    "corrupt_upload",
)
Via = Literal["socket", "spool"]
SOURCES = ("hook", "cli", "backfill")  # what clients put in `source`; anything else is "other"

# Latency from a path entering the queue to the last target having it: most pushes take
# seconds, a parked target or a long outage hours.
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)

PATHS_PUSHED = Counter(
    "hookd_paths_pushed",
    "Store paths uploaded to a target (not counting paths the target already had).",
    ["target"],
    registry=None,
)
BYTES_PUSHED = Counter(
    "hookd_bytes_pushed", "NAR bytes uploaded to a target.", ["target"], registry=None
)
FAILURES = Counter(
    "hookd_push_failures",
    "Failed push attempts by target and error class (transient ones are retried).",
    ["target", "class"],
    registry=None,
)
REQUESTS = Counter(
    "hookd_requests",
    "Enqueue requests committed to the queue: via the socket (the hook was acknowledged) or "
    "imported from the spool (the hook could not reach the daemon and spooled the request).",
    ["via", "source"],
    registry=None,
)
SPOOL_QUARANTINED = Counter(
    "hookd_spool_quarantined",
    "Spool files that could not be read and were moved to spool/corrupt.",
    registry=None,
)
PUSH_LATENCY = Histogram(
    "hookd_push_latency_seconds",
    "Seconds from a path entering the queue (its build finished) until every target has it.",
    buckets=LATENCY_BUCKETS,
    registry=None,
)
EVENTS: tuple[Collector, ...] = (
    PATHS_PUSHED,
    BYTES_PUSHED,
    FAILURES,
    REQUESTS,
    SPOOL_QUARANTINED,
    PUSH_LATENCY,
)


def failure_class(error: BaseException) -> FailureClass:
    """The class an error is acted on as (hookd.errors), as a bounded label value."""
    if isinstance(error, AuthError):
        return "auth"
    if isinstance(error, CacheGoneError):
        return "missing_cache"
    if isinstance(error, ParkedError):  # TLS, redirects, a cache made for another store
        return "configuration"
    if isinstance(error, CorruptUploadError):
        return "corrupt_upload"
    if isinstance(error, TransientError):
        return "transient"
    if isinstance(error, PermanentError):
        return "permanent"
    return "transient"  # the pusher keeps anything unclassified queued, as a transient error


# -- events: one call where each happens -------------------------------------------------------


def record_push(target: str, paths: int, nbytes: int) -> None:
    PATHS_PUSHED.labels(target).inc(paths)
    BYTES_PUSHED.labels(target).inc(nbytes)


def record_failure(target: str, error: BaseException) -> FailureClass:
    cls = failure_class(error)
    FAILURES.labels(target, cls).inc()
    return cls


def record_completed(latencies: Iterable[float]) -> None:
    for seconds in latencies:
        PUSH_LATENCY.observe(max(0.0, seconds))


def record_requests(via: Via, source: str, count: int = 1) -> None:
    if count:
        REQUESTS.labels(via, source if source in SOURCES else "other").inc(count)


def record_quarantined() -> None:
    SPOOL_QUARANTINED.inc()


# -- state: read at scrape time ----------------------------------------------------------------


class StateCollector(Collector):
    """Gauges computed from the queue and the workers whenever metrics are collected."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        workers: Sequence[TargetWorker],
        spool_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self._workers = workers
        self._spool_dir = spool_dir
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily("hookd_build", "hookd's version.")
        info.add_metric([], {"version": __version__})
        yield info
        readable = GaugeMetricFamily(
            "hookd_queue_readable", "1 if the queue database could be read for this scrape."
        )
        try:
            snap = self._snapshot()
        except Exception as e:  # a scrape must answer even when the disk does not
            log.warning("metrics.queue_unreadable", error=str(e))
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        now = self._clock()
        counts = {c.target: c for c in snap.counts}
        items = GaugeMetricFamily(
            "hookd_queue_items", "Queue items by target and state.", labels=["target", "state"]
        )
        oldest = GaugeMetricFamily(
            "hookd_oldest_pending_age_seconds",
            "Age of the oldest pending item of a target (0 when nothing is pending).",
            labels=["target"],
        )
        breaker = GaugeMetricFamily(
            "hookd_breaker_open",
            "1 while the circuit breaker of the target's server is open.",
            labels=["target"],
        )
        parked = GaugeMetricFamily(
            "hookd_target_parked",
            "1 while a target has parked items, labelled with the class of the reason (auth, "
            "missing_cache, configuration; unknown if parked before this daemon started).",
            labels=["target", "reason"],
        )
        busy = GaugeMetricFamily(
            "hookd_worker_busy",
            "1 while the target's worker is pushing a batch.",
            labels=["target"],
        )
        for w in self._workers:
            tid = w.target.id
            c = counts.get(tid)
            for state in ("pending", "done", "failed", "parked"):
                items.add_metric([tid, state], getattr(c, state) if c else 0)
            age = now - c.oldest_pending if c and c.oldest_pending else 0.0
            oldest.add_metric([tid], max(0.0, age))
            breaker.add_metric([tid], 1 if w.breaker.allow() > 0 else 0)
            if c and c.parked:
                parked.add_metric([tid, w.stats.parked_class or "unknown"], 1)
            busy.add_metric([tid], 1 if w.busy else 0)
        yield from (items, oldest, breaker, parked, busy)
        unresolved = GaugeMetricFamily(
            "hookd_requests_unresolved",
            "Enqueue requests committed but not yet resolved into queue items.",
        )
        unresolved.add_metric([], snap.requests)
        yield unresolved
        spooled = GaugeMetricFamily(
            "hookd_spool_files", "Spooled hook requests waiting to be imported."
        )
        spooled.add_metric([], _spool_files(self._spool_dir))
        yield spooled


def _spool_files(spool: Path) -> int:
    try:
        with os.scandir(spool) as it:
            return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except OSError:
        return 0


def registry(state: StateCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    for collector in (*EVENTS, state):
        reg.register(collector)
    return reg


# -- exposition ---------------------------------------------------------------------------------


def write_textfile(path: Path, reg: CollectorRegistry) -> None:
    """Replace ``path`` atomically (a temporary name node-exporter ignores, then rename), mode
    0644 so node-exporter's user can read it whatever the daemon's umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = generate_latest(reg)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class Exporter:
    """The opt-in HTTP listener and the textfile writer for one registry."""

    def __init__(self, config: MetricsConfig, reg: CollectorRegistry) -> None:
        self.config = config
        self.registry = reg
        self._server: WSGIServer | None = None

    @property
    def enabled(self) -> bool:
        return self.config.listen is not None or self.config.textfile is not None

    def start(self) -> None:
        """Start the HTTP listener (in its own thread) if one is configured."""
        if self.config.listen is None:
            return
        from prometheus_client import start_http_server

        host, port = self.config.listen
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:  # pushing matters more than metrics: log the fix, keep running
            log.error(
                "metrics.listen_failed",
                address=f"{host}:{port}",
                error=str(e),
                fix="choose a free address in metrics.listen (another process uses this one)",
            )
            return
        log.info("metrics.listening", address=f"{host}:{port}")

    async def textfile_loop(self, stopping: asyncio.Event) -> None:
        path = self.config.textfile
        if path is None:
            return
        while not stopping.is_set():
            await self.write_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.config.textfile_interval)
        await self.write_once()  # the state at shutdown, not a minute before it

    async def write_once(self) -> None:
        path = self.config.textfile
        if path is None:
            return
        try:
            await asyncio.to_thread(write_textfile, path, self.registry)
        except OSError as e:  # a full or missing directory must not stop the daemon
            log.warning("metrics.textfile_failed", path=str(path), error=str(e))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
