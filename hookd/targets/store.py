"""Any Nix store URL (file://, s3://, ssh-ng://, http(s)://…) through `nix copy --to`."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import structlog

from hookd.errors import AuthError, NixError, PermanentError, PushError, TransientError
from hookd.models import PathInfo, PushReport, store_target_id
from hookd.nix import Nix

log = structlog.get_logger("hookd.store")

# Binary-cache stores sign with the `secret-key` store setting; other stores need local signing.
_BINARY_CACHE_SCHEMES = {"file", "s3", "http", "https"}
_TRANSIENT = re.compile(
    r"connection refused|timed out|timeout|could not resolve|couldn't resolve|network is unreachable"
    r"|broken pipe|connection reset|HTTP error 5\d\d|HTTP error 429|unable to download|temporarily"
    r"|no route to host|ssh: connect|Resource temporarily unavailable|interrupted",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"permission denied|HTTP error 40[13]|access denied|AccessDenied|publickey", re.IGNORECASE
)
_INVALID = re.compile(r"is not valid|does not exist", re.IGNORECASE)


def classify(error: NixError) -> PushError:
    text = str(error)
    if _AUTH.search(text):
        return AuthError(f"store refused access: {text}")
    if _TRANSIENT.search(text):
        return TransientError(f"store unreachable: {text}")
    if _INVALID.search(text):
        return PermanentError(f"path is no longer valid locally: {text}")
    return TransientError(text)


def store_url(url: str, secret_key_file: Path | None) -> str:
    """Add `secret-key=` to a binary-cache store URL so Nix signs what it writes."""
    if secret_key_file is None:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _BINARY_CACHE_SCHEMES:
        return url
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "secret-key" for k, _ in query):
        return url
    query.append(("secret-key", str(secret_key_file)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/:")))


class StoreTarget:
    """Pushes with `nix copy`; signs with ``secret_key_file`` (in the cache, or locally first)."""

    def __init__(self, url: str, *, nix: Nix, secret_key_file: Path | None = None) -> None:
        self.url = url
        self.secret_key_file = secret_key_file
        self.nix = nix
        self._copy_url = store_url(url, secret_key_file)
        self._sign_locally = secret_key_file is not None and self._copy_url == url

    @property
    def id(self) -> str:
        return store_target_id(self.url)

    @property
    def server_key(self) -> str:
        return self.id

    async def push(self, closure: Sequence[PathInfo]) -> PushReport:
        paths = [p.path for p in closure]
        report = PushReport()
        if not paths:
            return report
        start = time.monotonic()
        try:
            if self._sign_locally and self.secret_key_file is not None:
                await asyncio.to_thread(self.nix.sign, paths, self.secret_key_file)
            await asyncio.to_thread(self.nix.copy_to, self._copy_url, paths)
        except NixError as e:
            raise classify(e) from None
        ms = int((time.monotonic() - start) * 1000)
        size = sum(p.nar_size for p in closure)
        for info in closure:
            log.info(
                "push", path=info.path, target=self.id, bytes=info.nar_size, ms=ms, result="copied"
            )
        report.uploaded = paths
        report.bytes_sent = size
        return report

    async def check(self) -> str:
        try:
            await asyncio.to_thread(self.nix.store_info, self._copy_url)
        except NixError as e:
            raise classify(e) from None
        signing = f"signed with {self.secret_key_file}" if self.secret_key_file else "unsigned"
        return f"{self.id}: reachable ({signing})"

    async def close(self) -> None:
        return None
