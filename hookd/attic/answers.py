"""Typed answers of the Attic routes hookd uses, validated strictly against the contract.

Every parser takes the decoded JSON (``object``) and returns a frozen dataclass or raises
``AnswerError`` naming the first field that does not match docs/attic-api.md §3. Unknown fields
are ignored (Attic adds fields over time; serde ignores them too), but a known field of the
wrong type is never guessed at: ``upstream_cache_key_names: 5`` is an error, not "no keys".
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from hookd.attic.names import STORE_PATH_HASH_RE

GLOBAL: Literal["Global"] = "Global"
Retention = Literal["Global"] | int  # "Global" (server default) or a period in seconds
UploadKind = Literal["Uploaded", "Deduplicated"]


class AnswerError(ValueError):
    """A 2xx answer that does not match the contract; the message says where."""


@dataclass(frozen=True)
class CacheConfig:
    """GET cache-config. Every field is optional on the wire (absent = not told)."""

    substituter_endpoint: str | None = None
    api_endpoint: str | None = None
    public_key: str | None = None
    is_public: bool | None = None
    store_dir: str | None = None
    priority: int | None = None
    upstream_cache_key_names: tuple[str, ...] = ()
    retention_period: Retention | None = None


@dataclass(frozen=True)
class UploadResult:
    """PUT upload-path: how the server stored the NAR."""

    kind: UploadKind
    file_size: int | None = None
    frac_deduplicated: float | None = None


@dataclass(frozen=True)
class ErrorBody:
    """Attic's JSON error ``{code, error, message}``; for axum's plain-text rejections (and
    anything else) ``error`` is None and ``message`` is the raw text."""

    code: int | None
    error: str | None
    message: str


@dataclass(frozen=True)
class NixCacheInfo:
    store_dir: str
    want_mass_query: bool
    priority: int | None


@dataclass(frozen=True)
class NarInfo:
    """The fields of a ``.narinfo`` hookd reads (the rest are kept in ``fields``)."""

    store_path: str
    url: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _object(data: object, what: str) -> dict[str, object]:
    if not isinstance(data, dict):
        raise AnswerError(f"{what}: expected a JSON object, got {_kind(data)}")
    return {str(k): v for k, v in data.items()}


def _opt_str(obj: dict[str, object], key: str) -> str | None:
    v = obj.get(key)
    if v is None or isinstance(v, str):
        return v
    raise AnswerError(f"`{key}` must be a string, got {_kind(v)}")


def _int(v: object, key: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise AnswerError(f"`{key}` must be an integer from {lo} to {hi}, got {_kind(v)}")
    return v


def parse_cache_config(data: object) -> CacheConfig:
    obj = _object(data, "cache-config")
    is_public = obj.get("is_public")
    if is_public is not None and not isinstance(is_public, bool):
        raise AnswerError(f"`is_public` must be a boolean, got {_kind(is_public)}")
    priority = obj.get("priority")
    keys = obj.get("upstream_cache_key_names")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise AnswerError(
            f"`upstream_cache_key_names` must be an array of strings, got {_kind(keys)}"
        )
    return CacheConfig(
        substituter_endpoint=_opt_str(obj, "substituter_endpoint"),
        api_endpoint=_opt_str(obj, "api_endpoint"),
        public_key=_opt_str(obj, "public_key"),
        is_public=is_public,
        store_dir=_opt_str(obj, "store_dir"),
        priority=None if priority is None else _int(priority, "priority", -(2**31), 2**31 - 1),
        upstream_cache_key_names=tuple(str(k) for k in keys or ()),
        retention_period=_retention(obj.get("retention_period")),
    )


def _retention(v: object) -> Retention | None:
    if v is None or v == GLOBAL:
        return None if v is None else GLOBAL
    if isinstance(v, dict) and list(v) == ["Period"]:
        return _int(v["Period"], "retention_period.Period", 0, 2**32 - 1)
    raise AnswerError(f'`retention_period` must be "Global" or {{"Period": n}}, got {_kind(v)}')


def parse_missing_paths(data: object, asked: Collection[str]) -> frozenset[str]:
    """The hashes the server lacks. Each must be one that was asked about: the server answers
    a set difference, so anything else means the answer is not about this request."""
    obj = _object(data, "get-missing-paths")
    found = obj.get("missing_paths")
    if not isinstance(found, list):
        raise AnswerError(f"`missing_paths` must be an array, got {_kind(found)}")
    out: set[str] = set()
    for h in found:
        if not isinstance(h, str) or not STORE_PATH_HASH_RE.fullmatch(h):
            raise AnswerError(f"`missing_paths` holds {_kind(h)} that is not a store-path hash")
        if h not in asked:
            raise AnswerError("`missing_paths` names a hash that was not asked about")
        out.add(h)
    return frozenset(out)


def parse_upload_result(data: object) -> UploadResult:
    obj = _object(data, "upload-path")
    kind = obj.get("kind")
    if kind not in ("Uploaded", "Deduplicated"):
        raise AnswerError(f'`kind` must be "Uploaded" or "Deduplicated", got {_kind(kind)}')
    size = obj.get("file_size")
    frac = obj.get("frac_deduplicated")
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, int | float)):
        raise AnswerError(f"`frac_deduplicated` must be a number or null, got {_kind(frac)}")
    return UploadResult(
        kind="Uploaded" if kind == "Uploaded" else "Deduplicated",
        file_size=None if size is None else _int(size, "file_size", 0, 2**64 - 1),
        frac_deduplicated=None if frac is None else float(frac),
    )


def parse_error(data: object, text: str) -> ErrorBody:
    """Attic's error JSON when ``data`` is one, else the plain ``text``."""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        code = data.get("code")
        message = data.get("message")
        return ErrorBody(
            code if type(code) is int else None,
            str(data["error"]),
            message if isinstance(message, str) else "",
        )
    return ErrorBody(None, None, text)


def parse_nix_cache_info(text: str) -> NixCacheInfo:
    fields = _key_values(text, "nix-cache-info")
    store = fields.get("StoreDir")
    if not store:
        raise AnswerError("nix-cache-info: no StoreDir")
    prio = fields.get("Priority")
    if prio is not None and not prio.isdigit():
        raise AnswerError("nix-cache-info: Priority is not a number")
    return NixCacheInfo(
        store, fields.get("WantMassQuery") == "1", None if prio is None else int(prio)
    )


def parse_narinfo(text: str) -> NarInfo:
    pairs = _pairs(text, "narinfo")
    fields = dict(pairs)
    try:
        size = int(fields["NarSize"])
        return NarInfo(
            store_path=fields["StorePath"],
            url=fields["URL"],
            nar_hash=fields["NarHash"],
            nar_size=size,
            references=tuple(fields.get("References", "").split()),
            fields=tuple(pairs),
        )
    except (KeyError, ValueError) as e:
        raise AnswerError(f"narinfo: missing or bad field {e}") from None


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise AnswerError(f"{what}: a line is not `Key: value`")
        pairs.append((key, value))
    return pairs


def _key_values(text: str, what: str) -> dict[str, str]:
    return dict(_pairs(text, what))
