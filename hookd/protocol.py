"""The socket wire format shared by hook, daemon and CLI. Standard library only.

One request per line, one reply per line (NDJSON). Every message carries ``"v": 1``.

Requests::

    {"v":1,"op":"enqueue","drv_path":"/nix/store/…drv","out_paths":["/nix/store/…"],"source":"hook"}
    {"v":1,"op":"ping"}
    {"v":1,"op":"status"}
    {"v":1,"op":"wait","timeout":30}
    {"v":1,"op":"retry","paths":[…]}          # or "all": true
    {"v":1,"op":"drop","paths":[…]}
    {"v":1,"op":"backfill","since":1700000000}

Replies::

    {"v":1,"ok":true, …}
    {"v":1,"ok":false,"error":"<code>","message":"<text>"}

``enqueue`` is answered only after the request is committed to the durable queue.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypedDict

VERSION = 1
MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_STORE_DIR = "/nix/store"
OPS = frozenset({"enqueue", "ping", "status", "wait", "retry", "drop", "backfill"})

# Nix's store path name rules: hash part is 32 nix-base32 chars; name is [A-Za-z0-9+\-._?=]+,
# at most 211 chars, and must not start with a dot.
_HASH_RE = re.compile(r"[0-9a-df-np-sv-z]{32}")
_NAME_RE = re.compile(r"[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]{0,210}")


class ProtocolError(ValueError):
    """A request or path that the daemon refuses; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def store_dir() -> str:
    return os.environ.get("NIX_STORE_DIR", DEFAULT_STORE_DIR).rstrip("/") or DEFAULT_STORE_DIR


def validate_store_path(path: object, store: str | None = None) -> str:
    """Return ``path`` if it names a top-level store path, else raise ProtocolError."""
    store = store or store_dir()
    if not isinstance(path, str):
        raise ProtocolError("bad-path", f"store path must be a string, got {type(path).__name__}")
    if "\x00" in path:
        raise ProtocolError("bad-path", "store path contains a NUL byte")
    if not path.startswith("/"):
        raise ProtocolError("bad-path", f"relative path refused: {path!r}")
    if "/../" in path + "/" or "/./" in path + "/" or "//" in path:
        raise ProtocolError("bad-path", f"path with '..', '.' or '//' refused: {path!r}")
    prefix = store + "/"
    if not path.startswith(prefix):
        raise ProtocolError("outside-store", f"path outside the store directory {store}: {path!r}")
    base = path[len(prefix) :]
    if "/" in base:
        raise ProtocolError("bad-path", f"not a top-level store path (has a subpath): {path!r}")
    hash_part, dash, name = base.partition("-")
    if not dash or not _HASH_RE.fullmatch(hash_part) or not _NAME_RE.fullmatch(name):
        raise ProtocolError("bad-store-path", f"invalid store path name: {base!r}")
    return path


def encode(message: Mapping[str, object]) -> bytes:
    return json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode() + b"\n"


def _not_json(name: str) -> Any:
    # Python's json accepts NaN and Infinity; a NaN timeout would never expire.
    raise ValueError(f"{name} is not a JSON number")


