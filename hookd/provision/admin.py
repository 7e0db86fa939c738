"""The one module of provision that speaks HTTP to Attic: ``/_api/v1/cache-config/{cache}``
with the admin token (GET, POST, PATCH, DELETE), in Attic's wire format.

Everything else in provision works with CacheState and YAML field names, so this module is the
only one to change when the calls move to a shared Attic client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httpx

from hookd.errors import ProvisionError
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


def _state_from_json(data: object, cache: str) -> CacheState:
    try:
        assert isinstance(data, dict)
        retention = data.get("retention_period", "Global")
        if retention == "Global":
            parsed: Retention = GLOBAL
        else:
            assert isinstance(retention, dict)
            parsed = int(retention["Period"])
        return CacheState(
            public=bool(data["is_public"]),
            priority=int(data["priority"]),
            upstream_cache_key_names=tuple(str(s) for s in data["upstream_cache_key_names"]),
            store_dir=str(data["store_dir"]),
            retention_period=parsed,
            public_key=data.get("public_key"),
        )
    except (AssertionError, KeyError, TypeError, ValueError):
        raise ProvisionError(
            f"unexpected cache-config for '{cache}' from the server: {str(data)[:200]}"
        ) from None


def _wire(name: str, value: object) -> object:
    if name == "retention_period":
        return "Global" if value == GLOBAL else {"Period": value}
    if name == "upstream_cache_key_names":
        return list(cast(tuple[str, ...], value))
    return value


class AtticAdmin:
    """GET/POST/PATCH/DELETE ``/_api/v1/cache-config/{cache}`` with the admin token."""

    def __init__(
        self,
        server_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server_url = server_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=server_url,
            headers=headers,
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
        )
        self.writes = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AtticAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, cache: str, body: object = None) -> httpx.Response:
        path = f"_api/v1/cache-config/{cache}"
        try:
            if body is None:
                return self._client.request(method, path)
            return self._client.request(method, path, json=body)
        except httpx.ConnectError as e:
            raise ProvisionError(
                f"cannot reach Attic server at {self.server_url}: {_reason(e)}"
            ) from None
        except httpx.TimeoutException:
            raise ProvisionError(
                f"cannot reach Attic server at {self.server_url}: timed out"
            ) from None
        except httpx.HTTPError as e:
            raise ProvisionError(
                f"request to Attic server at {self.server_url} failed: {_reason(e)}"
            ) from None

    def get(self, cache: str) -> CacheState | None:
        r = self._request("GET", cache)
        if r.status_code == 200:
            try:
                data = r.json()
            except ValueError:
                data = r.text
            return _state_from_json(data, cache)
        kind, message = _error(r)
        if r.status_code == 404 and kind == "NoSuchCache":
            return None
        if r.status_code == 404:
            raise ProvisionError(
                f"{self.server_url} does not look like an Attic server: GET "
                f"/_api/v1/cache-config/{cache} answered 404 {message}"
            )
        if r.status_code == 401:
            raise ProvisionError(
                f"the server refused to show cache '{cache}' (401 Unauthorized): the admin token "
                "is invalid, expired or signed with another secret, or grants nothing on this name"
            )
        if r.status_code == 403:
            raise ProvisionError(
                f"the admin token may not read cache '{cache}' (403): it needs pull on it so "
                "provision can compare its settings"
            )
        raise ProvisionError(f"GET cache '{cache}': {message}")

    def substituter(self, cache: str) -> str:
        """The URL Nix substitutes from: Attic serves each cache's binary cache at /{cache}."""
        return f"{self.server_url}{cache}"

    def create(self, cache: str, settings: Mapping[str, object]) -> bool:
        """POST with a new keypair and ``settings`` (YAML names); False when the cache already
        exists (CacheAlreadyExists)."""
        body: dict[str, object] = {"keypair": "Generate"}
        body.update({WIRE_FIELDS[k]: _wire(k, v) for k, v in settings.items()})
        self.writes += 1
        r = self._request("POST", cache, body)
        if r.status_code == 200:
            return True
        kind, message = _error(r)
        if r.status_code == 400 and kind == "CacheAlreadyExists":
            return False
        raise ProvisionError(_refused("create", cache, r.status_code, message, {"cc"}))

    def configure(self, cache: str, fields: Mapping[str, object]) -> None:
        """PATCH only ``fields`` (YAML names)."""
        body = {WIRE_FIELDS[k]: _wire(k, v) for k, v in fields.items()}
        self.writes += 1
        r = self._request("PATCH", cache, body)
        if r.status_code == 200:
            return
        _, message = _error(r)
        needs = {"cr", "cq"} if "retention_period" in body else {"cr"}
        text = _refused("configure", cache, r.status_code, message, needs)
        if r.status_code == 403 and "retention_period" in body:
            text += " (changing retention_period needs configure_retention (cq) as well as configure_cache (cr))"
        raise ProvisionError(text)

    def destroy(self, cache: str) -> bool:
        """DELETE; False when the cache was already gone."""
        self.writes += 1
        r = self._request("DELETE", cache)
        if r.status_code == 200:
            return True
        kind, message = _error(r)
        if r.status_code == 404 and kind == "NoSuchCache":
            return False
        raise ProvisionError(_refused("destroy", cache, r.status_code, message, {"cd"}))


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[-1] if text else text)
    return text[:1].lower() + text[1:]


def _error(r: httpx.Response) -> tuple[str, str]:
    """(Attic error kind or '', readable message) — Attic errors are JSON, axum's plain text."""
    try:
        data = r.json()
        if isinstance(data, dict) and "error" in data:
            return str(data["error"]), f"{r.status_code} {data['error']}: {data.get('message', '')}"
    except ValueError:
        pass
    text = " ".join(r.text.split())[:200]
    return "", f"HTTP {r.status_code}" + (f": {text}" if text else "")


def _refused(action: str, cache: str, status: int, message: str, needs: set[str]) -> str:
    text = f"the server refused to {action} cache '{cache}' ({message})"
    if status in (401, 403):
        text += f": the admin token needs {flag_list(needs)} on '{cache}'"
    return text
