"""``AtticClient``: the only code in hookd that speaks HTTP to an Attic server (docs/attic-api.md).

One client per (server, token source). Every call:

- sends the token only to the configured endpoint's origin, or to an origin the configuration
  lists in ``allowed_origins`` (an ``api_endpoint`` advertised by the server elsewhere is
  refused and logged with both origins);
- has a total deadline (``3 x request_timeout``, plus time for the NAR at 128 KiB/s for an
  upload) on top of httpx's per-read timeout, so a server trickling bytes cannot hold a worker;
- reads at most a size proportionate to the request (``missing_paths``: 64 KiB + 64 bytes per
  hash asked), streaming, so a huge answer never reaches memory;
- sends a request whose body is in memory (the upload of a small NAR) over
  ``hookd.attic.upload``'s lean keep-alive connections, everything else through httpx, with the
  same TLS context, timeouts and failure classification;
- validates 2xx answers strictly (``hookd.attic.answers``) and classifies everything else once
  into ``hookd.errors`` types, with server text redacted *then* shortened.

Retrying is the caller's policy (the push target retries transient errors; provision does not).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from hookd import __version__
from hookd.attic import routes
from hookd.attic.answers import (
    AnswerError,
    CacheConfig,
    ErrorBody,
    NarInfo,
    NixCacheInfo,
    UploadResult,
    parse_cache_config,
    parse_error,
    parse_missing_paths,
    parse_narinfo,
    parse_nix_cache_info,
    parse_upload_result,
)
from hookd.attic.names import origin
from hookd.attic.redact import Redactor
from hookd.attic.tls import (
    TlsConfig,
    client_context,
    explain,
    proxy_refused_client_cert,
    tls_failure,
)
from hookd.attic.upload import Reply, UploadTransport
from hookd.errors import (
    AuthError,
    BadAnswerError,
    CacheGoneError,
    CorruptUploadError,
    DeadlineError,
    PermanentError,
    PushError,
    RedirectError,
    ServerUnreachableError,
    TlsConfigError,
    TransientError,
)

log = structlog.get_logger("hookd.attic")

_T = TypeVar("_T")

KiB = 1024
ERROR_CAP = 64 * KiB  # of an error body, enough for any message worth showing
CONFIG_CAP = 256 * KiB
UPLOAD_CAP = 64 * KiB
NARINFO_CAP = 1024 * KiB
MIN_UPLOAD_RATE = 128 * KiB  # bytes/s an upload may be as slow as before its deadline ends
MAX_RETRY_AFTER = 86400.0  # a longer Retry-After is taken as a day
BAD_HASH_MESSAGES = ("Bad NAR Hash or Size", "Bad chunk hash or size")


class ServerCorruptError(CorruptUploadError):
    """The server answered 400 "Bad NAR Hash or Size" / "Bad chunk hash or size"."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "1e400" or "nan" from a server must not become a due time of infinity
        return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def missing_cap(asked: int) -> int:
    """The largest get-missing-paths answer worth reading for ``asked`` hashes."""
    return 64 * KiB + 64 * asked


class _Answer:
    """A response read within its cap: status, headers and at most ``cap`` bytes."""

    def __init__(
        self, status: int, header: Callable[[str], str | None], body: bytes, whole: bool
    ) -> None:
        self.status, self.header, self.body, self.whole = status, header, body, whole

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return _NOT_JSON


_NOT_JSON = object()


