"""``BlockingAtticClient``: the Attic client for synchronous callers (``hookd provision``).

It owns a private event loop and runs each ``AtticClient`` call to completion on it, so a
command-line tool gets the same requests, limits, validation and error classes as the daemon
without becoming async itself. Not for use inside a running event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine, Mapping
from typing import TypeVar

import httpx

from hookd.attic import routes
from hookd.attic.answers import CacheConfig, NarInfo, NixCacheInfo
from hookd.attic.client import AtticClient
from hookd.attic.redact import Redactor
from hookd.attic.tls import TlsConfig

T = TypeVar("T")


class BlockingAtticClient:
    """The cache-config and binary-cache calls of ``AtticClient``, blocking."""

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        *,
        name: str | None = None,
        request_timeout: float = 30.0,
        allowed_origins: Collection[str] = (),
        redactor: Redactor | None = None,
        tls: TlsConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self.redactor = redactor if redactor is not None else Redactor()
        self.redactor.add(token)
        self.client = AtticClient(
            endpoint,
            name=name or endpoint,
            token=lambda: token,
            redactor=self.redactor,
            request_timeout=request_timeout,
            max_connections=2,
            allowed_origins=allowed_origins,
            tls=tls,
            transport=transport,
        )

    def _run(self, call: Coroutine[object, object, T]) -> T:
        return self._loop.run_until_complete(call)

    def cache_config(self, cache: str) -> CacheConfig:
        return self._run(self.client.cache_config(cache))

    def find_cache(self, cache: str) -> CacheConfig | None:
        return self._run(self.client.find_cache(cache))

    def create_cache(self, cache: str, spec: routes.CreateCache) -> bool:
        return self._run(self.client.create_cache(cache, spec))

    def configure_cache(self, cache: str, patch: Mapping[str, object]) -> None:
        self._run(self.client.configure_cache(cache, patch))

    def destroy_cache(self, cache: str) -> bool:
        return self._run(self.client.destroy_cache(cache))

    def nix_cache_info(self, cache: str) -> NixCacheInfo:
        return self._run(self.client.nix_cache_info(cache))

    def narinfo(self, cache: str, store_path_hash: str) -> NarInfo | None:
        return self._run(self.client.narinfo(cache, store_path_hash))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self.client.aclose())
            self._loop.close()

    def __enter__(self) -> BlockingAtticClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
