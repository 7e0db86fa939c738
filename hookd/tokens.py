"""Attic tokens: read from token files at use time, checked, cached, watched, never shown.

A token is read from ``ServerConfig.token_file`` (whitespace-stripped) and cached; every ``get``
stats the file and re-reads it when its inode, size or mtime changed, so rotation (sops-nix,
agenix, Kubernetes secrets: all replace the file by an atomic rename or a symlink swap) takes
effect on the next request without a restart. ``ServerConfig.token`` (attic's own config.toml
``token =``) is used when there is no token file.

A token file is refused when it lies inside the Nix store (world-readable), is missing, empty,
unreadable or readable by other users; a group-readable file is accepted with a warning.

Token values never appear in a repr, an exception or a log line; ``redact`` scrubs them (and
anything shaped like a JWT) from text that came from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from hookd.attic.claims import CLAIM_NAMESPACE, caches_of, decode_claims
from hookd.attic.redact import Redactor
from hookd.config import ServerConfig
from hookd.errors import AuthError

log = structlog.get_logger("hookd.tokens")

FILE_FIX = (
    'run `chmod 600 {file}` (sops-nix/agenix: set mode = "0400" and the owner to the hookd user)'
)


class TokenFileError(AuthError):
    """The token file cannot be used: missing, unreadable, too open, empty or in the Nix store."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class _Sig:
    """What identifies one version of a file without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int


def _sig(st: os.stat_result) -> _Sig:
    return _Sig(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


@dataclass
class _Cached:
    sig: _Sig
    token: str

    def __repr__(self) -> str:
        return f"_Cached(sig={self.sig!r}, token=***)"


class TokenStore:
    """The tokens of every configured server. ``get`` is cheap: one ``stat`` per call."""

    def __init__(self, servers: Mapping[str, ServerConfig], store_dir: str = "/nix/store") -> None:
        self._servers: dict[str, ServerConfig] = dict(servers)
        self._store_dir = os.path.normpath(store_dir)
        self._cache: dict[str, _Cached] = {}
        self._warned: dict[str, _Sig] = {}
        # The file version each path was last found outside the store as (see _stat_checked).
        self._outside: dict[str, _Sig] = {}
        # Every token value ever seen (inline or read from a file), for redaction.
        self.redactor = Redactor(s.token for s in self._servers.values() if s.token)

    def __repr__(self) -> str:
        return f"TokenStore(servers={sorted(self._servers)!r})"

    __str__ = __repr__

    # -- servers ---------------------------------------------------------------------------

    @property
    def servers(self) -> Mapping[str, ServerConfig]:
        return dict(self._servers)

    def ensure(self, server: ServerConfig) -> None:
        """Add ``server`` if its name is not known yet (targets built from a partial mapping)."""
        if server.name not in self._servers:
            self._servers[server.name] = server
            if server.token:
                self.redactor.add(server.token)

    def _server(self, name: str) -> ServerConfig:
        try:
            return self._servers[name]
        except KeyError:
            known = ", ".join(sorted(self._servers)) or "none"
            raise AuthError(f"no server named {name!r} is configured (known: {known})") from None

    def source(self, name: str) -> str:
        """Where the token of ``name`` comes from, for messages (never the token itself)."""
        server = self._server(name)
        if server.token_file is not None:
            return f"token file {server.token_file}"
        if server.token:
            return "the token in attic's config.toml"
        return "no token configured"

    # -- reading ---------------------------------------------------------------------------

    def get(self, server_name: str) -> str | None:
        """The current token of ``server_name``, or None if it has none. Raises TokenFileError."""
        server = self._server(server_name)
        if server.token_file is None:
            return server.token or None
        path = server.token_file
        sig = self._stat_checked(path)
        cached = self._cache.get(server_name)
        if cached is not None and cached.sig == sig:
            return cached.token
        token = self._read(path)
        # Stat again: if the file was swapped while we read it, the next get() re-reads it.
        self._cache[server_name] = _Cached(sig, token)
        self.redactor.add(token)
        if cached is not None and cached.token != token:
            log.info("token.rotated", server=server_name, file=str(path))
        return token

    def invalidate(self, server_name: str | None = None) -> None:
        """Forget the cached token(s) so the next ``get`` re-reads the file (after a 401/403)."""
        if server_name is None:
            self._cache.clear()
        else:
            self._cache.pop(server_name, None)

    def _in_store(self, path: Path) -> bool:
        prefix = self._store_dir.rstrip("/") + "/"
        candidates = [os.path.abspath(path)]
        with contextlib.suppress(OSError):
            candidates.append(os.path.realpath(path))
        return any(c.startswith(prefix) or c == self._store_dir for c in candidates)

    def _stat_checked(self, path: Path) -> _Sig:
        key = str(path)
        try:
            first: os.stat_result | None = os.stat(path)
        except OSError:
            first = None
        # realpath costs an lstat per path component, on every request of a push (issue 14);
        # the same file version (device, inode, times) as last time is the same verdict.
        if first is None or self._outside.get(key) != _sig(first):
            self._outside.pop(key, None)
            if self._in_store(path):
                raise TokenFileError(
                    f"token file {path} is inside the Nix store ({self._store_dir}), where every "
                    "user can read it; keep tokens out of the store (sops-nix/agenix secret with "
                    'mode = "0400", or a file with `chmod 600`) and point token_file at it',
                    path=path,
                )
        try:
            st = first if first is not None else os.stat(path)
        except FileNotFoundError:
            raise TokenFileError(
                f"token file {path} does not exist; create it (mode 0600) with a token from "
                "`atticadm make-token` or `hookd provision`, or fix token_file",
                path=path,
            ) from None
        except PermissionError:
            raise TokenFileError(
                f"token file {path} cannot be accessed by uid {os.geteuid()} (permission denied); "
                'make the hookd user its owner (sops-nix/agenix: set owner, and mode = "0400")',
                path=path,
            ) from None
        except OSError as e:
            raise TokenFileError(f"token file {path}: {e.strerror}", path=path) from None
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"token file {path} is not a regular file", path=path)
        sig = _sig(st)
        mode = stat.S_IMODE(st.st_mode)
        if mode & stat.S_IROTH:
            raise TokenFileError(
                f"token file {path} is readable by every user (mode {mode:04o}); "
                + FILE_FIX.format(file=path),
                path=path,
            )
        if mode & stat.S_IRGRP and self._warned.get(str(path)) != sig:
            self._warned[str(path)] = sig
            log.warning(
                "token.group_readable",
                file=str(path),
                mode=f"{mode:04o}",
                fix=FILE_FIX.format(file=path),
            )
        self._outside[key] = sig
        return sig

    def _read(self, path: Path) -> str:
        try:
            text = path.read_text(encoding="utf-8", errors="strict")
        except FileNotFoundError:
            raise TokenFileError(
                f"token file {path} disappeared while being read", path=path
            ) from None
        except PermissionError:
            raise TokenFileError(
                f"token file {path} is not readable by uid {os.geteuid()} (permission denied); "
                'make the hookd user its owner (sops-nix/agenix: set owner, and mode = "0400")',
                path=path,
            ) from None
        except UnicodeDecodeError:
            raise TokenFileError(f"token file {path} is not UTF-8 text", path=path) from None
        except OSError as e:
            raise TokenFileError(f"token file {path}: {e.strerror}", path=path) from None
        token = text.strip()
        if not token:
            raise TokenFileError(
                f"token file {path} is empty; put a token from `atticadm make-token` in it",
                path=path,
            )
        if any(c.isspace() for c in token):
            raise TokenFileError(
                f"token file {path} contains more than one word; it must hold just the token",
                path=path,
            )
        return token

    def signature(self, server_name: str) -> object:
        """An opaque value that changes whenever the token file (or its state) changes."""
        server = self._server(server_name)
        if server.token_file is None:
            return ("inline", bool(server.token))
        try:
            st = os.stat(server.token_file)
        except OSError as e:
            return ("error", e.errno)
        return _Sig(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    # -- diagnostics -----------------------------------------------------------------------

    def check(self, server_name: str) -> list[str]:
        """Problems with the token of ``server_name``, one sentence each (empty list: fine)."""
        try:
            server = self._server(server_name)
        except AuthError as e:
            return [str(e)]
        problems: list[str] = []
        if server.token_file is None and not server.token:
            return [
                f"server {server_name}: no token configured; set servers.{server_name}.token_file "
                "to a file holding a token from `atticadm make-token` (or run `hookd provision`)"
            ]
        try:
            token = self.get(server_name)
        except AuthError as e:
            return [f"server {server_name}: {e}"]
        if server.token_file is not None:
            with contextlib.suppress(OSError):
                mode = stat.S_IMODE(os.stat(server.token_file).st_mode)
                if mode & stat.S_IRGRP:
                    problems.append(
                        f"server {server_name}: token file {server.token_file} is group-readable "
                        f"(mode {mode:04o}); " + FILE_FIX.format(file=server.token_file)
                    )
        if token is None:
            return problems
        claims = decode_claims(token)
        where = self.source(server_name)
        if claims is None:
            problems.append(f"server {server_name}: {where} does not hold a JWT")
            return problems
        now = time.time()
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            if exp < now:
                problems.append(
                    f"server {server_name}: the token in {where} expired {_when(exp)}; "
                    "mint a new one with `atticadm make-token` or `hookd provision`"
                )
            elif exp - now < 7 * 86400:
                problems.append(f"server {server_name}: the token in {where} expires {_when(exp)}")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now:
            problems.append(
                f"server {server_name}: the token in {where} is not valid before {_when(nbf)}"
            )
        if caches_of(claims) is None:
            problems.append(
                f"server {server_name}: the token in {where} has no `{CLAIM_NAMESPACE}` claim with "
                "`caches`; Attic ignores such a token"
            )
        return problems

    # -- watching --------------------------------------------------------------------------

    def _watch_dirs(self) -> set[str]:
        """Directories whose events may mean a token file changed (symlink swaps included)."""
        dirs: set[str] = set()
        for server in self._servers.values():
            if server.token_file is None:
                continue
            path = Path(os.path.abspath(server.token_file))
            dirs.add(str(path.parent))
            with contextlib.suppress(OSError):
                dirs.add(os.path.dirname(os.path.realpath(path)))
            # A symlinked ancestor (sops-nix: /run/secrets -> /run/secrets.d/N) is swapped in
            # its own parent directory; watch that too.
            for ancestor in path.parents:
                if ancestor.is_symlink():
                    dirs.add(str(ancestor.parent))
        return {d for d in dirs if os.path.isdir(d)}

    async def watch(
        self,
        on_change: Callable[[str], None],
        *,
        stop_event: asyncio.Event | None = None,
        poll_interval: float = 30.0,
        debounce_ms: int = 200,
    ) -> None:
        """Call ``on_change(server_name)`` whenever a server's token file changes.

        Watches the token files' parent directories (so an atomic rename-over or a symlink swap
        is seen) with ``watchfiles.awatch`` and re-checks every ``poll_interval`` seconds in
        case an event was missed. Returns when ``stop_event`` is set; cancel it otherwise.
        """
        import watchfiles

        names = [n for n, s in self._servers.items() if s.token_file is not None]
        if not names:
            if stop_event is not None:
                await stop_event.wait()
            return
        sigs = {n: self.signature(n) for n in names}

        def compare() -> None:
            for name in names:
                sig = self.signature(name)
                if sig != sigs[name]:
                    sigs[name] = sig
                    self.invalidate(name)
                    log.info("token.changed", server=name, file=str(self._servers[name].token_file))
                    try:
                        on_change(name)
                    except Exception as e:
                        log.error("token.on_change_failed", server=name, error=self.redact(repr(e)))

        while stop_event is None or not stop_event.is_set():
            dirs = self._watch_dirs()
            if not dirs:
                await _sleep_or_stop(poll_interval, stop_event)
                compare()
                continue
            try:
                async for _changes in watchfiles.awatch(
                    *sorted(dirs),
                    watch_filter=None,
                    recursive=False,
                    stop_event=stop_event,
                    debounce=max(debounce_ms, 1),
                    step=min(50, max(debounce_ms, 1)),
                    rust_timeout=int(poll_interval * 1000),
                    yield_on_timeout=True,
                ):
                    compare()
                    if self._watch_dirs() != dirs:
                        break  # a symlink swap moved a file: re-arm on the new directories
                else:
                    compare()
                    return  # stop_event was set
            except (OSError, RuntimeError) as e:
                log.warning("token.watch_error", error=str(e))
                await _sleep_or_stop(min(poll_interval, 1.0), stop_event)
                compare()

    # -- redaction -------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` without any known token, fragment of one (>= 16 characters) or JWT."""
        return self.redactor.redact(text)

    def processor(
        self, _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor that redacts tokens from every string value of a log event."""
        for key, value in list(event_dict.items()):
            if isinstance(value, str):
                event_dict[key] = self.redact(value)
            elif isinstance(value, BaseException):
                event_dict[key] = self.redact(repr(value))
        return event_dict


async def _sleep_or_stop(seconds: float, stop_event: asyncio.Event | None) -> None:
    if stop_event is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_event.wait(), seconds)


def _when(ts: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    delta = ts - time.time()
    return f"at {stamp} ({_human(abs(delta))} {'from now' if delta > 0 else 'ago'})"


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def expires_description(claims: Mapping[str, Any]) -> str | None:
    exp = claims.get("exp")
    return _when(exp) if isinstance(exp, int | float) else None
