"""The Unix socket server: access check, bounded line reads, and a table of typed handlers.

Memory is bounded: at most MAX_CONNECTIONS connections, at most MAX_MESSAGE_BYTES buffered per
connection and BUFFER_BUDGET across all of them, each connection's first READ_CHUNK bytes aside
(so that a small request is served while other clients hog the budget). A client past a limit
gets an error reply (``busy`` or ``too-large``) and is disconnected; the hook then spools, so
nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import structlog

from hookd import protocol as proto
from hookd.config import Config
from hookd.errors import ConfigError, QueueError
from hookd.peercred import PeerCredentials, peer_credentials

log = structlog.get_logger("hookd.daemon")

IDLE_CONNECTION_TIMEOUT = 60.0
MAX_CONNECTIONS = 256
BUFFER_BUDGET = 16 * 1024 * 1024
# Also the StreamReader's limit: it buffers at most twice this per connection before pausing.
READ_CHUNK = 16 * 1024
# How long one request may take before the client gets an error instead of waiting on a
# component that no longer answers (``wait`` adds its own timeout to this).
OP_DEADLINE = 60.0

R = TypeVar("R", bound=proto.Request)


class Route(Protocol):
    async def __call__(self, request: proto.Request) -> proto.Reply: ...


@dataclass(frozen=True)
class Handler(Generic[R]):
    """Binds one request type to the coroutine that answers it."""

    kind: type[R]
    answer: Callable[[R], Awaitable[proto.Reply]]

    async def __call__(self, request: proto.Request) -> proto.Reply:
        if not isinstance(request, self.kind):
            raise TypeError(f"{type(request).__name__} routed to the {self.kind.__name__} handler")
        return await self.answer(request)


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Access:
    """Which peers may talk to the daemon: root, our own uid, allowed users and groups."""

    def __init__(self, config: Config) -> None:
        self.uids = {0, os.geteuid()}
        self.gids: set[int] = set()
        for user in config.allowed_users:
            try:
                self.uids.add(int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
            except KeyError:
                log.warning("config.unknown_user", user=user, key="allowed_users")
        for group in [
            *config.allowed_groups,
            *([config.socket_group] if config.socket_group else []),
        ]:
            try:
                self.gids.add(int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
            except KeyError:
                log.warning("config.unknown_group", group=group, key="allowed_groups")

    def allowed(self, uid: int, gid: int) -> bool:
        if uid in self.uids or gid in self.gids:
            return True
        if not self.gids:
            return False
        try:
            name = pwd.getpwuid(uid).pw_name
            return bool(self.gids & set(os.getgrouplist(name, gid)))
        except KeyError:
            return False


class SocketServer:
    def __init__(
        self,
        config: Config,
        routes: Mapping[str, Route],
        stopping: asyncio.Event,
        *,
        max_connections: int = MAX_CONNECTIONS,
        buffer_budget: int = BUFFER_BUDGET,
    ) -> None:
        self.config = config
        self.routes = routes
        self.stopping = stopping
        self.access = Access(config)
        self.max_connections = max_connections
        self.buffer_budget = buffer_budget
        self.connections = 0
        self.buffered = 0
        self._server: asyncio.base_events.Server | None = None

    async def listen(self) -> None:
        path = self.config.socket
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            # Not 0700 from the daemon's umask: the hook (root) and the admin group's CLI must
            # reach the socket; the socket's own mode (0660) is the access control.
            os.chmod(path.parent, 0o755)
        if path.exists() or path.is_symlink():
            if await _socket_alive(path):
                raise ConfigError(f"{path}: another hookd daemon is already listening there")
            path.unlink()
        # A deep backlog: a burst of hooks (max-jobs times builders) must not meet EAGAIN.
        self._server = await asyncio.start_unix_server(
            self.handle, path=str(path), limit=READ_CHUNK, backlog=1024
        )
        # Explicitly, whatever the umask (077): the hook runs as root, the CLI as admin users.
        os.chmod(path, 0o660)
        if self.config.socket_group:
            try:
                os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
            except (KeyError, PermissionError) as e:
                log.warning("socket.chown_failed", group=self.config.socket_group, error=str(e))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                self.config.socket.unlink()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        buf = bytearray()
        uid = -1
        try:
            if self.connections > self.max_connections:
                log.warning(
                    "socket.refused", reason="too many connections", limit=self.max_connections
                )
                await _reply(
                    writer,
                    proto.error_reply("busy", "the daemon has too many connections; try again"),
                )
                return
            try:  # None: this platform cannot tell; the socket's mode 0660 and group gate
                cred = peer_credentials(writer.get_extra_info("socket"))
            except OSError:
                cred = PeerCredentials(-1, -1, -1)
            pid, uid, gid = (cred.pid, cred.uid, cred.gid) if cred else (-1, -1, -1)
            if cred is not None and not self.access.allowed(uid, gid):
                log.warning("socket.refused", peer_uid=uid, peer_pid=pid, reason="user not allowed")
                await _reply(
                    writer,
                    proto.error_reply(
                        "forbidden",
                        f"uid {uid} may not use this socket (allowed_users/allowed_groups)",
                    ),
                )
                return
            while not self.stopping.is_set():
                try:
                    line = await self._read_line(reader, buf)
                except _Refused as e:
                    log.warning("socket.bad_request", peer_uid=uid, error=e.code, message=e.message)
                    await _reply(writer, proto.error_reply(e.code, e.message))
                    return
                except (TimeoutError, ConnectionError):
                    return
                if line is None:
                    return
                await _reply(writer, await self.answer(line, uid))
        except (ConnectionError, BrokenPipeError):
            pass
        except Exception:
            log.exception("socket.error", peer_uid=uid)
        finally:
            self.connections -= 1
            self.buffered -= len(buf)
            buf.clear()
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_line(self, reader: asyncio.StreamReader, buf: bytearray) -> bytes | None:
        """One request line, read in bounded chunks within IDLE_CONNECTION_TIMEOUT; None at EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IDLE_CONNECTION_TIMEOUT
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[: end + 1])
                del buf[: end + 1]
                self.buffered -= len(line)
                return line
            if len(buf) > proto.MAX_MESSAGE_BYTES:
                raise _Refused("too-large", f"request exceeds {proto.MAX_MESSAGE_BYTES} bytes")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(reader.read(READ_CHUNK), remaining)
            if not chunk:
                if not buf.strip():
                    return None
                line = bytes(buf)
                self.buffered -= len(buf)
                buf.clear()
                return line
            # A connection's first chunk is outside the shared budget (MAX_CONNECTIONS x
            # READ_CHUNK bounds it anyway): clients that hold the whole budget with unfinished
            # lines must not get every hook's small request refused.
            if buf and self.buffered + len(chunk) > self.buffer_budget:
                raise _Refused("busy", "the daemon is short of buffer space; try again")
            buf += chunk
            self.buffered += len(chunk)

    async def answer(self, line: bytes, uid: int = -1) -> bytes:
        try:
            request = proto.parse_request(line)
        except proto.ProtocolError as e:
            log.warning("socket.bad_request", peer_uid=uid, error=e.code, message=e.message)
            return proto.error_reply(e.code, e.message)
        op = request.op
        deadline = OP_DEADLINE + (request.timeout if isinstance(request, proto.Wait) else 0.0)
        try:
            reply = await asyncio.wait_for(self.routes[op](request), deadline)
            return proto.encode({"ok": True, **reply})
        except proto.ProtocolError as e:
            log.warning("socket.bad_request", peer_uid=uid, op=op, error=e.code, message=e.message)
            return proto.error_reply(e.code, e.message)
        except QueueError as e:  # the queue heals itself; the hook spools this request meanwhile
            log.error("socket.queue_unavailable", op=op, error=str(e))
            return proto.error_reply("queue-unavailable", str(e))
        except TimeoutError:
            log.error("socket.op_timeout", op=op, seconds=deadline)
            return proto.error_reply("internal", f"{op} did not complete within {deadline:g} s")
        except Exception as e:
            log.exception("socket.op_failed", op=op)
            return proto.error_reply("internal", f"{type(e).__name__}: {e}")


async def _reply(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def _socket_alive(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
