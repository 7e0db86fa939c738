"""A lean HTTP/1.1 transport for small requests with a body in memory: ``PUT upload-path`` of
the many tiny NARs a closure consists of (issue 14).

Through httpx, each such request cost more CPU in the generic stack (connection-pool scan with
``getpeername`` per idle connection, anyio cancel scopes around every read and write, sniffio,
four stream wrappers) than hookd spends on the path itself. Here a request is: take an idle
keep-alive connection of the origin (or open one), write head and body as one buffer, let h11
(the HTTP/1.1 state machine httpx itself uses) parse the answer, keep the connection if the
exchange left it reusable. Large NARs streamed from ``nix-store --dump`` and every other call
stay on httpx.

Bounds, the same as the httpx path: ``read_timeout`` per read and write, ``connect_timeout``
per connect, a total deadline per request (one timer, rescheduled per step), response heads at most h11's 16 KiB, bodies
read up to a cap (``Reply.whole`` says whether that was all; an unread rest closes the
connection). Failures are raised as the httpx exceptions httpx raises for the same fault
(``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``, ...) so that the Attic client
classifies both paths in one place. A kept-alive connection the server closed while idle
(its keep-alive timeout) is detected before use or, if the close races the request, the
request is sent once more on a fresh connection: the body is in memory and the PUT idempotent.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import httpx

IO_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    whole: bool

    def header(self, name: str) -> str | None:
        key = name.lower().encode("ascii")
        for k, v in self.headers:  # h11 lower-cases names
            if k == key:
                return v.decode("latin-1")
        return None


_Origin = tuple[str, str, int]  # scheme, host, port


class _Conn:
    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    def reusable(self) -> bool:
        # at_eof: the server closed it while idle; is_closing: we did.
        return (
            self.h11.our_state is h11.IDLE
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class _Clock:
    """One timer per request: each step (connect, write, read) gets its own timeout and the
    whole request ends at ``deadline``; one ``asyncio.Timeout`` rescheduled per step costs half
    of a timer per read plus one for the total (issue 14)."""

    __slots__ = ("deadline", "loop", "phase", "timer")

    def __init__(self, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + seconds
        self.phase = "read"
        self.timer = asyncio.timeout_at(None)

    def arm(self, phase: str, seconds: float) -> None:
        self.phase = phase
        self.timer.reschedule(min(self.deadline, self.loop.time() + seconds))


class _Stale(Exception):
    """A reused connection failed before any byte of an answer: retry on a fresh one."""

    def __init__(self, error: httpx.TransportError) -> None:
        self.error = error


class UploadTransport:
    """Keep-alive HTTP/1.1 connections per origin for requests whose body is ``bytes``.

    ``ssl_context`` is the Attic client's own (the same CA bundle and client certificate as its
    httpx client); ``max_connections`` bounds both open requests and idle connections kept.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        read_timeout: float,
        connect_timeout: float,
        max_connections: int,
        user_agent: str,
    ) -> None:
        self._ssl = ssl_context
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._max = max(1, max_connections)
        self._slots = asyncio.Semaphore(self._max)
        self._idle: dict[_Origin, list[_Conn]] = {}
        self._user_agent = user_agent.encode("ascii")
        self._targets: dict[str, tuple[_Origin, bytes, bytes]] = {}
        self._closed = False
        self.opened = 0  # connections opened so far (tests and the benchmark read it)

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    def _split(self, url: str) -> tuple[_Origin, bytes, bytes]:
        known = self._targets.get(url)
        if known is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise httpx.UnsupportedProtocol(f"not an http(s) URL: {parts.scheme}://")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            host = parts.netloc.rpartition("@")[2]
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            known = (parts.scheme, parts.hostname, port), host.encode("ascii"), target.encode()
            if len(self._targets) < 64:
                self._targets[url] = known
        return known

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        cap: int,
        error_cap: int,
        timeout: float,
    ) -> Reply:
        """Send one request and read its answer: a 2xx body up to ``cap`` bytes, any other
        up to ``error_cap``. Past ``timeout`` seconds in all it raises TimeoutError (the
        caller's total deadline), past a step's own timeout the httpx exception for it."""
        origin, host, target = self._split(url)
        head = [(b"Host", host), (b"User-Agent", self._user_agent)]
        head.extend((k.encode("ascii"), v.encode("latin-1")) for k, v in headers.items())
        request = h11.Request(method=method, target=target, headers=head)
        clock = _Clock(timeout)
        caps = (cap, error_cap)
        try:
            async with self._slots, clock.timer:
                conn = self._take(origin)
                if conn is not None:
                    try:
                        return await self._exchange(conn, origin, request, body, caps, clock, True)
                    except _Stale:
                        pass  # the server closed the idle connection as we sent: once more, fresh
                conn = await self._connect(origin, clock)
                try:
                    return await self._exchange(conn, origin, request, body, caps, clock, False)
                except _Stale as e:  # not raised for a fresh connection; for the type checker
                    raise e.error from None
        except TimeoutError:
            if clock.loop.time() >= clock.deadline:
                raise  # the total deadline: the caller says so
            if clock.phase == "connect":
                raise httpx.ConnectTimeout(
                    f"no connection to {origin[1]}:{origin[2]} within {self._connect_timeout:g} s"
                ) from None
            if clock.phase == "write":
                raise httpx.WriteTimeout(
                    f"no progress writing for {self._read_timeout:g} s"
                ) from None
            raise httpx.ReadTimeout(f"no answer for {self._read_timeout:g} s") from None

    def _take(self, origin: _Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        return None

    def _give_back(self, origin: _Origin, conn: _Conn) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max:
            conn.close()
        else:
            idle.append(conn)

    async def _connect(self, origin: _Origin, clock: _Clock) -> _Conn:
        scheme, host, port = origin
        tls = self._ssl if scheme == "https" else None
        if scheme == "https" and tls is None:
            tls = ssl.create_default_context()
        clock.arm("connect", self._connect_timeout)
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None, limit=IO_SIZE
            )
        except (OSError, ssl.SSLError) as e:  # ssl.SSLError is an OSError; named for the reader
            raise httpx.ConnectError(f"{type(e).__name__}: {e}") from None
        self.opened += 1
        return _Conn(reader, writer)

    async def _exchange(
        self,
        conn: _Conn,
        origin: _Origin,
        request: h11.Request,
        body: bytes,
        caps: tuple[int, int],
        clock: _Clock,
        reused: bool,
    ) -> Reply:
        h = conn.h11
        got_bytes = False
        keep = False
        try:
            try:
                data = (
                    (h.send(request) or b"")
                    + (h.send(h11.Data(data=body)) or b"" if body else b"")
                    + (h.send(h11.EndOfMessage()) or b"")
                )
            except h11.LocalProtocolError as e:
                raise httpx.LocalProtocolError(str(e)) from None
            conn.writer.write(data)
            await self._drain(conn, clock)
            status = 0
            headers: list[tuple[bytes, bytes]] = []
            chunks: list[bytes] = []
            size = 0
            cap = caps[1]
            while True:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError as e:
                    raise httpx.RemoteProtocolError(f"malformed answer: {e}") from None
                if event is h11.NEED_DATA:
                    clock.arm("read", self._read_timeout)
                    chunk = await conn.reader.read(IO_SIZE)
                    if chunk:
                        got_bytes = True
                    elif not got_bytes and reused:
                        raise _Stale(httpx.RemoteProtocolError("server closed the connection"))
                    try:
                        h.receive_data(chunk)
                    except h11.RemoteProtocolError as e:
                        raise httpx.RemoteProtocolError(f"malformed answer: {e}") from None
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = list(event.headers)
                    cap = caps[0] if 200 <= status < 300 else caps[1]
                elif isinstance(event, h11.Data):
                    if size + len(event.data) > cap:
                        chunks.append(bytes(event.data[: cap - size]))
                        return Reply(status, headers, b"".join(chunks), False)
                    chunks.append(bytes(event.data))
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    keep = h.our_state is h11.DONE and h.their_state is h11.DONE
                    if keep:
                        h.start_next_cycle()
                    return Reply(status, headers, b"".join(chunks), True)
                elif isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError(
                        "server disconnected without sending a complete answer"
                    )
                # InformationalResponse (100 Continue) and PAUSED need nothing
        except OSError as e:
            error: httpx.TransportError = (
                httpx.WriteError(f"{type(e).__name__}: {e}")
                if h.our_state is not h11.DONE
                else httpx.ReadError(f"{type(e).__name__}: {e}")
            )
            if reused and not got_bytes:
                raise _Stale(error) from None
            raise error from None
        finally:
            if keep:
                self._give_back(origin, conn)
            else:
                conn.close()

    async def _drain(self, conn: _Conn, clock: _Clock) -> None:
        transport = conn.writer.transport
        if transport.get_write_buffer_size() == 0 and not transport.is_closing():
            return  # the common case: the kernel took the whole request at once
        clock.arm("write", self._read_timeout)
        await conn.writer.drain()
