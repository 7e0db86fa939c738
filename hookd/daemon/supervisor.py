"""Supervision and liveness: every background component restarts after a crash, and a
heartbeat that proves real progress (event loop and queue writer) feeds systemd's watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Literal

import structlog

from hookd import protocol as proto
from hookd.backoff import Backoff
from hookd.daemon.events import wait_event
from hookd.queue import Queue

log = structlog.get_logger("hookd.daemon")

ComponentState = Literal["running", "restarting", "stopped"]
# A component that ran this long before failing starts its backoff from the beginning again.
HEALTHY_RUN = 60.0
DEFAULT_HEARTBEAT = 5.0
PROBE_TIMEOUT = 10.0


class Supervisor:
    """Runs named components; logs a crash with its traceback and restarts it with backoff."""

    def __init__(self, stopping: asyncio.Event, backoff: Backoff) -> None:
        self.stopping = stopping
        self.backoff = backoff
        self.states: dict[str, ComponentState] = {}
        self.restarts: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self._track(asyncio.create_task(self._guard(name, factory), name=name))

    def fire(self, name: str, coro: Coroutine[object, object, None]) -> None:
        """A one-off task: kept referenced until done, its failure logged (never lost silently)."""
        self._track(asyncio.create_task(self._once(name, coro), name=name))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _once(self, name: str, coro: Coroutine[object, object, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task.crashed", task=name, restart=False)

    async def _guard(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        never = asyncio.Event()
        while not self.stopping.is_set():
            self.states[name] = "running"
            started = time.monotonic()
            try:
                await factory()
                if self.stopping.is_set():
                    break
                # A loop that returns while the daemon runs would silently stop its work.
                log.error("task.exited", task=name, restart=True)
            except asyncio.CancelledError:
                self.states[name] = "stopped"
                raise
            except Exception:
                log.exception("task.crashed", task=name, restart=True)
            if time.monotonic() - started > HEALTHY_RUN:
                failures = 0
            delay = self.backoff.delay(failures)
            failures += 1
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.states[name] = "restarting"
            await wait_event(never, self.stopping, delay)
        self.states[name] = "stopped"


def sd_notify(message: str) -> bool:
    """Send ``message`` to the service manager (systemd's NOTIFY_SOCKET); False if none."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    addr = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec= (as systemd recommends), if the watchdog is on for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    with contextlib.suppress(ValueError):
        if int(usec) > 0:
            return int(usec) / 2e6
    return None


class Liveness:
    """A heartbeat on the event loop that also asks the queue writer a question.

    Alive means: the loop ran the heartbeat on time and the writer thread answered a query
    within PROBE_TIMEOUT. Only then is WATCHDOG=1 sent, so a wedged writer or a blocked loop
    lets systemd's WatchdogSec= restart the process.
    """

    def __init__(self, queue: Queue, supervisor: Supervisor, stopping: asyncio.Event) -> None:
        self.queue = queue
        self.supervisor = supervisor
        self.stopping = stopping
        self.watchdog = watchdog_interval()
        self.interval = (
            min(self.watchdog, DEFAULT_HEARTBEAT) if self.watchdog else DEFAULT_HEARTBEAT
        )
        self.loop_lag = 0.0
        self.writer_ok = True
        self.last_ok = time.monotonic()
        self.beats = 0

    async def run(self) -> None:
        never = asyncio.Event()
        while not self.stopping.is_set():
            await self.beat()
            before = time.monotonic()
            await wait_event(never, self.stopping, self.interval)
            if not self.stopping.is_set():
                self.loop_lag = max(0.0, time.monotonic() - before - self.interval)

    async def beat(self) -> bool:
        self.writer_ok = self.queue.writer_alive() and await self._probe()
        alive = self.writer_ok and self.loop_lag < PROBE_TIMEOUT
        if alive:
            self.last_ok = time.monotonic()
            self.beats += 1
            if self.watchdog:
                sd_notify("WATCHDOG=1")
        else:
            log.error("liveness.failed", queue_writer=self.writer_ok, loop_lag=self.loop_lag)
        return alive

    async def _probe(self) -> bool:
        try:
            await asyncio.wait_for(self.queue.pending_requests(), PROBE_TIMEOUT)
        except Exception as e:  # the writer answered with an error, or did not answer at all
            log.warning("liveness.queue_probe_failed", error=f"{type(e).__name__}: {e}")
            return False
        return True

    def report(self) -> proto.Liveness:
        fresh = time.monotonic() - self.last_ok < 2 * self.interval + PROBE_TIMEOUT
        return {
            "alive": fresh and self.writer_ok and self.queue.writer_alive(),
            "loop_lag": round(self.loop_lag, 3),
            "queue_writer": self.queue.writer_alive(),
            "components": dict(self.supervisor.states),
        }
