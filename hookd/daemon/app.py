"""The daemon's wiring: builds the components, starts them under supervision, stops them."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from typing import TYPE_CHECKING

import structlog

from hookd import __version__, metrics
from hookd.backoff import Backoff
from hookd.config import Config
from hookd.daemon.events import Progress, wait_event
from hookd.daemon.handlers import Handlers
from hookd.daemon.resolver import Resolver
from hookd.daemon.server import SocketServer
from hookd.daemon.spool import Spool
from hookd.daemon.supervisor import Liveness, Supervisor, sd_notify
from hookd.daemon.targets import build_targets, build_workers
from hookd.errors import ConfigError
from hookd.filters import Filter
from hookd.gcroots import GcRoots
from hookd.logs import setup_logging
from hookd.models import attic_server_key
from hookd.nix import Nix
from hookd.pusher import TargetWorker
from hookd.queue import Queue
from hookd.targets.base import Target

if TYPE_CHECKING:
    from hookd.tokens import TokenStore

log = structlog.get_logger("hookd.daemon")

# Files the daemon creates (queue, spool imports, keys) are private; the socket is made 0660
# explicitly. NixOS sets UMask= in the unit; elsewhere nothing else would.
UMASK = 0o077
GCROOT_INTERVAL = 5.0


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.nix = Nix(
            config.nix.bin_dir, config.nix.timeout, config.nix.dump_timeout, nice=config.nice
        )
        self.queue = Queue(config.db_path)
        self.gcroots = GcRoots(config.gc_roots_dir, enabled=config.nix.gc_roots)
        self.tokens: TokenStore | None = None
        self.targets: list[Target] = []
        self.workers: list[TargetWorker] = []
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.progress = Progress(self.stopping)
        self.supervisor = Supervisor(self.stopping, Backoff(1.0, 30.0))
        self.liveness = Liveness(self.queue, self.supervisor, self.stopping)
        self.resolver = Resolver(
            queue=self.queue,
            nix=self.nix,
            filter=Filter(config.filter),
            gcroots=self.gcroots,
            target_ids=lambda: [t.id for t in self.targets],
            backoff=Backoff(1.0, float(config.upload.max_backoff)),
            stopping=self.stopping,
            on_resolved=self._resolved,
        )
        self.spool = Spool(
            config.spool_dir,
            queue=self.queue,
            stopping=self.stopping,
            on_import=self.resolver.wake.set,
        )
        self.handlers = Handlers(
            config=config,
            queue=self.queue,
            nix=self.nix,
            gcroots=self.gcroots,
            workers=self.workers,
            tokens=None,
            progress=self.progress,
            liveness=self.liveness,
            wake_resolver=self.resolver.wake.set,
            import_spool=self.spool.import_all,
            wake_workers=self.wake_workers,
            started=self.started,
        )
        self.server = SocketServer(config, self.handlers.routes(), self.stopping)
        self.exporter = metrics.Exporter(
            config.metrics,
            metrics.registry(
                metrics.StateCollector(self.queue.snapshot, self.workers, config.spool_dir)
            ),
        )

    async def start(self) -> None:
        cfg = self.config
        os.umask(UMASK)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.spool_dir.mkdir(parents=True, exist_ok=True)
        self.queue.open()
        if cfg.servers:
            from hookd.tokens import TokenStore

            self.tokens = TokenStore(cfg.servers, store_dir=self.nix.store_dir())
            self.handlers.tokens = self.tokens
            setup_logging(cfg.log_format, cfg.log_level, redact=self.tokens.processor)
        self.targets = await asyncio.to_thread(build_targets, cfg, self.nix, self.tokens)
        self.workers.extend(
            build_workers(
                cfg, self.targets, queue=self.queue, nix=self.nix, on_progress=self.progress.notify
            )
        )
        await self.spool.import_all()
        await self.server.listen()
        spawn = self.supervisor.spawn
        spawn("resolver", self.resolver.run)
        spawn("spool", self.spool.watch)
        spawn("gcroots", self.gcroot_loop)
        spawn("liveness", self.liveness.run)
        if self.tokens is not None:
            spawn("tokens", self.token_loop)
        self.exporter.start()
        spawn("metrics", functools.partial(self.exporter.textfile_loop, self.stopping))
        for worker in self.workers:
            spawn(f"worker {worker.target.id}", functools.partial(worker.run, self.stopping))
        log.info(
            "daemon.ready",
            version=__version__,
            socket=str(cfg.socket),
            targets=[t.id for t in self.targets],
            state_dir=str(cfg.state_dir),
        )
        sd_notify("READY=1")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self.stopping.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon.stopping", reason="signal")
            sd_notify("STOPPING=1")
            self.stopping.set()

    async def shutdown(self) -> None:
        self.stopping.set()
        self.server.close()
        # Workers finish the batch in hand within stop_timeout; whatever is cut off stays queued.
        tasks = set(self.supervisor.tasks)
        _, pending = (
            await asyncio.wait(tasks, timeout=self.config.upload.stop_timeout)
            if tasks
            else (set(), set())
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for target in self.targets:
            try:
                await target.close()
            except Exception as e:
                log.warning("target.close_failed", target=target.id, error=str(e))
        self.exporter.stop()
        self.queue.close()
        log.info("daemon.stopped", unfinished_tasks=len(pending))

    # -- small loops and callbacks -------------------------------------------------------

    def wake_workers(self) -> None:
        for w in self.workers:
            w.wake.set()

    def _resolved(self) -> None:
        self.wake_workers()
        self.progress.notify()

    async def gcroot_loop(self) -> None:
        while not self.stopping.is_set():
            await self.progress.wait(GCROOT_INTERVAL)
            active = await self.queue.active_roots()
            await asyncio.to_thread(self.gcroots.release_except, active)

    async def token_loop(self) -> None:
        tokens = self.tokens
        if tokens is None:
            await wait_event(asyncio.Event(), self.stopping, None)
            return

        def changed(server: str) -> None:
            self.supervisor.fire(f"resume {server}", self._resume_server(server))

        await tokens.watch(changed, stop_event=self.stopping)

    async def _resume_server(self, server: str) -> None:
        n = await self.queue.unpark(attic_server_key(server) + "/")
        self.wake_workers()
        if n:
            log.info("parked.resumed", server=server, items=n)


def run_daemon(config: Config) -> int:
    daemon = Daemon(config)
    try:
        asyncio.run(daemon.run())
    except ConfigError as e:
        log.error("daemon.failed", error=str(e))
        return 1
    return 0
