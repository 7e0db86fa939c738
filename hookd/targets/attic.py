"""Push store paths to an Attic cache over its HTTP API (see docs: attic-api.md).

Flow per ``push``: GET cache-config (cached per target) → drop upstream-signed paths →
POST get-missing-paths (batches of 10,000) → PUT upload-path for each missing path, references
before referrers, at most ``upload.concurrency`` at once, each NAR streamed from
``nix-store --dump`` and hashed on the way out.

Every failure is classified here, once (hookd.errors); transient ones are retried in-process
with jittered exponential backoff (honouring Retry-After) before they are raised or recorded.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState

from hookd import __version__
from hookd.backoff import Backoff
from hookd.config import ServerConfig, UploadConfig
from hookd.errors import (
    AuthError,
    CacheGoneError,
    CorruptUploadError,
    NixError,
    ParkedError,
    PermanentError,
    PushError,
    TransientError,
)
from hookd.models import PathInfo, PushReport, attic_server_key, attic_target_id
from hookd.nix import Nix
from hookd.tokens import TokenStore, cache_permission, decode_claims, expires_description

log = structlog.get_logger("hookd.attic")

T = TypeVar("T")

API = "_api/v1/"
MISSING_BATCH = 10_000
PREAMBLE_THRESHOLD = 4096  # the official client's NAR_INFO_PREAMBLE_THRESHOLD
CORRUPT_RETRIES = 1  # "Bad NAR Hash or Size" from the server: retried once, then failed
BAD_HASH_MESSAGES = ("Bad NAR Hash or Size", "Bad chunk hash or size")
PERMISSIONS = {"r": "pull", "w": "push"}


class ServerUnreachableError(TransientError):
    """The server could not be reached at all (connect error/timeout) after the retries."""


class _LocalMismatch(CorruptUploadError):
    """The NAR streamed from the local store does not match the path's recorded hash/size."""


class _ServerCorrupt(CorruptUploadError):
    """The server answered 400 "Bad NAR Hash or Size" / "Bad chunk hash or size"."""


def nar_info(info: PathInfo, cache: str) -> dict[str, Any]:
    """The ``UploadPathNarInfo`` JSON object, all ten keys in the official client's order."""
    return {
        "cache": cache,
        "store_path_hash": info.hash_part,
        "store_path": info.path,
        "references": [os.path.basename(r) for r in info.references],
        "system": None,
        "deriver": os.path.basename(info.deriver) if info.deriver else None,
        "sigs": list(info.signatures),
        "ca": info.ca,
        "nar_hash": info.nar_hash_hex,
        "nar_size": info.nar_size,
    }


def encode_nar_info(info: PathInfo, cache: str) -> tuple[bytes, bool]:
    """The compact JSON and whether it must go in the body preamble (JSON ≥ 4 KiB)."""
    data = json.dumps(nar_info(info, cache), separators=(",", ":"), ensure_ascii=True).encode()
    return data, len(data) >= PREAMBLE_THRESHOLD


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def upload_order(paths: Sequence[PathInfo]) -> dict[str, list[str]]:
    """For each path, the references among ``paths`` it must wait for. Self-references and
    references outside the set are ignored; a reference cycle (impossible in a real store) is
    broken by dropping its back edges, so nothing deadlocks."""
    inside = {p.path for p in paths}
    deps = {p.path: sorted({r for r in p.references if r in inside and r != p.path}) for p in paths}
    # Iterative DFS: an edge to a node still on the stack closes a cycle.
    state: dict[str, int] = {}  # 1 = on the stack, 2 = finished
    dropped: list[tuple[str, str]] = []
    for root in deps:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(list(deps[root])))]
        while stack:
            node, it = stack[-1]
            for d in it:
                if state.get(d) == 1:
                    dropped.append((node, d))
                elif d not in state:
                    state[d] = 1
                    stack.append((d, iter(list(deps[d]))))
                    break
            else:
                state[node] = 2
                stack.pop()
    if dropped:
        log.warning("attic.reference_cycle", edges=sorted(dropped))
        for node, d in dropped:
            deps[node].remove(d)
    return deps