def decode_request(line: bytes) -> dict[str, Any]:
    """Parse one request line; raise ProtocolError with a precise reason on anything malformed."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too-large", f"request exceeds {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(line, parse_constant=_not_json)
    except (ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and Python's int-digit limit;
        # RecursionError comes from deeply nested arrays/objects.
        raise ProtocolError("bad-json", f"request is not valid JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad-request", "request must be a JSON object")
    version = message.get("v")
    if isinstance(version, bool) or version != VERSION:
        raise ProtocolError(
            "bad-version", f"unsupported protocol version {version!r} (want {VERSION})"
        )
    op = message.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError("bad-op", f"unknown op {op!r}; known: {', '.join(sorted(OPS))}")
    if op == "enqueue":
        _check_enqueue(message)
    return message


def _check_enqueue(message: dict[str, Any]) -> None:
    drv = message.get("drv_path")
    outs = message.get("out_paths", [])
    if drv is not None:
        validate_store_path(drv)
        if not drv.endswith(".drv"):
            raise ProtocolError("bad-drv", f"drv_path does not end in .drv: {drv!r}")
    if not isinstance(outs, list):
        raise ProtocolError("bad-request", "out_paths must be a list of store paths")
    for p in outs:
        validate_store_path(p)
    if drv is None and not outs:
        raise ProtocolError("bad-request", "enqueue needs drv_path or out_paths")
    source = message.get("source", "hook")
    if not isinstance(source, str) or len(source) > 64:
        raise ProtocolError("bad-request", "source must be a short string")


def error_reply(code: str, message: str) -> bytes:
    return encode({"ok": False, "error": code, "message": message})


# -- typed requests (what the daemon's handlers receive) ---------------------------------------


@dataclass(frozen=True)
class Enqueue:
    op: ClassVar[str] = "enqueue"
    drv_path: str | None
    out_paths: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Ping:
    op: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Status:
    op: ClassVar[str] = "status"


@dataclass(frozen=True)
class Wait:
    op: ClassVar[str] = "wait"
    timeout: float
    paths: tuple[str, ...] | None  # None: every target's whole queue


@dataclass(frozen=True)
class Retry:
    op: ClassVar[str] = "retry"
    paths: tuple[str, ...] | None  # None: every failed and parked item ("all": true)


@dataclass(frozen=True)
class Drop:
    op: ClassVar[str] = "drop"
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Backfill:
    op: ClassVar[str] = "backfill"
    since: float


Request = Enqueue | Ping | Status | Wait | Retry | Drop | Backfill


def _paths_field(message: Mapping[str, Any], *, required: bool) -> tuple[str, ...] | None:
    paths = message.get("paths")
    if paths is None:
        if required:
            raise ProtocolError("bad-request", "paths (a list of store paths) is required")
        return None
    if not isinstance(paths, list):
        raise ProtocolError("bad-request", "paths must be a list of store paths")
    return tuple(validate_store_path(p) for p in paths)


def parse_request(line: bytes) -> Request:
    """``decode_request`` and then every field checked and typed: handlers never see raw JSON."""
    m = decode_request(line)
    op = m["op"]
    if op == "enqueue":
        return Enqueue(m.get("drv_path"), tuple(m.get("out_paths", [])), m.get("source", "hook"))
    if op == "ping":
        return Ping()
    if op == "status":
        return Status()
    if op == "wait":
        timeout = m.get("timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ProtocolError("bad-request", "timeout must be a non-negative number of seconds")
        return Wait(float(timeout), _paths_field(m, required=False))
    if op == "retry":
        return Retry(None if m.get("all") else _paths_field(m, required=True))
    if op == "drop":
        return Drop(_paths_field(m, required=True) or ())
    if op == "backfill":
        since = m.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ProtocolError("bad-request", "since must be seconds since the epoch")
        return Backfill(float(since))
    raise ProtocolError("bad-op", f"unknown op {op!r}")  # decode_request already refused it


# -- typed replies (the ``"ok": true`` answers; ``v`` and ``ok`` are added by the server) -----

ItemState = Literal["pending", "done", "failed", "parked"]
BreakerState = Literal["closed", "open", "half-open"]


class PingReply(TypedDict):
    version: str
    pid: int


class EnqueueReply(TypedDict):
    queued: bool


class RetryReply(TypedDict):
    retried: int


class DropReply(TypedDict):
    dropped: int


class BackfillReply(TypedDict):
    scanned: int
    queued: int
    requests: int


class Counts(TypedDict):
    pending: int
    done: int
    failed: int
    parked: int


class PathState(TypedDict):
    state: ItemState
    reason: str | None


class WaitReply(TypedDict, total=False):
    drained: bool
    targets: dict[str, Counts]  # when waiting for the whole queue
    paths: dict[str, dict[str, PathState]]  # when waiting for given paths: path -> target -> state


class TargetStatus(Counts):
    id: str
    oldest_pending_age: float | None
    breaker: str
    busy: bool
    last_success: float | None
    last_error: str | None
    pushed_paths: int
    pushed_bytes: int


class Problem(TypedDict):
    path: str
    target: str
    state: ItemState
    attempts: int
    reason: str | None


class DefaultCache(TypedDict):
    url: str
    public_key: str


class Liveness(TypedDict):
    alive: bool
    loop_lag: float  # seconds the event loop's last heartbeat was late
    queue_writer: bool
    components: dict[str, str]  # supervised component -> "running" | "restarting" | "stopped"


class StatusReply(TypedDict, total=False):
    version: str
    pid: int
    uptime: float
    socket: str
    requests_pending: int
    done_last_minute: int
    targets: list[TargetStatus]
    problems: list[Problem]
    gc_roots: int
    default_cache: DefaultCache
    token_problems: dict[str, list[str]]
    liveness: Liveness


Reply = PingReply | EnqueueReply | RetryReply | DropReply | BackfillReply | WaitReply | StatusReply
