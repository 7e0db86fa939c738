"""Wiring: socket server, spool watcher, resolver, per-target workers, token watcher, signals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import os
import pwd
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from hookd import __version__
from hookd import protocol as proto
from hookd.backoff import Backoff
from hookd.config import AtticTargetConfig, Config, StoreTargetConfig
from hookd.errors import ConfigError, NixError, QueueError
from hookd.filters import Filter
from hookd.gcroots import GcRoots
from hookd.logs import setup_logging
from hookd.nix import Nix
from hookd.peercred import peer_credentials
from hookd.pusher import Breaker, TargetWorker
from hookd.queue import Queue, Request
from hookd.targets.base import Target
from hookd.targets.store import StoreTarget

log = structlog.get_logger("hookd.daemon")

IDLE_CONNECTION_TIMEOUT = 60.0
RESOLVE_BATCH = 256
SPOOL_RESCAN_MS = 5000


def default_target(config: Config, nix: Nix) -> StoreTarget:
    """The embedded default: a signed file:// binary cache in the state directory."""
    key, pub = config.default_key_file, config.default_public_key_file
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        name = f"hookd-{socket.gethostname()}-1"
        nix.generate_key(name, key, pub)
        os.chmod(key, 0o600)
        log.info("default_cache.key_generated", public_key=pub.read_text().strip())
    url = f"file://{config.default_cache_dir}?compression=zstd"
    return StoreTarget(url, nix=nix, secret_key_file=key)


