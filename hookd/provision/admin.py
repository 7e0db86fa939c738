"""Provision's admin actions on cache-config (read, create, configure, destroy), through the one
Attic client (``hookd.attic``): the wire format and the HTTP calls live there.

This module translates between provision's YAML field names (CacheState) and the client's typed
answers, and turns the client's error classes into ProvisionError messages in one place
(``_provision_error``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httpx

from hookd.attic import answers, routes
from hookd.attic.answers import CacheConfig
from hookd.attic.blocking import BlockingAtticClient
from hookd.attic.tls import TlsConfig
from hookd.errors import (
    AuthError,
    BadAnswerError,
    CacheGoneError,
    DeadlineError,
    ProvisionError,
    PushError,
    ServerUnreachableError,
    TlsConfigError,
    TransientError,
)
from hookd.provision.claims import flag_list
from hookd.provision.spec import GLOBAL, Retention

# YAML field name → Attic CacheConfig field name; also the order fields appear in a plan.
WIRE_FIELDS: dict[str, str] = {
    "public": "is_public",
    "priority": "priority",
    "upstream_cache_key_names": "upstream_cache_key_names",
    "store_dir": "store_dir",
    "retention_period": "retention_period",
}


@dataclass(frozen=True)
class CacheState:
    public: bool
    priority: int
    upstream_cache_key_names: tuple[str, ...]
    store_dir: str
    retention_period: Retention
    public_key: str | None = None

    def value(self, name: str) -> object:
        return cast(object, getattr(self, name))


def _state(config: CacheConfig, cache: str) -> CacheState:
    """The client's answer in YAML terms; a field provision compares must be there."""
    lacking = [
        name
        for name, value in (
            ("is_public", config.is_public),
            ("priority", config.priority),
            ("store_dir", config.store_dir),
        )
        if value is None
    ]
    if lacking:
        raise ProvisionError(
            f"unexpected cache-config for '{cache}' from the server: no {', '.join(lacking)}"
        )
    assert config.is_public is not None and config.priority is not None
    assert config.store_dir is not None
    retention = config.retention_period
    return CacheState(
        public=config.is_public,
        priority=config.priority,
        upstream_cache_key_names=config.upstream_cache_key_names,
        store_dir=config.store_dir,
        retention_period=GLOBAL if retention is None or retention == answers.GLOBAL else retention,
        public_key=config.public_key,
    )


def _wire(name: str, value: object) -> object:
    if name == "retention_period":
        return routes.retention_wire(answers.GLOBAL if value == GLOBAL else cast(int, value))
    if name == "upstream_cache_key_names":
        return list(cast(tuple[str, ...], value))
    return value


class AtticAdmin:
    """cache-config with the admin token: GET, POST, PATCH, DELETE."""

    def __init__(
        self,
        server_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        tls: TlsConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server_url = server_url
        self.client = BlockingAtticClient(
            server_url,
            token,
            name=server_url,
            request_timeout=timeout,
            tls=tls,
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> AtticAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, cache: str) -> CacheState | None:
        try:
            found = self.client.find_cache(cache)
        except PushError as e:
            raise _provision_error(e, self.server_url, "show", cache, set()) from None
        return None if found is None else _state(found, cache)

    def substituter(self, cache: str) -> str:
        """The URL Nix substitutes from: Attic serves each cache's binary cache at /{cache}."""
        return self.client.client.endpoint + cache

    def create(self, cache: str, settings: Mapping[str, object]) -> bool:
        """POST with a new keypair and ``settings`` (YAML names); False when the cache already
        exists (CacheAlreadyExists)."""
        spec = routes.CreateCache(
            is_public=cast(bool, settings["public"]),
            store_dir=cast(str, settings["store_dir"]),
            priority=cast(int, settings["priority"]),
            upstream_cache_key_names=tuple(
                cast(tuple[str, ...], settings["upstream_cache_key_names"])
            ),
        )
        try:
            return self.client.create_cache(cache, spec)
        except PushError as e:
            raise _provision_error(e, self.server_url, "create", cache, {"cc"}) from None

    def configure(self, cache: str, fields: Mapping[str, object]) -> None:
        """PATCH only ``fields`` (YAML names)."""
        body = {WIRE_FIELDS[k]: _wire(k, v) for k, v in fields.items()}
        needs = {"cr", "cq"} if "retention_period" in body else {"cr"}
        try:
            self.client.configure_cache(cache, body)
        except PushError as e:
            raise _provision_error(e, self.server_url, "configure", cache, needs) from None

    def destroy(self, cache: str) -> bool:
        """DELETE; False when the cache was already gone."""
        try:
            return self.client.destroy_cache(cache)
        except PushError as e:
            raise _provision_error(e, self.server_url, "destroy", cache, {"cd"}) from None


def _provision_error(
    e: PushError, server_url: str, action: str, cache: str, needs: set[str]
) -> ProvisionError:
    """The one place a client error becomes what `hookd provision` tells its user."""
    if isinstance(e, TlsConfigError):  # names the key to set (ca_file, client_cert, ...)
        return ProvisionError(str(e))
    if isinstance(e, ServerUnreachableError):
        return ProvisionError(f"cannot reach Attic server at {server_url}: {_reason(e)}")
    if isinstance(e, DeadlineError):
        return ProvisionError(f"cannot reach Attic server at {server_url}: timed out")
    if isinstance(e, BadAnswerError) and action == "show":
        return ProvisionError(f"unexpected cache-config for '{cache}' from the server: {e}")
    if isinstance(e, TransientError) and e.status is None:
        return ProvisionError(f"request to Attic server at {server_url} failed: {e}")
    if action == "show":
        if isinstance(e, AuthError) and e.status == 401:
            return ProvisionError(
                f"the server refused to show cache '{cache}' (401 Unauthorized): the admin token "
                "is invalid, expired or signed with another secret, or grants nothing on this name"
            )
        if isinstance(e, AuthError):
            return ProvisionError(
                f"the admin token may not read cache '{cache}' ({e.status}): it needs pull on it "
                "so provision can compare its settings"
            )
        if e.status == 404:
            return ProvisionError(
                f"{server_url} does not look like an Attic server: GET "
                f"{routes.cache_config(cache)} answered 404 ({e})"
            )
        return ProvisionError(f"GET cache '{cache}': {e}")
    if isinstance(e, CacheGoneError):
        return ProvisionError(f"cache '{cache}' does not exist (any more): {e}")
    text = f"the server refused to {action} cache '{cache}' ({e})"
    if isinstance(e, AuthError):
        text += f": the admin token needs {flag_list(needs)} on '{cache}'"
        if "cq" in needs:
            text += (
                " (changing retention_period needs configure_retention (cq) as well as "
                "configure_cache (cr))"
            )
    return ProvisionError(text)


def _reason(e: BaseException) -> str:
    """Why a connection failed, as a person reads it first ("connection refused"): the system
    error under the client's exception (httpx's async "All connection attempts failed" hides
    it in the chain), else the last part of the client's message."""
    seen: BaseException | None = e
    for _ in range(10):  # bounded: a chain is a few links deep
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(e).rsplit(": ", 1)[-1])
    return text[:1].lower() + text[1:]