class AtticTarget:
    """One (Attic server, cache). Implements hookd.targets.base.Target."""

    def __init__(
        self,
        server: ServerConfig,
        cache: str,
        *,
        nix: Nix,
        upload: UploadConfig,
        tokens: TokenStore,
        store_dir: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server
        self.cache = cache
        self.nix = nix
        self.upload = upload
        self.tokens = tokens
        tokens.ensure(server)
        self.store_dir = os.path.normpath(store_dir or nix.store_dir())
        timeout = httpx.Timeout(upload.request_timeout, connect=min(10.0, upload.request_timeout))
        self._client = httpx.AsyncClient(
            transport=transport,
            http1=True,
            http2=False,
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": f"hookd/{__version__}"},
            limits=httpx.Limits(
                max_connections=upload.concurrency + 2,
                max_keepalive_connections=upload.concurrency + 2,
            ),
            trust_env=transport is None,
        )
        self._config: dict[str, Any] | None = None
        self._api = server.endpoint
        self._slots = asyncio.Semaphore(max(1, upload.concurrency))
        self._config_lock = asyncio.Lock()

    # -- identity --------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return attic_target_id(self.server.name, self.cache)

    @property
    def server_key(self) -> str:
        return attic_server_key(self.server.name)

    def __repr__(self) -> str:
        return f"AtticTarget({self.id!r}, endpoint={self.server.endpoint!r})"

    __str__ = __repr__

    # -- public API ------------------------------------------------------------------------

    async def push(self, closure: Sequence[PathInfo]) -> PushReport:
        report = PushReport()
        paths = list({p.path: p for p in closure}.values())
        if not paths:
            return report
        try:
            config = await self._cache_config()
            to_check = self._filter_upstream(paths, config, report)
            missing = await self._missing(to_check, report)
            await self._upload_all(missing, report)
        except PushError:
            self._config = None  # re-fetch cache-config (endpoint, upstream keys) next time
            raise
        if report.failed:
            self._config = None
        return report

    async def check(self) -> str:
        config = await self._cache_config(refresh=True)
        visibility = "public" if config.get("is_public") else "private"
        upstream = ", ".join(config.get("upstream_cache_key_names") or []) or "none"
        priority = config.get("priority", "?")
        return (
            f"attic {self.server.name}/{self.cache}: ok ({visibility}, priority {priority}, "
            f"upstream {upstream})"
        )

    async def close(self) -> None:
        await self._client.aclose()

    # -- cache-config ----------------------------------------------------------------------

    async def _cache_config(self, *, refresh: bool = False) -> dict[str, Any]:
        async with self._config_lock:
            if self._config is not None and not refresh:
                return self._config
            self._config = None
            self._api = self.server.endpoint
            url = self.server.endpoint + API + f"cache-config/{self.cache}"

            async def get() -> dict[str, Any]:
                resp = await self._request("GET", url, op="cache-config")
                return self._json(resp, "cache-config")

            config = await self._retrying(get)
            remote_store = config.get("store_dir")
            if remote_store and os.path.normpath(str(remote_store)) != self.store_dir:
                raise ParkedError(
                    f"cache {self.cache} on server {self.server.name} has store_dir "
                    f"{remote_store}, but the local Nix store is {self.store_dir}; paths from "
                    "this store would be unusable from it. Push to a cache made for "
                    f"{self.store_dir} (`attic cache configure {self.server.name}:{self.cache} "
                    "--store-dir …` or `hookd provision`)"
                )
            api = config.get("api_endpoint")
            if isinstance(api, str) and api:
                self._api = self._checked_api_endpoint(api)
            self._config = config
            return config

    def _checked_api_endpoint(self, api: str) -> str:
        api = api if api.endswith("/") else api + "/"
        ours, theirs = urlsplit(self.server.endpoint), urlsplit(api)
        if theirs.scheme not in ("http", "https") or not theirs.netloc:
            log.warning(
                "attic.api_endpoint_ignored",
                target=self.id,
                api_endpoint=api,
                reason="not an http(s) URL",
            )
            return self.server.endpoint
        if ours.scheme == "https" and theirs.scheme == "http":
            # A TLS-terminating proxy without X-Forwarded-Proto makes atticd advertise http://;
            # following it would send the token in clear text.
            log.warning(
                "attic.api_endpoint_ignored",
                target=self.id,
                api_endpoint=api,
                reason="would downgrade https to http (set api-endpoint in server.toml "
                "or X-Forwarded-Proto on the proxy)",
            )
            return self.server.endpoint
        if api != self.server.endpoint:
            log.info("attic.api_endpoint", target=self.id, api_endpoint=api)
        return api

    def _filter_upstream(
        self, paths: list[PathInfo], config: Mapping[str, Any], report: PushReport
    ) -> list[PathInfo]:
        upstream = set(config.get("upstream_cache_key_names") or [])
        if self.upload.ignore_upstream or not upstream:
            return paths
        keep = []
        for p in paths:
            keys = p.signature_key_names & upstream
            if keys:
                report.upstream.append(p.path)
                log.info("attic.skip_upstream", path=p.path, target=self.id, keys=sorted(keys))
            else:
                keep.append(p)
        return keep

    # -- get-missing-paths -----------------------------------------------------------------

    async def _missing(self, paths: list[PathInfo], report: PushReport) -> list[PathInfo]:
        by_hash: dict[str, PathInfo] = {p.hash_part: p for p in paths}
        hashes = list(by_hash)
        missing: set[str] = set()
        for i in range(0, len(hashes), MISSING_BATCH):
            batch = hashes[i : i + MISSING_BATCH]

            async def ask(batch: list[str] = batch) -> set[str]:
                resp = await self._request(
                    "POST",
                    self._api + API + "get-missing-paths",
                    op="get-missing-paths",
                    json={"cache": self.cache, "store_path_hashes": batch},
                )
                body = self._json(resp, "get-missing-paths")
                found = body.get("missing_paths")
                if not isinstance(found, list):
                    raise PermanentError(
                        f"server {self.server.name}: get-missing-paths answered without "
                        f"`missing_paths`: {str(body)[:200]}"
                    )
                return {str(h) for h in found}

            missing |= await self._retrying(ask)
        result = []
        for h, p in by_hash.items():
            if h in missing:
                result.append(p)
            else:
                report.present.append(p.path)
        return result

    # -- upload-path -----------------------------------------------------------------------

    async def _upload_all(self, missing: list[PathInfo], report: PushReport) -> None:
        if not missing:
            return
        deps = upload_order(missing)
        infos = {p.path: p for p in missing}
        loop = asyncio.get_running_loop()
        results: dict[str, asyncio.Future[PushError | None]] = {
            p: loop.create_future() for p in infos
        }
        abort: list[PushError] = []  # the first whole-target failure; stops new uploads

        async def one(path: str) -> None:
            error: PushError | None = None
            try:
                for ref in deps[path]:
                    ref_error = await asyncio.shield(results[ref])
                    if ref_error is not None:
                        error = _because_of(ref_error, ref)
                        report.failed[path] = error
                        log.info(
                            "attic.upload",
                            path=path,
                            target=self.id,
                            bytes=0,
                            ms=0,
                            result="failed",
                            error=str(error),
                        )
                        return
                async with self._slots:
                    if abort:
                        error = abort[0]
                        return
                    try:
                        await self._upload_one(infos[path], report)
                    except (AuthError, ParkedError, ServerUnreachableError) as e:
                        error = e
                        if not abort:
                            abort.append(e)
                    except PushError as e:
                        error = e
                        report.failed[path] = e
            finally:
                if not results[path].done():
                    results[path].set_result(error)

        tasks = [asyncio.create_task(one(p)) for p in infos]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if abort:
            raise abort[0]

    async def _upload_one(self, info: PathInfo, report: PushReport) -> None:
        start = time.monotonic()
        try:
            if not os.path.lexists(info.path):
                raise PermanentError(
                    f"{info.path} is no longer in the local store (garbage-collected?); "
                    "it cannot be pushed until it is rebuilt or substituted again"
                )
            kind = await self._retrying(lambda: self._put(info))
        except PushError as e:
            self._log_upload(
                info,
                start,
                "failed",
                error=self.tokens.redact(str(e)),
                error_class=type(e).__name__,
            )
            raise
        report.uploaded.append(info.path)
        report.bytes_sent += info.nar_size
        self._log_upload(info, start, kind)

    def _log_upload(self, info: PathInfo, start: float, result: str, **extra: str) -> None:
        """One line per upload outcome: path, target, bytes, milliseconds, result."""
        log.info(
            "attic.upload",
            path=info.path,
            target=self.id,
            bytes=info.nar_size,
            ms=round((time.monotonic() - start) * 1000),
            result=result,
            **extra,
        )

    async def _put(self, info: PathInfo) -> str:
        meta, preamble = encode_nar_info(info, self.cache)
        headers = {"Content-Type": "application/octet-stream"}
        if preamble:
            headers["X-Attic-Nar-Info-Preamble-Size"] = str(len(meta))
            length = len(meta) + info.nar_size
        else:
            headers["X-Attic-Nar-Info"] = meta.decode("ascii")
            length = info.nar_size
        headers["Content-Length"] = str(length)
        try:
            async with self.nix.dump(
                info.path, nar_hash=info.nar_hash, nar_size=info.nar_size
            ) as chunks:
                body = _verified_body(info, chunks, meta if preamble else b"")
                resp = await self._request(
                    "PUT",
                    self._api + API + "upload-path",
                    op="upload-path",
                    headers=headers,
                    content=body,
                    nar_size=info.nar_size,
                )
        except NixError as e:
            raise PermanentError(f"cannot read the NAR of {info.path}: {e}") from None
        except OSError as e:  # cannot spawn nix-store, EMFILE, dump timeout (TimeoutError)
            raise TransientError(
                f"cannot stream the NAR of {info.path} (`nix-store --dump`): "
                f"{type(e).__name__}: {e}"
            ) from None
        try:
            result = resp.json()
        except ValueError:
            return "uploaded"  # as the official client does with an unparsable 2xx body
        return (
            "deduplicated"
            if isinstance(result, dict) and result.get("kind") == "Deduplicated"
            else "uploaded"
        )

    # -- HTTP and classification -----------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        op: str,
        headers: dict[str, str] | None = None,
        json: Any = None,
        content: AsyncIterator[bytes] | None = None,
        nar_size: int | None = None,
    ) -> httpx.Response:
        token = self.tokens.get(self.server.name)
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        try:
            resp = await self._client.request(
                method, url, headers=all_headers, json=json, content=content
            )
        except CorruptUploadError:
            raise
        except httpx.TransportError as e:
            raise self._transport_error(e, op) from None
        if resp.is_success:
            return resp
        raise self._http_error(resp, op, nar_size=nar_size)

    def _transport_error(self, e: httpx.TransportError, op: str) -> TransientError:
        detail = self.tokens.redact(str(e)) or "no detail"
        where = f"server {self.server.name} ({self._api})"
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachableError(
                f"cannot connect to {where} for {op}: {type(e).__name__}: {detail}"
            )
        return TransientError(f"{op} on {where} failed: {type(e).__name__}: {detail}")

    def _json(self, resp: httpx.Response, op: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise PermanentError(
                f"server {self.server.name}: {op} answered HTTP {resp.status_code} with "
                f"non-JSON: {self.tokens.redact(resp.text[:200])!r}; is {self.server.endpoint} "
                "an Attic server?",
                status=resp.status_code,
            )
        return data

    def _http_error(self, resp: httpx.Response, op: str, *, nar_size: int | None) -> PushError:
        status = resp.status_code
        _code, name, message = _error_body(resp)
        shown = self.tokens.redact(f"{name}: {message}" if name else f"HTTP {status}: {message}")
        server = f"server {self.server.name} ({self.server.endpoint})"
        if status in (408, 429) or status >= 500:
            return TransientError(
                f"{op} on {server}: {shown}",
                status=status,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        if status == 401:
            self.tokens.invalidate(self.server.name)
            return AuthError(self._explain_401(op), status=401)
        if status == 403:
            self.tokens.invalidate(self.server.name)
            return AuthError(self._explain_403(op), status=403)
        if status == 404 and name == "NoSuchCache":
            return CacheGoneError(
                f"cache {self.cache} does not exist on {server}; create it with "
                f"`attic cache create {self.server.name}:{self.cache}` (or run `hookd provision`)",
                status=404,
            )
        if status == 413 and name is None:
            size = f"a {_size(nar_size)} NAR" if nar_size is not None else f"the {op} request"
            return PermanentError(
                f"{op} on {server}: HTTP 413 Payload Too Large for {size}: a reverse proxy in "
                "front of atticd limits request bodies (nginx `client_max_body_size`, default "
                "1 MiB; Cloudflare 100 MB; Cloud Run 32 MiB). Raise the proxy's body limit; "
                "Attic cannot split an upload",
                status=413,
            )
        if status == 400 and any(m in message for m in BAD_HASH_MESSAGES):
            return _ServerCorrupt(
                f"{op} on {server}: {shown} (the NAR arrived damaged; a proxy or tunnel may be "
                "altering bodies, e.g. cloudflared without --protocol http2)",
                status=400,
            )
        if status == 404 and name == "NotFound":
            shown += f"; is {self.server.endpoint} the root of an Attic server?"
        return PermanentError(f"{op} on {server}: {shown}", status=status)

    def _explain_401(self, op: str) -> str:
        server, cache = self.server.name, self.cache
        head = (
            f"401 Unauthorized from server {server} ({op} on cache {cache}): the token is "
            f"missing, expired, signed with another secret, or has no access to cache {cache} "
            f"on server {server}"
        )
        fix = (
            f"mint a token with `atticadm make-token --sub hookd --validity '1y' --pull {cache} "
            f"--push {cache}` (or run `hookd provision`) and put it in the token file"
        )
        try:
            token = self.tokens.get(server)
        except AuthError as e:
            return f"{head}. Here: {e}"
        source = self.tokens.source(server)
        if not token:
            return (
                f"{head}. Here: no token is configured for server {server} "
                f"(set servers.{server}.token_file); {fix}"
            )
        claims = decode_claims(token)
        if claims is None:
            why = f"{source} does not hold a JWT"
        else:
            now = time.time()
            exp, nbf = claims.get("exp"), claims.get("nbf")
            perm = cache_permission(claims, cache)
            if isinstance(exp, int | float) and exp < now:
                why = f"the token in {source} expired {expires_description(claims)}"
            elif isinstance(nbf, int | float) and nbf > now:
                why = f"the token in {source} is not valid yet (nbf is in the future: clock skew?)"
            elif perm is None:
                pats = _patterns(claims)
                why = (
                    f"the token in {source} grants nothing on cache {cache} "
                    f"(its cache patterns: {pats})"
                )
            elif not any(v == 1 and type(v) is int for v in perm[1].values()):
                why = (
                    f"the token's entry {perm[0]!r} for cache {cache} sets no permission as "
                    "integer 1 (Attic ignores true/false)"
                )
            else:
                why = (
                    f"the token in {source} looks valid and grants {_flags(perm[1])} on "
                    f"{perm[0]!r}, so it is most likely signed with another secret than "
                    f"server {server} uses (was the server's JWT secret regenerated?)"
                )
        return f"{head}. Here: {why}; {fix}"

    def _explain_403(self, op: str) -> str:
        flag = "r" if op == "cache-config" else "w"
        perm_name = PERMISSIONS[flag]
        server, cache = self.server.name, self.cache
        option = "--pull" if flag == "r" else "--push"
        try:
            token = self.tokens.get(server)
        except AuthError:
            token = None
        who = "an anonymous request" if not token else "the token"
        extra = ""
        if flag == "r":
            extra = " (hookd reads the cache's config first, so it needs pull as well as push)"
        return (
            f"403 Forbidden from server {server}: {who} lacks the `{flag}` ({perm_name}) "
            f"permission on cache {cache} needed for {op}{extra}. Fix: mint a token with "
            f"`atticadm make-token --sub hookd --validity '1y' --pull {cache} --push {cache}` "
            f"(it needs `{option} {cache}`) or run `hookd provision`, and put it in the token file"
        )

    # -- retries ---------------------------------------------------------------------------

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        upload = self.upload
        backoff = Backoff(float(upload.min_backoff), float(upload.max_backoff))
        corrupt_seen = 0

        def should_retry(state: RetryCallState) -> bool:
            nonlocal corrupt_seen
            if state.outcome is None or not state.outcome.failed:
                return False
            e = state.outcome.exception()
            if isinstance(e, _ServerCorrupt):
                corrupt_seen += 1
                return corrupt_seen <= CORRUPT_RETRIES
            return isinstance(e, TransientError)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= max(1, upload.retry_attempts):
                return True
            e = state.outcome.exception() if state.outcome is not None else None
            ra = e.retry_after if isinstance(e, TransientError) else None
            # A Retry-After longer than we may wait in-process: give up now; the pusher
            # schedules the item at that time.
            return ra is not None and ra > upload.max_backoff

        def wait(state: RetryCallState) -> float:
            e = state.outcome.exception() if state.outcome is not None else None
            ra = e.retry_after if isinstance(e, TransientError) else None
            delay = backoff.delay(state.attempt_number - 1, ra)
            log.debug(
                "attic.retry",
                target=self.id,
                attempt=state.attempt_number,
                delay=round(delay, 3),
                error=self.tokens.redact(str(e)),
            )
            return delay

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=should_retry, reraise=True)
        result: T
        async for attempt in retrying:
            with attempt:
                result = await fn()
        return result


async def _verified_body(
    info: PathInfo, chunks: AsyncIterator[bytes], preamble: bytes
) -> AsyncIterator[bytes]:
    """Yield ``preamble`` then the NAR, hashing as it goes. Before the bytes that would complete
    the body are sent, check size and hash; on a mismatch raise instead, so the server never
    receives a complete body."""
    if preamble:
        yield preamble
    sha = hashlib.sha256()
    sent = 0
    async for chunk in chunks:
        if sent + len(chunk) > info.nar_size:
            raise _LocalMismatch(
                f"{info.path}: the local NAR is larger than its recorded size {info.nar_size}; "
                "the store path is corrupt or its metadata is stale (run `nix-store --verify "
                "--check-contents --repair`)"
            )
        sha.update(chunk)
        sent += len(chunk)
        if sent == info.nar_size and sha.digest() != info.nar_hash:
            raise _LocalMismatch(
                f"{info.path}: the local NAR hashes to sha256:{sha.hexdigest()}, not the recorded "
                f"{info.nar_hash_hex}; the store path is corrupt (run `nix-store --verify "
                "--check-contents --repair`)"
            )
        yield chunk
    if sent != info.nar_size:
        raise _LocalMismatch(
            f"{info.path}: `nix-store --dump` produced {sent} bytes, but its recorded NAR size is "
            f"{info.nar_size}; the store path is corrupt or its metadata is stale"
        )


def _because_of(error: PushError, ref: str) -> PushError:
    message = f"not uploaded because its reference {ref} failed: {error.message}"
    if isinstance(error, TransientError):
        return type(error)(message, status=error.status, retry_after=error.retry_after)
    return type(error)(message, status=error.status)


def _error_body(resp: httpx.Response) -> tuple[int | None, str | None, str]:
    """Attic's ``{code,error,message}``, else (None, None, first 200 chars of the text)."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        code = data.get("code")
        return (
            code if isinstance(code, int) else None,
            data["error"],
            str(data.get("message", "")),
        )
    try:
        text = resp.text
    except (UnicodeDecodeError, LookupError):
        text = repr(resp.content[:200])
    return None, None, " ".join(text[:200].split())


def _patterns(claims: Mapping[str, Any]) -> str:
    ns = claims.get("https://jwt.attic.rs/v1")
    caches = ns.get("caches") if isinstance(ns, dict) else None
    if not isinstance(caches, dict):
        return "none (no https://jwt.attic.rs/v1 claim)"
    return ", ".join(sorted(map(str, caches))) or "none"


def _flags(perm: Mapping[str, Any]) -> str:
    return "".join(f"`{k}`" for k, v in perm.items() if v == 1) or "nothing"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