class AtticClient:
    """Typed calls to one Attic server; see the module docstring for what every call does."""

    def __init__(
        self,
        endpoint: str,
        *,
        name: str,
        token: Callable[[], str | None],
        redactor: Redactor,
        request_timeout: float = 300.0,
        max_connections: int = 6,
        allowed_origins: Collection[str] = (),
        tls: TlsConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.name = name
        self.api = self.endpoint  # where API calls go; moved only by follow_api_endpoint
        self.request_timeout = request_timeout
        self._token = token
        self._redactor = redactor
        self._origins = {origin(self.endpoint)} | {origin(o) for o in allowed_origins}
        # TLS: the system store unless the configuration names a CA bundle or a client
        # certificate. A file that cannot be used parks the target (at the first https request)
        # with the key to fix, rather than stopping the daemon.
        self._tls = tls or TlsConfig(name, self.endpoint)
        self._tls_error: TlsConfigError | None = None
        verify: ssl.SSLContext | bool = True
        try:
            verify = client_context(self._tls)
        except TlsConfigError as e:
            self._tls_error = e
        trust_env = transport is None
        connect_timeout = min(10.0, request_timeout)
        self._client = httpx.AsyncClient(
            transport=transport,
            verify=verify,
            http1=True,
            http2=False,
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout),
            follow_redirects=False,
            headers={"User-Agent": f"hookd/{__version__}"},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            trust_env=trust_env,
        )
        # In-memory bodies take the lean path, unless a test injected a transport or the
        # environment names a proxy (which only httpx speaks).
        self._lean: UploadTransport | None = None
        if transport is None and not urllib.request.getproxies():
            self._lean = UploadTransport(
                ssl_context=verify if isinstance(verify, ssl.SSLContext) else None,
                read_timeout=request_timeout,
                connect_timeout=connect_timeout,
                max_connections=max_connections,
                user_agent=f"hookd/{__version__}",
            )

    def __repr__(self) -> str:
        return f"AtticClient({self.name!r}, endpoint={self.endpoint!r})"

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        await self._client.aclose()

    # -- the api_endpoint a server advertises -----------------------------------------------

    def follow_api_endpoint(self, advertised: str | None) -> str:
        """Use ``advertised`` for later API calls if the token may go there; returns the API
        endpoint now in use. ``None`` goes back to the configured endpoint."""
        self.api = self.endpoint
        if not advertised:
            return self.api
        api = advertised if advertised.endswith("/") else advertised + "/"
        parts = urlsplit(api)
        ours, theirs = origin(self.endpoint), origin(api)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            log.warning(
                "attic.api_endpoint_ignored",
                server=self.name,
                api_endpoint=self._redactor.clean(api),
                reason="not an http(s) URL",
            )
            return self.api
        if theirs not in self._origins:
            downgrade = (
                urlsplit(self.endpoint).hostname == parts.hostname
                and urlsplit(self.endpoint).scheme == "https"
                and parts.scheme == "http"
            )
            log.warning(
                "attic.api_endpoint_refused",
                server=self.name,
                endpoint_origin=ours,
                api_endpoint_origin=self._redactor.clean(theirs),
                reason=(
                    "would downgrade https to http (set api-endpoint in atticd's server.toml, "
                    "or X-Forwarded-Proto on the proxy)"
                    if downgrade
                    else "the token is only sent to the configured endpoint's origin; if the "
                    f"server really serves its API there, add it to "
                    f"servers.{self.name}.allowed_origins"
                ),
            )
            return self.api
        if api != self.endpoint:
            log.info("attic.api_endpoint", server=self.name, api_endpoint=api)
        self.api = api
        return api

    # -- cache-config ------------------------------------------------------------------------

    async def cache_config(self, cache: str) -> CacheConfig:
        """GET cache-config (needs pull, or a public cache). Raises CacheGoneError if absent."""
        op = "cache-config"
        a = await self._call(
            "GET", self.endpoint, routes.cache_config(cache), op=op, cap=CONFIG_CAP
        )
        return self._parse(a, op, parse_cache_config)

    async def find_cache(self, cache: str) -> CacheConfig | None:
        """``cache_config``, but None when the cache does not exist."""
        try:
            return await self.cache_config(cache)
        except CacheGoneError:
            return None

    async def create_cache(self, cache: str, spec: routes.CreateCache) -> bool:
        """POST cache-config (needs ``cc``). False when the cache already exists."""
        return await self._write_config(
            "POST",
            cache,
            "create cache",
            spec.body(),
            nothing_done=lambda e: e.status == 400 and e.kind == "CacheAlreadyExists",
        )

    async def configure_cache(self, cache: str, patch: Mapping[str, object]) -> None:
        """PATCH cache-config (needs ``cr``, and ``cq`` when ``retention_period`` is set).
        Build values with ``routes.retention_wire`` / ``CreateCache``'s conventions."""
        await self._write_config(
            "PATCH", cache, "configure cache", dict(patch), nothing_done=lambda e: False
        )

    async def destroy_cache(self, cache: str) -> bool:
        """DELETE cache-config (needs ``cd``). False when the cache was already gone."""
        return await self._write_config(
            "DELETE",
            cache,
            "destroy cache",
            None,
            nothing_done=lambda e: isinstance(e, CacheGoneError),
        )

    async def _write_config(
        self,
        method: str,
        cache: str,
        op: str,
        body: object,
        *,
        nothing_done: Callable[[PushError], bool],
    ) -> bool:
        """A cache-config write; False when the server's refusal means there was nothing to
        do (``nothing_done``), any other error is raised."""
        try:
            await self._call(
                method,
                self.endpoint,
                routes.cache_config(cache),
                op=op,
                json_body=body,
                cap=ERROR_CAP,
            )
        except PushError as e:
            if nothing_done(e):
                return False
            raise
        return True

    # -- pushing -----------------------------------------------------------------------------

    async def missing_paths(self, cache: str, hashes: Sequence[str]) -> frozenset[str]:
        """POST get-missing-paths for at most ``routes.MISSING_BATCH`` hashes (needs ``w``)."""
        op = "get-missing-paths"
        asked = frozenset(hashes)
        a = await self._call(
            "POST",
            self.api,
            routes.get_missing_paths(),
            op=op,
            json_body=routes.missing_paths_body(cache, hashes),
            cap=missing_cap(len(hashes)),
        )
        return self._parse(a, op, lambda data: parse_missing_paths(data, asked))

    async def upload_path(
        self, headers: Mapping[str, str], body: bytes | AsyncIterator[bytes], nar_size: int
    ) -> UploadResult:
        """PUT upload-path; ``headers``/``body`` from ``routes.upload_headers`` and the NAR, in
        memory or streamed (with the preamble in front when ``X-Attic-Nar-Info-Preamble-Size``
        is set)."""
        op = "upload-path"
        a = await self._call(
            "PUT",
            self.api,
            routes.upload_path(),
            op=op,
            headers=headers,
            content=body,
            cap=UPLOAD_CAP,
            nar_size=nar_size,
        )
        return self._parse(a, op, parse_upload_result)

    # -- binary cache ------------------------------------------------------------------------

    async def narinfo(self, cache: str, store_path_hash: str) -> NarInfo | None:
        """GET ``{cache}/{hash}.narinfo``; None when the cache does not hold the path."""
        op = "narinfo"
        try:
            a = await self._call(
                "GET", self.endpoint, routes.narinfo(cache, store_path_hash), op=op, cap=NARINFO_CAP
            )
        except PermanentError as e:
            if e.status == 404 and e.kind in ("NoSuchObject", "NotFound"):
                return None
            raise
        return self._parse_text(a, op, parse_narinfo)

    async def nix_cache_info(self, cache: str) -> NixCacheInfo:
        op = "nix-cache-info"
        a = await self._call(
            "GET", self.endpoint, routes.nix_cache_info(cache), op=op, cap=ERROR_CAP
        )
        return self._parse_text(a, op, parse_nix_cache_info)

    # -- transport ---------------------------------------------------------------------------

    def deadline(self, nar_size: int | None = None) -> float:
        """The total time one request may take."""
        return 3 * self.request_timeout + (nar_size or 0) / MIN_UPLOAD_RATE

    async def _call(
        self,
        method: str,
        base: str,
        path: str,
        *,
        op: str,
        cap: int,
        headers: Mapping[str, str] | None = None,
        json_body: object = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        nar_size: int | None = None,
    ) -> _Answer:
        url = base + path
        if self._tls_error is not None and url.startswith("https:"):
            raise self._tls_error
        all_headers = dict(headers or {})
        if origin(url) in self._origins:  # never hand the token to another origin
            token = self._token()
            if token:
                all_headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            all_headers["Content-Type"] = "application/json"
            data: bytes | None = json.dumps(json_body, separators=(",", ":")).encode()
        else:
            data = None
        limit = self.deadline(nar_size)
        try:
            if isinstance(content, bytes) and self._lean is not None:
                reply: Reply = await self._lean.request(
                    method, url, all_headers, content, cap=cap, error_cap=ERROR_CAP, timeout=limit
                )
                answer = _Answer(reply.status, reply.header, reply.body, reply.whole)
            else:
                async with asyncio.timeout(limit):
                    request = self._client.build_request(
                        method,
                        url,
                        headers=all_headers,
                        content=data if content is None else content,
                    )
                    resp = await self._client.send(request, stream=True)
                    try:
                        answer = await _read(resp, cap if resp.is_success else ERROR_CAP)
                    finally:
                        await resp.aclose()
        except TimeoutError:
            raise DeadlineError(
                f"{op} on server {self.name} ({base}) took longer than its total deadline of "
                f"{limit:.0f} s (3 x request_timeout"
                + (", plus the NAR at 128 KiB/s" if nar_size else "")
                + "); the server or a proxy is stalling"
            ) from None
        except CorruptUploadError:
            raise
        except ssl.SSLError as e:  # a TLS alert read after the handshake arrives unwrapped
            raise explain(e, self._tls) from None
        except httpx.InvalidURL:
            # httpx builds the next request of a 3xx even when it does not follow it, so an
            # unparseable Location raises here: still a redirect hookd will not follow.
            raise RedirectError(
                f"{op} on server {self.name} ({self.endpoint}): a redirect to an invalid URL; "
                "hookd does not follow redirects with a token. Point "
                f"servers.{self.name}.endpoint at the Attic server itself (the URL under which "
                "/_api/v1/ is served)"
            ) from None
        except httpx.HTTPError as e:  # transport errors, and bodies that fail to decode
            # A TLS failure is a configuration error; never retried, never retried over http.
            raise (tls_failure(e, self._tls) or self._transport_error(e, op, base)) from None
        if 200 <= answer.status < 300:
            if not answer.whole:
                raise BadAnswerError(
                    f"{op} on server {self.name}: the answer is larger than {cap} bytes, far more "
                    "than this request can need; is a proxy answering instead of Attic?",
                    status=answer.status,
                )
            return answer
        raise self._http_error(answer, op, url, nar_size=nar_size)

    def _parse(self, a: _Answer, op: str, parse: Callable[[object], _T]) -> _T:
        data = a.json()
        try:
            if data is _NOT_JSON:
                raise AnswerError(f"not JSON: {self._redactor.clean(a.text)!r}")
            return parse(data)
        except AnswerError as e:
            raise BadAnswerError(
                f"server {self.name}: the {op} answer (HTTP {a.status}) does not match the Attic "
                f"API: {self._redactor.clean(str(e))}; is {self.endpoint} an Attic server?",
                status=a.status,
            ) from None

    def _parse_text(self, a: _Answer, op: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(a.text)
        except AnswerError as e:
            raise BadAnswerError(
                f"server {self.name}: the {op} answer (HTTP {a.status}) does not match the Nix "
                f"binary-cache format: {self._redactor.clean(str(e))}",
                status=a.status,
            ) from None

    def _transport_error(self, e: httpx.HTTPError, op: str, base: str) -> TransientError:
        detail = self._redactor.clean(str(e)) or "no detail"
        where = f"server {self.name} ({base})"
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachableError(
                f"cannot connect to {where} for {op}: {type(e).__name__}: {detail}"
            )
        return TransientError(f"{op} on {where} failed: {type(e).__name__}: {detail}")

    def _http_error(self, a: _Answer, op: str, url: str, *, nar_size: int | None) -> PushError:
        status = a.status
        if (refused := proxy_refused_client_cert(status, a.text, self._tls)) is not None:
            return refused  # nginx's answer to a missing or refused client certificate
        err: ErrorBody = parse_error(a.json(), a.text)
        message = self._redactor.clean(err.message)
        kind = self._redactor.clean(err.error, 64) if err.error else None
        shown = f"{kind}: {message}" if kind else f"HTTP {status}: {message}"
        server = f"server {self.name} ({self.endpoint})"
        if 300 <= status < 400:
            return self._redirect(a, op, url)
        if status in (408, 429) or status >= 500:
            retry = parse_retry_after(a.header("Retry-After"))
            return TransientError(
                f"{op} on {server}: {shown}", status=status, retry_after=retry, kind=kind
            )
        if status in (401, 403):
            return AuthError(f"{op} on {server}: HTTP {status}: {shown}", status=status, kind=kind)
        if status == 404 and kind == "NoSuchCache":
            return CacheGoneError(f"{op} on {server}: {shown}", status=404, kind=kind)
        if status == 413 and kind is None:
            size = f"a {_size(nar_size)} NAR" if nar_size is not None else f"the {op} request"
            return PermanentError(
                f"{op} on {server}: HTTP 413 Payload Too Large for {size}: a reverse proxy in "
                "front of atticd limits request bodies. nginx's own default "
                "`client_max_body_size` is 1m and the NixOS nginx module sets 10m "
                "(`services.nginx.clientMaxBodySize`); set `client_max_body_size 0;` in the "
                'atticd location (NixOS: `services.nginx.clientMaxBodySize = "0";` or that line '
                "in the virtual host's `extraConfig`). Cloudflare caps bodies at 100 MB and "
                "Cloud Run at 32 MiB; Attic cannot split an upload",
                status=413,
            )
        if status == 400 and any(m in err.message for m in BAD_HASH_MESSAGES):
            return ServerCorruptError(
                f"{op} on {server}: {shown} (the NAR arrived damaged; a proxy or tunnel may be "
                "altering bodies, e.g. cloudflared without --protocol http2)",
                status=400,
                kind=kind,
            )
        if status == 404 and kind == "NotFound":
            shown += f"; is {self.endpoint} the root of an Attic server?"
        return PermanentError(f"{op} on {server}: {shown}", status=status, kind=kind)

    def _redirect(self, a: _Answer, op: str, url: str) -> RedirectError:
        location = a.header("Location")
        target = urlsplit(urljoin(url, location)) if location else None
        here = urlsplit(url)
        host = self._redactor.clean(target.netloc, 100) if target and target.netloc else None
        if (
            target is not None
            and here.scheme == "http"
            and target.scheme == "https"
            and target.hostname == here.hostname
        ):
            fixed = "https://" + self.endpoint.split("://", 1)[1]
            return RedirectError(
                f"{op} on server {self.name}: HTTP {a.status} redirect from http to https on "
                f"the same host ({host}): the server wants TLS. Set servers.{self.name}.endpoint "
                f"to {fixed} (hookd never follows a redirect, so the token was not sent twice)",
                status=a.status,
            )
        where = f"to host {host}" if host else "without a Location header"
        return RedirectError(
            f"{op} on server {self.name} ({self.endpoint}): HTTP {a.status} redirect {where}; "
            f"hookd does not follow redirects with a token. Point servers.{self.name}.endpoint "
            "at the Attic server itself (the URL under which /_api/v1/ is served)",
            status=a.status,
        )


async def _read(resp: httpx.Response, cap: int) -> _Answer:
    """At most ``cap`` bytes of the (decoded) body; ``whole`` says whether that was all."""
    chunks: list[bytes] = []
    size = 0
    whole = True
    async for chunk in resp.aiter_bytes():
        if size + len(chunk) > cap:
            chunks.append(chunk[: cap - size])
            whole = False
            break
        chunks.append(chunk)
        size += len(chunk)
    return _Answer(resp.status_code, resp.headers.get, b"".join(chunks), whole)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