def build_targets(config: Config, nix: Nix, tokens: Any) -> list[Target]:
    targets: list[Target] = []
    for t in config.targets:
        if isinstance(t, StoreTargetConfig):
            targets.append(StoreTarget(t.store, nix=nix, secret_key_file=t.secret_key_file))
        elif isinstance(t, AtticTargetConfig):
            from hookd.targets.attic import AtticTarget

            targets.append(
                AtticTarget(
                    config.servers[t.server], t.cache, nix=nix, upload=config.upload, tokens=tokens
                )
            )
    if not targets:
        targets.append(default_target(config, nix))
    return targets


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.nix = Nix(config.nix.bin_dir, config.nix.timeout, config.nix.dump_timeout)
        self.filter = Filter(config.filter)
        self.queue = Queue(config.db_path)
        self.resolve_backoff = Backoff(1.0, float(config.upload.max_backoff))
        self.gcroots = GcRoots(config.gc_roots_dir, enabled=config.nix.gc_roots)
        self.tokens: Any = None
        self.targets: list[Target] = []
        self.workers: list[TargetWorker] = []
        self.stopping = asyncio.Event()
        self.resolver_wake = asyncio.Event()
        self.spool_wake = asyncio.Event()
        self.generation = 0
        self._progress_event = asyncio.Event()
        self.started = time.time()
        self._allowed_uids, self._allowed_gids = self._allowed_principals()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # -- set-up ------------------------------------------------------------------------

    def _allowed_principals(self) -> tuple[set[int], set[int]]:
        uids = {0, os.geteuid()}
        gids: set[int] = set()
        for user in self.config.allowed_users:
            try:
                uids.add(int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
            except KeyError:
                log.warning("config.unknown_user", user=user, key="allowed_users")
        for group in [
            *self.config.allowed_groups,
            *([self.config.socket_group] if self.config.socket_group else []),
        ]:
            try:
                gids.add(int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
            except KeyError:
                log.warning("config.unknown_group", group=group, key="allowed_groups")
        return uids, gids

    def peer_allowed(self, uid: int, gid: int) -> bool:
        if uid in self._allowed_uids or gid in self._allowed_gids:
            return True
        if not self._allowed_gids:
            return False
        try:
            name = pwd.getpwuid(uid).pw_name
            return bool(self._allowed_gids & set(os.getgrouplist(name, gid)))
        except KeyError:
            return False

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.spool_dir.mkdir(parents=True, exist_ok=True)
        self.queue.open()
        if cfg.servers:
            from hookd.tokens import TokenStore

            self.tokens = TokenStore(cfg.servers, store_dir=self.nix.store_dir())
            setup_logging(cfg.log_format, cfg.log_level, redact=self.tokens.processor)
        self.targets = await asyncio.to_thread(build_targets, cfg, self.nix, self.tokens)
        breakers: dict[str, Breaker] = {}
        for target in self.targets:
            breaker = breakers.setdefault(
                target.server_key,
                Breaker(
                    cfg.upload.breaker_threshold,
                    cfg.upload.breaker_cooldown,
                    cfg.upload.max_backoff,
                ),
            )
            self.workers.append(
                TargetWorker(
                    target,
                    queue=self.queue,
                    nix=self.nix,
                    breaker=breaker,
                    backoff=Backoff(cfg.upload.min_backoff, cfg.upload.max_backoff),
                    batch_size=cfg.upload.batch_size,
                    batch_window=cfg.upload.batch_window,
                    remember=cfg.upload.remember_pushed,
                    on_progress=self.notify_progress,
                )
            )
        await self.import_spool()
        await self._listen()
        self._spawn(self.resolve_loop, "resolver")
        self._spawn(self.spool_loop, "spool")
        self._spawn(self.gcroot_loop, "gcroots")
        if self.tokens is not None:
            self._spawn(self.token_loop, "tokens")
        for worker in self.workers:
            self._spawn(functools.partial(worker.run, self.stopping), f"worker {worker.target.id}")
        log.info(
            "daemon.ready",
            version=__version__,
            socket=str(cfg.socket),
            targets=[t.id for t in self.targets],
            state_dir=str(cfg.state_dir),
        )
        sd_notify("READY=1")

    def _spawn(self, factory: Callable[[], Awaitable[None]], name: str) -> None:
        async def guarded() -> None:
            # A background loop that dies would silently stop work: log it and start it again.
            while not self.stopping.is_set():
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("task.crashed", task=name)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _listen(self) -> None:
        path = self.config.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if await _socket_alive(path):
                raise ConfigError(f"{path}: another hookd daemon is already listening there")
            path.unlink()
        # A deep backlog: a burst of hooks (max-jobs times builders) must not meet EAGAIN.
        self._server = await asyncio.start_unix_server(
            self.handle, path=str(path), limit=proto.MAX_MESSAGE_BYTES + 2, backlog=1024
        )
        os.chmod(path, 0o660)
        if self.config.socket_group:
            try:
                os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
            except (KeyError, PermissionError) as e:
                log.warning("socket.chown_failed", group=self.config.socket_group, error=str(e))

    # -- run and stop --------------------------------------------------------------------

    async def run(self) -> None:
        lower_priority(self.config.nice)
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
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                self.config.socket.unlink()
        # Workers finish the batch in hand within stop_timeout; whatever is cut off stays queued.
        _, pending = (
            await asyncio.wait(self._tasks, timeout=self.config.upload.stop_timeout)
            if self._tasks
            else (set(), set())
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for target in self.targets:
            with contextlib.suppress(Exception):
                await target.close()
        self.queue.close()
        log.info("daemon.stopped", unfinished_tasks=len(pending))

    # -- progress notification -----------------------------------------------------------

    def notify_progress(self) -> None:
        self.generation += 1
        event, self._progress_event = self._progress_event, asyncio.Event()
        event.set()

    async def wait_progress(self, timeout: float) -> None:
        await self.wait_event(self._progress_event, timeout)

    async def wait_event(self, event: asyncio.Event, timeout: float | None) -> None:
        """Wait for ``event``, for a stop request or for ``timeout`` seconds, whichever comes first."""
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def wake_workers(self) -> None:
        for w in self.workers:
            w.wake.set()

    # -- socket ------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            pid, uid, gid = -1, -1, -1
        try:
            if not self.peer_allowed(uid, gid):
                log.warning("socket.refused", peer_uid=uid, peer_pid=pid, reason="user not allowed")
                writer.write(
                    proto.error_reply(
                        "forbidden",
                        f"uid {uid} may not use this socket (allowed_users/allowed_groups)",
                    )
                )
                await writer.drain()
                return
            while not self.stopping.is_set():
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_CONNECTION_TIMEOUT)
                except asyncio.IncompleteReadError as e:
                    if not e.partial.strip():
                        return
                    line = e.partial
                except asyncio.LimitOverrunError:
                    log.warning("socket.bad_request", peer_uid=uid, error="too-large")
                    writer.write(
                        proto.error_reply(
                            "too-large", f"request exceeds {proto.MAX_MESSAGE_BYTES} bytes"
                        )
                    )
                    await writer.drain()
                    return
                except (TimeoutError, ConnectionError):
                    return
                reply = await self.answer(line, uid)
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        except Exception:
            log.exception("socket.error", peer_uid=uid)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def answer(self, line: bytes, uid: int = -1) -> bytes:
        try:
            request = proto.decode_request(line)
        except proto.ProtocolError as e:
            log.warning("socket.bad_request", peer_uid=uid, error=e.code, message=e.message)
            return proto.error_reply(e.code, e.message)
        op = request["op"]
        try:
            handler = getattr(self, f"op_{op}")
            result: dict[str, Any] = await handler(request)
            return proto.encode({"ok": True, **result})
        except proto.ProtocolError as e:
            log.warning("socket.bad_request", peer_uid=uid, op=op, error=e.code, message=e.message)
            return proto.error_reply(e.code, e.message)
        except QueueError as e:  # the queue heals itself; the hook spools this request meanwhile
            log.error("socket.queue_unavailable", op=op, error=str(e))
            return proto.error_reply("queue-unavailable", str(e))
        except Exception as e:
            log.exception("socket.op_failed", op=op)
            return proto.error_reply("internal", f"{type(e).__name__}: {e}")

    async def op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    async def op_enqueue(self, request: dict[str, Any]) -> dict[str, Any]:
        fresh = await self.queue.add_request(
            request.get("drv_path"), request.get("out_paths", []), request.get("source", "hook")
        )
        self.resolver_wake.set()
        return {"queued": fresh}

    async def op_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.status()

    async def op_wait(self, request: dict[str, Any]) -> dict[str, Any]:
        timeout = request.get("timeout", 60)
        if not isinstance(timeout, int | float) or timeout < 0:
            raise proto.ProtocolError(
                "bad-request", "timeout must be a non-negative number of seconds"
            )
        paths = self._paths(request, required=False)
        deadline = time.monotonic() + timeout
        while True:
            if await self.settled(paths):
                return {"drained": True, **(await self.summary(paths))}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"drained": False, **(await self.summary(paths))}
            await self.wait_progress(min(remaining, 1.0))

    async def op_retry(self, request: dict[str, Any]) -> dict[str, Any]:
        paths = None if request.get("all") else self._paths(request, required=True)
        n = await self.queue.retry(paths)
        self.wake_workers()
        return {"retried": n}

    async def op_drop(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"dropped": await self.queue.drop(self._paths(request, required=True) or [])}

    async def op_backfill(self, request: dict[str, Any]) -> dict[str, Any]:
        since = request.get("since", 0)
        if not isinstance(since, int | float):
            raise proto.ProtocolError("bad-request", "since must be seconds since the epoch")
        infos = await asyncio.to_thread(self.nix.paths_registered_since, float(since))
        candidates = [
            i.path
            for i in infos
            if (i.ultimate or not i.signatures) and not i.path.endswith(".drv")
        ]
        requests = [
            (None, candidates[i : i + 500], "backfill") for i in range(0, len(candidates), 500)
        ]
        added = await self.queue.add_requests(requests)
        self.resolver_wake.set()
        return {"scanned": len(infos), "queued": len(candidates), "requests": added}

    def _paths(self, request: dict[str, Any], *, required: bool) -> list[str] | None:
        paths = request.get("paths")
        if paths is None:
            if required:
                raise proto.ProtocolError(
                    "bad-request", "paths (a list of store paths) is required"
                )
            return None
        if not isinstance(paths, list):
            raise proto.ProtocolError("bad-request", "paths must be a list of store paths")
        return [proto.validate_store_path(p) for p in paths]

    # -- queue state -------------------------------------------------------------------

    async def settled(self, paths: list[str] | None) -> bool:
        if await self.queue.pending_requests():
            return False
        if paths is not None:
            return await self.queue.is_settled(paths)
        counts = await self.queue.counts()
        active = {w.target.id for w in self.workers}
        return all(c.pending == 0 for c in counts if c.target in active)

    async def summary(self, paths: list[str] | None) -> dict[str, Any]:
        if paths is None:
            counts = await self.queue.counts()
            return {"targets": {c.target: _counts(c) for c in counts}}
        items = await self.queue.items_for(paths)
        out: dict[str, Any] = {}
        for item in items:
            out.setdefault(item.path, {})[item.target] = {
                "state": item.state,
                "reason": item.reason,
            }
        return {"paths": out}

    async def status(self) -> dict[str, Any]:
        counts = {c.target: c for c in await self.queue.counts()}
        now = time.time()
        targets = []
        for w in self.workers:
            c = counts.get(w.target.id)
            targets.append(
                {
                    "id": w.target.id,
                    **(_counts(c) if c else {"pending": 0, "done": 0, "failed": 0, "parked": 0}),
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
        problems = [
            {
                "path": i.path,
                "target": i.target,
                "state": i.state,
                "attempts": i.attempts,
                "reason": i.reason,
            }
            for i in await self.queue.problems()
        ]
        result: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(now - self.started, 1),
            "socket": str(self.config.socket),
            "requests_pending": await self.queue.pending_requests(),
            "done_last_minute": await self.queue.done_since(now - 60),
            "targets": targets,
            "problems": problems,
            "gc_roots": await asyncio.to_thread(self.gcroots.count),
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

    # -- resolver ----------------------------------------------------------------------

    async def resolve_loop(self) -> None:
        while not self.stopping.is_set():
            self.resolver_wake.clear()
            requests = await self.queue.due_requests(RESOLVE_BATCH)
            # Concurrently: their queue writes then share one transaction (group commit).
            await asyncio.gather(*(self.resolve(r) for r in requests))
            if requests:
                self.wake_workers()
                self.notify_progress()
                if len(requests) == RESOLVE_BATCH:
                    continue
            await self.wait_event(self.resolver_wake, 30.0)

    async def resolve(self, request: Request) -> None:
        outs = list(request.out_paths)
        fixed = False
        try:
            if request.drv_path:
                drv_outs, fixed = await asyncio.to_thread(
                    self.nix.derivation_outputs, request.drv_path
                )
                outs = outs or drv_outs
        except NixError as e:
            if "not valid" in str(e) or "does not exist" in str(e) or "No such file" in str(e):
                log.warning(
                    "resolve.dropped",
                    drv=request.drv_path,
                    reason="derivation no longer in the store",
                )
                await self.queue.drop_request(request.id)
                return
            delay = self.resolve_backoff.delay(request.attempts)
            log.warning("resolve.retry", drv=request.drv_path, seconds=delay, error=str(e))
            await self.queue.defer_request(request.id, time.time() + delay)
            return
        keep, skipped = [], {}
        for path in outs:
            reason = self.filter.skip_reason(path, fixed_output=fixed)
            if reason:
                skipped[path] = reason
                log.info("skip", path=path, reason=reason)
            else:
                keep.append(path)
        await asyncio.to_thread(self.gcroots.pin, keep)
        added = await self.queue.resolve_request(
            request.id, keep, [t.id for t in self.targets], skipped
        )
        log.debug(
            "resolved", drv=request.drv_path, paths=keep, new_items=added, source=request.source
        )

    # -- spool -------------------------------------------------------------------------

    async def import_spool(self) -> int:
        spool = self.config.spool_dir
        try:
            names = sorted(
                n for n in os.listdir(spool) if not n.startswith(".") and n.endswith(".json")
            )
        except FileNotFoundError:
            return 0
        imported = 0
        for name in names:
            path = spool / name
            try:
                raw = path.read_bytes()
                request = proto.decode_request(raw.strip())
                if request["op"] != "enqueue":
                    raise proto.ProtocolError(
                        "bad-op", f"spool files hold enqueue requests, not {request['op']!r}"
                    )
            except FileNotFoundError:
                continue
            except (proto.ProtocolError, OSError) as e:
                self._quarantine(path, str(e))
                continue
            await self.queue.add_request(
                request.get("drv_path"), request.get("out_paths", []), "spool"
            )
            path.unlink(missing_ok=True)  # only after the commit above
            imported += 1
        if imported:
            log.info("spool.imported", files=imported)
            self.resolver_wake.set()
        return imported

    def _quarantine(self, path: Path, reason: str) -> None:
        corrupt = self.config.spool_dir / "corrupt"
        corrupt.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            os.replace(path, corrupt / path.name)
        log.error("spool.corrupt", file=str(path), moved_to=str(corrupt / path.name), reason=reason)

    async def spool_loop(self) -> None:
        import watchfiles

        # A rescan on every wake-up and at least every few seconds: files spooled while the
        # start-up import ran (before the watch was armed) are picked up too.
        async for _changes in watchfiles.awatch(
            self.config.spool_dir,
            stop_event=self.stopping,
            debounce=50,
            step=20,
            recursive=False,
            rust_timeout=SPOOL_RESCAN_MS,
            yield_on_timeout=True,
        ):
            await self.import_spool()

    # -- GC roots and tokens -------------------------------------------------------------

    async def gcroot_loop(self) -> None:
        while not self.stopping.is_set():
            await self.wait_progress(5.0)
            active = await self.queue.active_roots()
            await asyncio.to_thread(self.gcroots.release_except, active)

    async def token_loop(self) -> None:
        def changed(server: str) -> None:
            asyncio.get_running_loop().create_task(self._resume_server(server))

        await self.tokens.watch(changed, stop_event=self.stopping)

    async def _resume_server(self, server: str) -> None:
        n = await self.queue.unpark(f"attic:{server}/")
        self.wake_workers()
        if n:
            log.info("parked.resumed", server=server, items=n)


def _counts(c: Any) -> dict[str, int]:
    return {"pending": c.pending, "done": c.done, "failed": c.failed, "parked": c.parked}


async def _socket_alive(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def lower_priority(nice: int) -> None:
    """Builds come first: the daemon and the nix processes it starts yield the CPU to them."""
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)


def sd_notify(message: str) -> None:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    addr = "\0" + target[1:] if target.startswith("@") else target
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


def run_daemon(config: Config) -> int:
    daemon = Daemon(config)
    try:
        asyncio.run(daemon.run())
    except ConfigError as e:
        log.error("daemon.failed", error=str(e))
        return 1
    return 0
