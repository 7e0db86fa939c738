"""Push store paths to an Attic cache: the push plan on top of ``hookd.attic.client``.

Flow per ``push``: GET cache-config (cached per target) → drop upstream-signed paths →
POST get-missing-paths (batches of 10,000) → PUT upload-path for each missing path, references
before referrers, at most ``upload.concurrency`` at once, each small NAR built in-process and
sent from memory, each larger one streamed from ``nix-store --dump`` and hashed on the way
out. One log line per batch at info (per path at debug: a closure is thousands of paths). The HTTP contract (docs/attic-api.md) and the
classification of every answer live in the client; this module decides what to retry (one
backoff policy, hookd.backoff, honouring Retry-After), what to cache and how to explain an
authorization failure with the token's own claims.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import httpx
import structlog

from hookd.attic import routes
from hookd.attic.answers import CacheConfig
from hookd.attic.claims import CLAIM_NAMESPACE, cache_permission, caches_of, decode_claims, granted
from hookd.attic.client import AtticClient, ServerCorruptError, parse_retry_after
from hookd.attic.routes import encode_nar_info, nar_info
from hookd.attic.tls import TlsConfig
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
    ServerUnreachableError,
    TransientError,
)
from hookd.logs import debug_enabled
from hookd.models import PathInfo, PushReport, attic_server_key, attic_target_id
from hookd.nix import Nix
from hookd.tokens import TokenStore, expires_description

__all__ = [
    "AtticTarget",
    "ServerUnreachableError",
    "encode_nar_info",
    "nar_info",
    "parse_retry_after",
    "upload_order",
]

log = structlog.get_logger("hookd.attic")

T = TypeVar("T")

MISSING_BATCH = routes.MISSING_BATCH
CORRUPT_RETRIES = 1  # "Bad NAR Hash or Size" from the server: retried once, then failed
PERMISSIONS = {"r": "pull", "w": "push"}


class _LocalMismatch(CorruptUploadError):
    """The NAR streamed from the local store does not match the path's recorded hash/size."""


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
        self.client = AtticClient(
            server.endpoint,
            name=server.name,
            token=lambda: tokens.get(server.name),
            redactor=tokens.redactor,
            request_timeout=upload.request_timeout,
            max_connections=upload.concurrency + 2,
            allowed_origins=server.allowed_origins,
            tls=TlsConfig.of(server),
            transport=transport,
        )
        self._config: CacheConfig | None = None
        # Created once per target (not per upload: seeding a Random costs an os.urandom).
        self._backoff = Backoff(float(upload.min_backoff), float(upload.max_backoff))
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
            self._forget_server_state()
            raise
        if report.failed:
            self._forget_server_state()
        return report

    async def check(self) -> str:
        config = await self._cache_config(refresh=True)
        visibility = "public" if config.is_public else "private"
        upstream = ", ".join(config.upstream_cache_key_names) or "none"
        priority = "?" if config.priority is None else config.priority
        return (
            f"attic {self.server.name}/{self.cache}: ok ({visibility}, priority {priority}, "
            f"upstream {upstream})"
        )

    async def close(self) -> None:
        await self.client.aclose()

    def _forget_server_state(self) -> None:
        """Re-fetch cache-config (endpoint, upstream keys) before the next push."""
        self._config = None
        self.client.follow_api_endpoint(None)

    # -- cache-config ----------------------------------------------------------------------

    async def _cache_config(self, *, refresh: bool = False) -> CacheConfig:
        async with self._config_lock:
            if self._config is not None and not refresh:
                return self._config
            self._forget_server_state()
            config = await self._retrying(
                lambda: self._authorized("cache-config", self.client.cache_config(self.cache))
            )
            remote_store = config.store_dir
            if remote_store and os.path.normpath(remote_store) != self.store_dir:
                shown = self.tokens.redactor.clean(remote_store)
                raise ParkedError(
                    f"cache {self.cache} on server {self.server.name} has store_dir "
                    f"{shown}, but the local Nix store is {self.store_dir}; paths from "
                    "this store would be unusable from it. Push to a cache made for "
                    f"{self.store_dir} (`attic cache configure {self.server.name}:{self.cache} "
                    "--store-dir …` or `hookd provision`)"
                )
            self.client.follow_api_endpoint(config.api_endpoint)
            self._config = config
            return config

    def _filter_upstream(
        self, paths: list[PathInfo], config: CacheConfig, report: PushReport
    ) -> list[PathInfo]:
        upstream = set(config.upstream_cache_key_names)
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

            async def ask(batch: list[str] = batch) -> frozenset[str]:
                call = self.client.missing_paths(self.cache, batch)
                return await self._authorized("get-missing-paths", call)

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
        start = time.monotonic()
        try:
            await self._upload_each(missing, report)
        finally:  # the push's one line at info (per path at debug)
            log.info(
                "attic.uploads",
                target=self.id,
                paths=len(missing),
                uploaded=len(report.uploaded),
                failed=len(report.failed),
                bytes=report.bytes_sent,
                ms=round((time.monotonic() - start) * 1000),
            )

    async def _upload_each(self, missing: list[PathInfo], report: PushReport) -> None:
        """Upload ``missing``, each path after its references, with ``upload.concurrency``
        workers taking ready paths from one queue (not a task per path: a closure of 10,000
        paths would hold 10,000 suspended tasks; issue 14). A failed path fails every path that
        refers to it, transitively, without trying them."""
        deps = upload_order(missing)
        infos = {p.path: p for p in missing}
        waiting = {p: len(d) for p, d in deps.items()}
        referrers: dict[str, list[str]] = {}
        for p, ds in deps.items():
            for d in ds:
                referrers.setdefault(d, []).append(p)
        ready = collections.deque(p for p, n in waiting.items() if n == 0)
        settled: set[str] = set()
        abort: list[PushError] = []  # the first whole-target failure; stops new uploads
        progress = asyncio.Event()
        busy = 0

        def settle(path: str, error: PushError | None) -> None:
            settled.add(path)
            stack = [(path, error)]
            while stack:
                done, err = stack.pop()
                for q in referrers.get(done, ()):
                    if q in settled:
                        continue
                    if err is None:
                        waiting[q] -= 1
                        if waiting[q] == 0:
                            ready.append(q)
                        continue
                    q_err = _because_of(err, done)
                    report.failed[q] = q_err
                    settled.add(q)
                    log.info(
                        "attic.upload",
                        path=q,
                        target=self.id,
                        bytes=0,
                        ms=0,
                        result="failed",
                        error=str(q_err),
                    )
                    stack.append((q, q_err))

        async def worker() -> None:
            nonlocal busy
            while not abort:
                if not ready:
                    if busy == 0:
                        return  # nothing ready and nothing in flight: all settled
                    progress.clear()
                    await progress.wait()
                    continue
                path = ready.popleft()
                if path in settled:
                    continue
                busy += 1
                error: PushError | None = None
                try:
                    async with self._slots:
                        await self._upload_one(infos[path], report)
                except (AuthError, ParkedError, ServerUnreachableError) as e:
                    error = e
                    if not abort:
                        abort.append(e)
                except PushError as e:
                    error = e
                    report.failed[path] = e
                finally:
                    busy -= 1
                    settle(path, error)
                    progress.set()

        workers = min(max(1, self.upload.concurrency), len(infos))
        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
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
                error=self.tokens.redactor.clean(str(e), 1000),
                error_class=type(e).__name__,
            )
            raise
        report.uploaded.append(info.path)
        report.bytes_sent += info.nar_size
        self._log_upload(info, start, kind)

    def _log_upload(self, info: PathInfo, start: float, result: str, **extra: str) -> None:
        """One line per upload outcome: path, target, bytes, milliseconds, result; at debug
        when it succeeded (the batch has its own line at info)."""
        if not extra and not debug_enabled():
            return
        (log.info if extra else log.debug)(
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
        headers, _length = routes.upload_headers(meta, preamble, info.nar_size)
        try:
            data = await self.nix.small_nar(info.path, info.nar_hash, info.nar_size)
            if data is not None:  # verified against nar_hash/nar_size already
                call = self.client.upload_path(
                    headers, meta + data if preamble else data, info.nar_size
                )
                result = await self._authorized("upload-path", call)
            else:
                async with self.nix.dump(info.path) as chunks:
                    body = _verified_body(info, chunks, meta if preamble else b"")
                    result = await self._authorized(
                        "upload-path", self.client.upload_path(headers, body, info.nar_size)
                    )
        except NixError as e:
            raise PermanentError(f"cannot read the NAR of {info.path}: {e}") from None
        except OSError as e:  # cannot spawn nix-store, EMFILE, dump timeout (TimeoutError)
            raise TransientError(
                f"cannot stream the NAR of {info.path} (`nix-store --dump`): "
                f"{type(e).__name__}: {e}"
            ) from None
        return "deduplicated" if result.kind == "Deduplicated" else "uploaded"

    # -- authorization failures explained --------------------------------------------------

    async def _authorized(self, op: str, call: Awaitable[T]) -> T:
        """``call``, with a 401/403 from the server explained from the token's own claims and
        a missing cache with the command that creates it."""
        try:
            return await call
        except CacheGoneError:
            server = f"server {self.server.name} ({self.server.endpoint})"
            raise CacheGoneError(
                f"cache {self.cache} does not exist on {server}; create it with "
                f"`attic cache create {self.server.name}:{self.cache}` (or run `hookd provision`)",
                status=404,
                kind="NoSuchCache",
            ) from None
        except AuthError as e:
            if e.status == 401:
                self.tokens.invalidate(self.server.name)
                raise AuthError(self._explain_401(op), status=401) from None
            if e.status == 403:
                self.tokens.invalidate(self.server.name)
                raise AuthError(self._explain_403(op), status=403) from None
            raise

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
            elif not granted(perm[1]):
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
        """``fn()``, retried on transient errors (and once on a server-side corrupt upload)
        up to ``upload.retry_attempts`` attempts, waiting per the one backoff policy. A
        Retry-After longer than ``max_backoff`` gives up at once: the pusher schedules the
        item at that time."""
        upload = self.upload
        attempts = max(1, upload.retry_attempts)
        corrupt_seen = 0
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except ServerCorruptError as e:
                corrupt_seen += 1
                if corrupt_seen > CORRUPT_RETRIES or attempt >= attempts:
                    raise
                error: PushError = e
                retry_after = None
            except TransientError as e:
                if attempt >= attempts:
                    raise
                if e.retry_after is not None and e.retry_after > upload.max_backoff:
                    raise
                error, retry_after = e, e.retry_after
            delay = self._backoff.delay(attempt - 1, retry_after)
            log.debug(
                "attic.retry",
                target=self.id,
                attempt=attempt,
                delay=round(delay, 3),
                error=self.tokens.redactor.clean(str(error), 1000),
            )
            await asyncio.sleep(delay)


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


def _patterns(claims: Mapping[str, object]) -> str:
    caches = caches_of(claims)
    if caches is None:
        return f"none (no {CLAIM_NAMESPACE} claim)"
    return ", ".join(sorted(caches)) or "none"


def _flags(perm: Mapping[str, object]) -> str:
    return "".join(f"`{k}`" for k in sorted(granted(perm))) or "nothing"
