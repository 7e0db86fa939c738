"""An Attic-compatible HTTP server for tests (a fake ``atticd``).

It follows the contract in ``docs/attic-api.md`` (§ numbers below refer to it): the six ``/_api/v1/`` routes,
the ``attic-cache-info`` alias, the Nix binary-cache endpoints, Attic's JSON errors and axum's
plain-text rejections, the JWT rules (§5) and the 401/403/404 matrix (§4.3). Everything lives in
memory except NAR bodies, which are streamed to files in a private temporary directory.

Usage from a test::

    with AtticTestServer() as srv:
        srv.create_cache("team")
        token = srv.make_token({"team": {"r": 1, "w": 1}})
        httpx.get(srv.url + "_api/v1/cache-config/team", headers={"Authorization": f"Bearer {token}"})

Manual use / benchmarks::

    python -m tests.attic_server --port 0 --cache team --cache pub:public --print-token

prints the URL (first line) and a root token (second line) on stdout, one ``cache NAME PUBKEY``
line per cache on stderr, and runs until SIGTERM/SIGINT.

Beyond the agreed interface (AtticTestServer, Faults, make_token, create_cache, ...):

* ``srv.cache(name)`` returns the live ``CacheState``; ``.keypair`` is the secret key text
  (``name:base64(64 bytes)``), ``.keypair_obj`` the ``Keypair``; assigning fields takes effect.
* ``StoredObject.nar_hash`` is ``"sha256:<64 hex>"`` (the wire/narinfo form);
  ``.nar_hash_hex`` is the bare hex digest, ``.nar_hash_bytes`` the raw digest.
* ``RequestRecord.error_kind`` is the Attic error name for JSON errors, or for framework
  rejections ``UnsupportedMediaType`` / ``JsonSyntaxError`` / ``JsonDataError`` /
  ``PayloadTooLarge`` / ``InvalidUrl`` / ``MethodNotAllowed`` / ``BadRequest``; injected faults
  are ``fault:fail`` / ``fault:reset`` / ``fault:status_script`` / ``fault:max_body_size``;
  ``client-gone`` when the client disconnected. ``status`` is None when nothing was sent.
  ``auth`` is the Authorization scheme only, ``sub`` the subject of a token that verified.
* Extras: ``srv.root_token()``, ``srv.add_object(cache, store_path, nar, references=...)``,
  ``srv.nar_bytes(cache, hash)``, ``srv.caches()``, ``srv.clear_records()``,
  ``srv.errors`` (tracebacks of unexpected server exceptions; tests should assert it is empty),
  ``srv.faults.include_binary_cache``, ``srv.faults.clear()``, ``delete_cache(name, soft=None)``,
  constructor keywords ``substituter_endpoint``, ``host``, ``port``, ``data_dir``.
* ``faults.upload_response_delay``: upload-path answers this many seconds after the body's last
  byte (an atticd busy storing it); a client or proxy that gives up meanwhile cancels the
  upload (recorded as ``client-gone``, nothing stored), as a dropped axum handler does.
* ``faults.upload_hold_after`` = N: after N uploads, the next ones wait before reading their
  body until ``faults.upload_release`` (a threading.Event) is set; ``faults.uploads_held``
  counts them, so a test can act while an upload is provably in flight.
* TLS: ``tls=ssl.SSLContext`` (server side) serves HTTPS (``srv.url`` is then ``https://``);
  a context with ``verify_mode = CERT_REQUIRED`` requires client certificates (mTLS). The
  handshake runs in the connection's thread, so a stalled client blocks nobody. From the command
  line: ``--tls-cert``, ``--tls-key``, ``--tls-client-ca``.
* "Chunked" uploads (nar_size >= nar_size_threshold > 0) report ``frac_deduplicated`` as a
  number, estimated over fixed 64 KiB blocks (no FastCDC); unchunked ones report null.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import email.utils
import hashlib
import http
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import unquote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import HMACAlgorithm

from hookd.models import nix32_decode, nix32_encode

try:  # optional: only needed for compression="zstd"
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None


class _QuietHMAC(HMACAlgorithm):
    """HS256 without PyJWT's short-key warning: atticd accepts any secret length (its own test
    secret is 18 bytes), and warnings from server threads would only add noise to test runs."""

    def check_key_length(self, key: Any) -> str | None:
        return None


def _make_jwt() -> jwt.PyJWT:
    inst = jwt.PyJWT()
    jws = getattr(inst, "_jws", None)
    if jws is not None and hasattr(HMACAlgorithm, "check_key_length"):
        jws.unregister_algorithm("HS256")
        jws.register_algorithm("HS256", _QuietHMAC(HMACAlgorithm.SHA256))
    return inst


_JWT = _make_jwt()

__all__ = [
    "NAMESPACE",
    "AtticTestServer",
    "CacheState",
    "Faults",
    "RequestRecord",
    "StoredObject",
    "fingerprint",
    "parse_nar_hash",
]

NAMESPACE = "https://jwt.attic.rs/v1"
FLAGS = ("r", "w", "d", "cc", "cr", "cq", "cd")
CACHE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_+]{0,49}")
PATTERN_RE = re.compile(r"[A-Za-z0-9*][A-Za-z0-9\-_+*]{0,49}")
STORE_PATH_HASH_RE = re.compile(r"[0123456789abcdfghijklmnpqrsvwxyz]{32}")
JSON_BODY_LIMIT = 2 * 1024 * 1024  # axum's default body limit for the Json extractor
MAX_NAR_INFO_SIZE = 1024 * 1024  # max-nar-info-size default
CHUNK_SIZE = 64 * 1024  # block size used to estimate frac_deduplicated for "chunked" NARs
IO_SIZE = 256 * 1024

PLACEHOLDER_HTML = (
    b"<!DOCTYPE html>\n<html><head><title>Attic Binary Cache</title></head>"
    b"<body><p>This is an Attic binary cache (hookd test server).</p></body></html>\n"
)

# Attic-generated error kinds: name -> (status, message), as in server/src/error.rs (§4.1)
ERRORS: dict[str, tuple[int, str]] = {
    "NotFound": (404, "The URL you requested was not found."),
    "Unauthorized": (401, "Unauthorized."),
    "AccessError": (403, "Access error: User does not have permission to complete this action."),
    "NoSuchCache": (404, "The requested cache does not exist."),
    "CacheAlreadyExists": (400, "The cache already exists."),
    "NoSuchObject": (404, "The requested object does not exist."),
    "IncompleteNar": (503, "The requested NAR has missing chunks and needs to be repaired."),
    "InternalServerError": (500, "The server encountered an internal error or misconfiguration."),
    "InvalidStorePathHash": (500, "Error from the common components."),
}

NGINX_413 = (
    b"<html><head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# --------------------------------------------------------------------------------------------
# Errors


class HttpError(Exception):
    """A complete error response."""

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        kind: str,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(f"{status} {kind}")
        self.status = status
        self.body = body
        self.content_type = content_type
        self.kind = kind
        self.headers = dict(headers or {})
        self.close = close


def api_error(kind: str) -> HttpError:
    status, message = ERRORS[kind]
    return _json_error(status, kind, message)


def request_error(detail: str) -> HttpError:
    return _json_error(400, "RequestError", f"General request error: {detail}")


def _json_error(status: int, kind: str, message: str) -> HttpError:
    body = json.dumps(
        {"code": status, "error": kind, "message": message}, separators=(",", ":")
    ).encode()
    return HttpError(status, body, "application/json", kind)


def plain_error(status: int, text: str, kind: str, close: bool = False) -> HttpError:
    return HttpError(status, text.encode(), "text/plain; charset=utf-8", kind, close=close)


def _client_stays(x: _Exchange, seconds: float) -> bool:
    """Wait ``seconds`` before answering; False as soon as the client closes the connection."""
    deadline = time.monotonic() + seconds
    sock = x.h.connection
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], min(left, 0.05))
        if readable:
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return False
            except OSError:
                return False
            # pipelined bytes of a next request: the client is still there
            time.sleep(min(left, 0.05))
    return True


class _ClientGone(Exception):
    """The client went away (EOF or reset) before the request body ended."""


class _BadFraming(Exception):
    """Malformed Content-Length / chunked encoding."""


class _DataError(Exception):
    """A serde-style deserialization error (shape or value)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def render(self, with_path: bool = True) -> str:
        if with_path and self.path:
            return f"{self.path}: {self.message}"
        return self.message


# --------------------------------------------------------------------------------------------
# serde-like value checks


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{str(v).lower()}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f'string "{v}"'
    if isinstance(v, list):
        return "sequence"
    return "map"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _de_str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _DataError(f"invalid type: {_describe(v)}, expected a string", path)
    return v


def _de_bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _DataError(f"invalid type: {_describe(v)}, expected a boolean", path)
    return v


def _de_int(v: Any, path: str, lo: int, hi: int, tyname: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _DataError(f"invalid type: {_describe(v)}, expected {tyname}", path)
    if not lo <= v <= hi:
        raise _DataError(f"invalid value: integer `{v}`, expected {tyname}", path)
    return v


def _de_i32(v: Any, path: str) -> int:
    return _de_int(v, path, -(2**31), 2**31 - 1, "i32")


def _de_u32(v: Any, path: str) -> int:
    return _de_int(v, path, 0, 2**32 - 1, "u32")


def _de_u64(v: Any, path: str) -> int:
    return _de_int(v, path, 0, 2**64 - 1, "u64")


def _de_list(v: Any, path: str, item: Callable[[Any, str], Any]) -> list[Any]:
    if not isinstance(v, list):
        raise _DataError(f"invalid type: {_describe(v)}, expected a sequence", path)
    return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]


def _de_struct(v: Any, name: str, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _DataError(f"invalid type: {_describe(v)}, expected struct {name}", path)
    return v


def _req(obj: dict[str, Any], key: str, fn: Callable[[Any, str], Any], path: str) -> Any:
    if key not in obj:
        raise _DataError(f"missing field `{key}`", path)
    return fn(obj[key], _join(path, key))


def _opt(obj: dict[str, Any], key: str, fn: Callable[[Any, str], Any], path: str) -> Any:
    v = obj.get(key)
    return None if v is None else fn(v, _join(path, key))


def _de_cache_name(v: Any, path: str) -> str:
    s = _de_str(v, path)
    if not CACHE_NAME_RE.fullmatch(s):
        raise _DataError(f'invalid value: string "{s}", expected a valid cache name', path)
    return s


def _de_store_path_hash(v: Any, path: str) -> str:
    s = _de_str(v, path)
    if not STORE_PATH_HASH_RE.fullmatch(s):
        raise _DataError(f'invalid value: string "{s}", expected a valid store path hash', path)
    return s


def _de_keypair(v: Any, path: str) -> str | None:
    """KeypairConfig: "Generate" -> None, {"Keypair": "name:b64"} -> the secret key text."""
    if v == "Generate":
        return None
    if isinstance(v, str):
        raise _DataError(f"unknown variant `{v}`, expected `Generate` or `Keypair`", path)
    if isinstance(v, dict) and len(v) == 1:
        (tag, inner) = next(iter(v.items()))
        if tag == "Keypair":
            text = _de_str(inner, _join(path, "Keypair"))
            try:
                Keypair.parse(text)
            except ValueError as e:
                raise _DataError(f"invalid value: {e}", _join(path, "Keypair")) from None
            return text
        if tag == "Generate":
            raise _DataError(
                "invalid type: map, expected unit variant KeypairConfig::Generate", path
            )
        raise _DataError(f"unknown variant `{tag}`, expected `Generate` or `Keypair`", path)
    raise _DataError(f"invalid type: {_describe(v)}, expected enum KeypairConfig", path)


def _de_retention(v: Any, path: str) -> int | None:
    """RetentionPeriodConfig: "Global" -> None, {"Period": u32} -> int."""
    if v == "Global":
        return None
    if isinstance(v, dict) and len(v) == 1 and "Period" in v:
        return _de_u32(v["Period"], _join(path, "Period"))
    if isinstance(v, str):
        raise _DataError(f"unknown variant `{v}`, expected `Global` or `Period`", path)
    raise _DataError(f"invalid type: {_describe(v)}, expected enum RetentionPeriodConfig", path)


def parse_nar_hash(text: str) -> bytes:
    """Attic's typed-hash parser: ``sha256:<64 hex>`` or ``sha256:<52 nix32>``; SRI is rejected."""
    if ":" not in text:
        raise ValueError(f'Invalid typed hash string "{text}": no colon')
    typ, _, body = text.partition(":")
    if typ != "sha256":
        raise ValueError(f'Unsupported hash type "{typ}"')
    if len(body) == 64:
        try:
            return bytes.fromhex(body)
        except ValueError:
            raise ValueError(f'Invalid hex hash "{body}"') from None
    if len(body) == 52:
        try:
            return nix32_decode(body)
        except ValueError:
            raise ValueError(f'Invalid base32 hash "{body}"') from None
    raise ValueError(f"Invalid hash length {len(body)} for sha256")


def fingerprint(
    store_path: str, nar_hash: bytes, nar_size: int, references: Iterable[str]
) -> bytes:
    """The Nix signing fingerprint, with references rebuilt from dirname(store_path) (§7.4)."""
    store_dir = store_path.rsplit("/", 1)[0] if "/" in store_path else ""
    refs = ",".join(f"{store_dir}/{r}" for r in references)
    return f"1;{store_path};sha256:{nix32_encode(nar_hash)};{nar_size};{refs}".encode()


# --------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Keypair:
    """An ed25519 key in Nix's format: secret ``name:b64(seed||pk)``, public ``name:b64(pk)``."""

    name: str
    seed: bytes

    @classmethod
    def generate(cls, name: str) -> Keypair:
        return cls(name, os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> Keypair:
        name, sep, b64 = text.partition(":")
        if not sep or not name:
            raise ValueError("keypair must be '<name>:<base64 secret key>'")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("keypair secret is not valid base64") from None
        if len(raw) != 64:
            raise ValueError(f"keypair secret must be 64 bytes, got {len(raw)}")
        kp = cls(name, raw[:32])
        if kp.public_bytes != raw[32:]:
            raise ValueError("keypair public half does not match its seed")
        return kp

    @property
    def _private(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def secret(self) -> str:
        return f"{self.name}:{base64.b64encode(self.seed + self.public_bytes).decode()}"

    @property
    def public_key(self) -> str:
        return f"{self.name}:{base64.b64encode(self.public_bytes).decode()}"

    def sign(self, data: bytes) -> str:
        return f"{self.name}:{base64.b64encode(self._private.sign(data)).decode()}"


@dataclass
class CacheState:
    """One cache row. ``srv.cache(name)`` returns the live object (mutations take effect)."""

    name: str
    keypair_obj: Keypair
    is_public: bool = False
    store_dir: str = "/nix/store"
    priority: int = 41
    upstream_cache_key_names: list[str] = field(default_factory=lambda: ["cache.nixos.org-1"])
    retention_period: int | None = None  # None = "Global"
    deleted_at: float | None = None

    @property
    def keypair(self) -> str:
        """The secret key, ``name:base64(64 bytes)``."""
        return self.keypair_obj.secret

    @property
    def public_key(self) -> str:
        return self.keypair_obj.public_key


@dataclass
class Nar:
    nar_hash: bytes
    nar_size: int
    path: str  # stored file (compressed per ``compression``)
    compression: str
    file_size: int


@dataclass(frozen=True)
class StoredObject:
    store_path: str
    references: tuple[str, ...]
    deriver: str | None
    sigs: tuple[str, ...]
    ca: str | None
    nar_hash: str  # "sha256:<64 hex>"
    nar_size: int
    created_by: str | None = None
    created_at: float = 0.0

    @property
    def nar_hash_bytes(self) -> bytes:
        return bytes.fromhex(self.nar_hash.removeprefix("sha256:"))

    @property
    def nar_hash_hex(self) -> str:
        """The bare 64-character hex digest."""
        return self.nar_hash.removeprefix("sha256:")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int | None  # None: no response was sent (reset fault, client went away)
    error_kind: str | None  # Attic error name, framework rejection kind, or "fault:..."
    body_bytes: int  # request-body bytes the server had read when it answered
    time: float  # time.time() when the request headers were read
    duration: float = 0.0
    auth: str | None = None  # "bearer" / "basic" / other scheme, lowercase; never the value
    sub: str | None = None  # subject of a token that verified (None if anonymous)


@dataclass
class _UploadInfo:
    cache: str
    store_path_hash: str
    store_path: str
    references: list[str]
    deriver: str | None
    sigs: list[str]
    ca: str | None
    nar_hash: bytes
    nar_size: int


@dataclass
class _Token:
    sub: str | None
    caches: dict[str, frozenset[str]]  # pattern -> set of true flags, JSON order preserved

    def permission(self, name: str) -> frozenset[str]:
        if name in self.caches:
            return self.caches[name]
        for pattern, perm in self.caches.items():
            if "*" in pattern and _pattern_regex(pattern).fullmatch(name):
                return perm
        return frozenset()


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class Faults:
    """Fault switches; mutate them from the test thread at any time."""

    fail_rate: float = 0.0
    fail_status: int = 500
    reset_rate: float = 0.0
    status_script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    slow_body_delay: float = 0.0
    # upload-path: seconds between reading the whole body and answering (an atticd busy
    # compressing and writing to its storage). A client (or proxy) that gives up meanwhile
    # cancels the upload, as a dropped axum handler does: nothing is stored.
    upload_response_delay: float = 0.0
    # upload-path: once this many uploads have passed (-1: off), the next ones wait, before
    # reading their body, until ``upload_release`` is set; ``uploads_held`` counts them. A test
    # then acts (kill -9 the client, say) while an upload is provably in flight, on any machine.
    upload_hold_after: int = -1
    upload_release: threading.Event = field(default_factory=threading.Event)
    uploads_passed: int = 0
    uploads_held: int = 0
    max_body_size: int | None = None
    include_binary_cache: bool = False  # fail_rate also hits the binary-cache routes
    # status_script answers are written one byte per trickle_delay seconds (each read is
    # short, the whole answer never ends in time): a server stalling a client.
    trickle_delay: float = 0.0
    # The next API request gets a 200 JSON answer of this many bytes, generated as it is
    # written (no memory); huge_sent counts what actually left (the client may hang up).
    huge_answer: int = 0
    huge_sent: int = 0
    huge_done: bool = False
    # The next N PUT requests are reset (RST, no answer), whatever reset_rate says.
    reset_puts: int = 0
    # The next N API answers declare a 1,000-byte body, send 100 bytes of it and close.
    cut_answers: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "seed" and "_rng" in self.__dict__:
            with self._lock:
                self._rng.seed(value)

    def clear(self) -> None:
        """Switch every fault off (the seed is kept)."""
        with self._lock:
            self.fail_rate = 0.0
            self.fail_status = 500
            self.reset_rate = 0.0
            self.status_script.clear()
            self.slow_body_delay = 0.0
            self.upload_response_delay = 0.0
            self.upload_hold_after = -1
            self.upload_release.set()
            self.max_body_size = None
            self.include_binary_cache = False
            self.trickle_delay = 0.0
            self.huge_answer = 0
            self.reset_puts = 0
            self.cut_answers = 0

    def _roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _hold_upload(self) -> bool:
        """Count an upload; True if it must wait for ``upload_release``."""
        with self._lock:
            if self.upload_hold_after < 0:
                return False
            if self.uploads_passed < self.upload_hold_after:
                self.uploads_passed += 1
                return False
            self.uploads_held += 1
            return True

    def _take(self, name: str) -> bool:
        """Count one off the counter ``name``; whether it was positive."""
        with self._lock:
            n = getattr(self, name)
            if n > 0:
                object.__setattr__(self, name, n - 1)
                return True
            return False

    def _pop_huge(self) -> int:
        with self._lock:
            size, self.huge_answer = self.huge_answer, 0
            return size

    def _pop_script(self) -> tuple[int, dict[str, str], bytes] | None:
        with self._lock:
            if self.status_script:
                return self.status_script.pop(0)
            return None


# --------------------------------------------------------------------------------------------
# Request body reading (Content-Length and chunked)


class _Body:
    def __init__(self, rfile: BinaryIO, headers: Any) -> None:
        self.rfile = rfile
        self.chunked = False
        self.length: int | None = 0
        self.remaining = 0
        self.consumed = 0
        self.force_close = False
        self._chunk_left = 0
        self._eof = False
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        te = headers.get_all("Transfer-Encoding") or []
        cl = headers.get_all("Content-Length") or []
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise _BadFraming("unsupported transfer-encoding")
            self.chunked = True
            self.length = None
            if cl:
                self.force_close = True  # RFC 9112 §6.3: ambiguous framing, close afterwards
        elif cl:
            values = {v.strip() for v in cl}
            if len(values) != 1:
                raise _BadFraming("conflicting content-length")
            value = values.pop()
            if not value.isdigit() or not value.isascii():
                raise _BadFraming("invalid content-length")
            self.length = int(value)
            self.remaining = self.length
        self._eof = not self.chunked and self.remaining == 0

    @property
    def complete(self) -> bool:
        return self._eof and (self._spool is None or self._spool_left == 0)

    def _raw_read(self, n: int) -> bytes:
        if self._eof:
            return b""
        if not self.chunked:
            data = self.rfile.read1(min(n, self.remaining))  # type: ignore[attr-defined]
            if not data:
                raise _ClientGone()
            self.remaining -= len(data)
            if self.remaining == 0:
                self._eof = True
            return data
        if self._chunk_left == 0:
            line = self.rfile.readline(4096)
            if not line:
                raise _ClientGone()
            if not line.endswith(b"\n"):
                raise _BadFraming("chunk size line too long")
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                raise _BadFraming("invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                while True:  # trailers
                    t = self.rfile.readline(8192)
                    if not t:
                        raise _ClientGone()
                    if t in (b"\r\n", b"\n"):
                        break
                self._eof = True
                return b""
            self._chunk_left = size
        data = self.rfile.read1(min(n, self._chunk_left))  # type: ignore[attr-defined]
        if not data:
            raise _ClientGone()
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            crlf = self.rfile.readline(3)
            if not crlf:
                raise _ClientGone()
            if crlf not in (b"\r\n", b"\n"):
                raise _BadFraming("missing CRLF after chunk data")
        return data

    def read(self, n: int = IO_SIZE) -> bytes:
        """Up to n bytes; b"" at the end of the body. Raises _ClientGone on a truncated body."""
        if self._spool is not None and self._spool_left:
            data = self._spool.read(min(n, self._spool_left))
            self._spool_left -= len(data)
            return data
        data = self._raw_read(n)
        self.consumed += len(data)
        return data

    def read_exact(self, n: int) -> bytes:
        """Exactly n bytes, or fewer if the body ends first."""
        parts = []
        while n > 0:
            data = self.read(min(n, IO_SIZE))
            if not data:
                break
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def read_all(self, limit: int) -> bytes | None:
        """The whole body, or None if it is longer than ``limit``."""
        if self.length is not None and self.length > limit:
            return None
        parts, total = [], 0
        while True:
            data = self.read(IO_SIZE)
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                return None
            parts.append(data)

    def prebuffer(self, limit: int) -> bool:
        """Buffer the body (for the nginx-like size check); False if it exceeds ``limit``."""
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(8 << 20)
        total = 0
        while True:
            data = self._raw_read(IO_SIZE)
            self.consumed += len(data)
            if not data:
                break
            total += len(data)
            if total > limit:
                spool.close()
                return False
            spool.write(data)
        spool.seek(0)
        self._spool = spool
        self._spool_left = total
        return True

    def drain(self) -> None:
        while self._raw_read(IO_SIZE):
            pass

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    owner: AtticTestServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can stall without DNS.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.owner.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        # In the request's own thread (ThreadingMixIn), unlike a wrapped listening socket.
        request.settimeout(30)
        conn = tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            try:
                conn.do_handshake()
            except ssl.SSLError:
                # Like a real TLS server: the alert is sent; close gracefully (half-close, then
                # drain what the client already sent), so that a TLS 1.3 client, which sent its
                # request before the server refused its (missing) certificate, reads the alert
                # rather than a connection reset.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_WR)
                    conn.settimeout(2)
                    while socket.socket.recv(conn, 65536):
                        pass
                raise
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | _ClientGone):
            return
        self.owner._note_error(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "attic-test-server"
    sys_version = ""
    timeout = 120
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.owner._track(self.connection, False)

    def handle(self) -> None:
        self.close_connection = True
        try:
            self.handle_one_request()
            while not self.close_connection:
                self.handle_one_request()
        except (OSError, _ClientGone, ValueError):
            self.close_connection = True

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(http.HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        self.server.owner._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Exchange:
    """One request/response."""

    def __init__(self, owner: AtticTestServer, h: _Handler) -> None:
        self.owner = owner
        self.h = h
        self.method = h.command
        self.raw_path = h.path
        self.path = h.path.split("?", 1)[0]
        self.headers = h.headers
        self.started = time.time()
        self.status: int | None = None
        self.kind: str | None = None
        self.public = False  # X-Attic-Cache-Visibility: public
        self.responded = False
        self.recorded = False
        self.token: _Token | None = None
        auth = self.headers.get("Authorization")
        self.auth_scheme = auth.split(" ", 1)[0].lower() if auth else None
        self.body: _Body | None = None

    # -- records -------------------------------------------------------------------------------

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        self.owner._record(
            RequestRecord(
                method=self.method,
                path=self.raw_path,
                status=self.status,
                error_kind=self.kind,
                body_bytes=self.body.consumed if self.body else 0,
                time=self.started,
                duration=time.time() - self.started,
                auth=self.auth_scheme,
                sub=self.token.sub if self.token else None,
            )
        )

    # -- responses -----------------------------------------------------------------------------

    def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        kind: str | None = None,
        file: str | None = None,
        length: int | None = None,
    ) -> None:
        self.status = status
        self.kind = kind
        self.responded = True
        self.record()
        h = self.h
        if close or (self.body is not None and self.body.force_close):
            h.close_connection = True
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        size = length if file is not None and length is not None else len(body)
        lines = [f"HTTP/1.1 {status} {phrase}"]
        extra = dict(headers or {})
        lower = {k.lower() for k in extra}
        if content_type is not None and "content-type" not in lower:
            lines.append(f"Content-Type: {content_type}")
        if self.public:
            lines.append("X-Attic-Cache-Visibility: public")
        for k, v in extra.items():
            if k.lower() not in ("content-length", "connection"):
                lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {size}")
        lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if h.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        delay = self.owner.faults.slow_body_delay
        if delay > 0:
            time.sleep(delay)
        if self.method == "HEAD":
            h.wfile.write(head)
            return
        if file is None and (delay <= 0 or len(body) <= 65536):
            h.wfile.write(head + body)
            return
        h.wfile.write(head)
        if file is None:
            for i in range(0, len(body), 65536):
                if i:
                    time.sleep(delay)
                h.wfile.write(body[i : i + 65536])
            return
        with open(file, "rb") as f:
            first = True
            while chunk := f.read(IO_SIZE if delay <= 0 else 65536):
                if delay > 0 and not first:
                    time.sleep(delay)
                first = False
                h.wfile.write(chunk)

    def _head(self, status: int, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [f"Content-Length: {length}", "Connection: close"]
        self.h.close_connection = True
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_generated(self, size: int) -> None:
        """Fault huge_answer: a 200 JSON answer of ``size`` bytes, made while writing."""
        self.status, self.kind, self.responded = 200, "fault:huge_answer", True
        self.record()
        faults = self.owner.faults
        faults.huge_sent, faults.huge_done = 0, False
        try:
            self.h.wfile.write(self._head(200, {"Content-Type": "application/json"}, size))
            prefix = b'{"missing_paths":["'
            self.h.wfile.write(prefix)
            faults.huge_sent = len(prefix)
            block = b"0" * 65536
            left = size - len(prefix) - 3
            while left > 0:
                n = min(left, len(block))
                self.h.wfile.write(block[:n])
                faults.huge_sent += n
                left -= n
            self.h.wfile.write(b'"]}')
            faults.huge_sent += 3
        finally:
            faults.huge_done = True

    def send_trickled(
        self, status: int, headers: Mapping[str, str], body: bytes, delay: float
    ) -> None:
        """Fault trickle_delay: the answer's body one byte at a time."""
        self.status, self.kind, self.responded = status, "fault:trickle", True
        self.record()
        self.h.wfile.write(self._head(status, headers, len(body)))
        for i in range(len(body)):
            self.h.wfile.flush()
            time.sleep(delay)
            self.h.wfile.write(body[i : i + 1])

    def send_cut(self) -> None:
        """Fault cut_answers: a 200 answer that ends after 100 of its declared 1,000 bytes."""
        self.status, self.kind, self.responded = 200, "fault:cut_answer", True
        self.record()
        self.h.wfile.write(self._head(200, {"Content-Type": "application/json"}, 1000))
        self.h.wfile.write(b'{"kind":"' + b"x" * 91)
        self.h.wfile.flush()
        try:
            self.h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send_json(self, obj: Any, kind: str | None = None) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send(200, body, "application/json", kind=kind)

    def send_error(self, e: HttpError) -> None:
        self.send(e.status, e.body, e.content_type, e.headers, close=e.close, kind=e.kind)

    def reset(self) -> None:
        """Abort the connection with a TCP RST, without any response."""
        self.kind = "fault:reset"
        self.record()
        sock = self.h.connection
        self.h.close_connection = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.h.rfile.close()
            sock.close()
        except OSError:
            pass

    def linger_close(self) -> None:
        """After an early 'Connection: close' answer: half-close and discard what the client
        still sends (like nginx's lingering close), so it can read the response."""
        sock = self.h.connection
        self.h.close_connection = True
        try:
            self.h.wfile.flush()
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 30
            sock.settimeout(5)
            while time.monotonic() < deadline:
                if not self.h.rfile.read1(IO_SIZE):  # type: ignore[attr-defined]
                    break
        except (OSError, ValueError):
            pass

    # -- request helpers -----------------------------------------------------------------------

    def json_body(self, parse: Callable[[Any], Any]) -> Any:
        """axum's Json extractor: 415 / 413 / 400 / 422 plain-text rejections."""
        ctype = self.headers.get("Content-Type")
        if not _is_json_content_type(ctype):
            raise plain_error(
                415,
                "Expected request with `Content-Type: application/json`",
                "UnsupportedMediaType",
            )
        assert self.body is not None
        data = self.body.read_all(JSON_BODY_LIMIT)
        if data is None:
            raise plain_error(
                413, "Failed to buffer the request body: length limit exceeded", "PayloadTooLarge"
            )
        try:
            value = _json_loads(data)
        except ValueError as e:
            raise plain_error(
                400, f"Failed to parse the request body as JSON: {e}", "JsonSyntaxError"
            ) from None
        try:
            return parse(value)
        except _DataError as e:
            raise plain_error(
                422,
                f"Failed to deserialize the JSON body into the target type: {e.render()}",
                "JsonDataError",
            ) from None

    def permission(self, name: str) -> frozenset[str]:
        return self.token.permission(name) if self.token else frozenset()


def _is_json_content_type(ctype: str | None) -> bool:
    if not ctype:
        return False
    mime = ctype.split(";", 1)[0].strip().lower()
    typ, _, sub = mime.partition("/")
    return typ == "application" and (sub == "json" or sub.endswith("+json"))


def _json_loads(data: bytes) -> Any:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"expected value (got {name})")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid unicode at byte {e.start}") from None
    try:
        return json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from None


def _visible_ascii(value: str) -> bool:
    return all(c == "\t" or 32 <= ord(c) < 127 for c in value)


# --------------------------------------------------------------------------------------------
# The server


class AtticTestServer:
    """A fake atticd on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        algorithm: str = "HS256",
        hs256_secret: bytes | None = None,
        rs256_private_pem: bytes | None = None,
        require_proof_of_possession: bool = True,
        nar_size_threshold: int = 64 * 1024,
        compression: str = "none",
        allowed_hosts: Iterable[str] = (),
        soft_delete_caches: bool = False,
        api_endpoint: str | None = None,
        *,
        substituter_endpoint: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if algorithm not in ("HS256", "RS256"):
            raise ValueError(f"algorithm must be HS256 or RS256, not {algorithm!r}")
        if compression not in ("none", "zstd"):
            raise ValueError(f"compression must be 'none' or 'zstd', not {compression!r}")
        if compression == "zstd" and _zstd is None:
            raise ValueError(
                "compression='zstd' needs the 'zstandard' Python module, which is not installed"
            )
        if api_endpoint is not None and not api_endpoint.endswith("/"):
            raise ValueError("api_endpoint must end with '/'")
        self.algorithm = algorithm
        self.hs256_secret = hs256_secret if hs256_secret is not None else os.urandom(32)
        self.rs256_private_pem: bytes | None = None
        self._sign_key: Any
        self._verify_key: Any
        if algorithm == "RS256":
            if rs256_private_pem is None:
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                rs256_private_pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            self.rs256_private_pem = rs256_private_pem
            private = serialization.load_pem_private_key(rs256_private_pem, password=None)
            if not isinstance(private, rsa.RSAPrivateKey):
                raise ValueError("rs256_private_pem must be an RSA private key")
            self._sign_key = private
            self._verify_key = private.public_key()
        else:
            self._sign_key = self.hs256_secret
            self._verify_key = self.hs256_secret
        self.require_proof_of_possession = require_proof_of_possession
        self.nar_size_threshold = nar_size_threshold
        self.compression = compression
        self.allowed_hosts = tuple(allowed_hosts)
        self.soft_delete_caches = soft_delete_caches
        self.api_endpoint = api_endpoint
        self.substituter_endpoint = substituter_endpoint
        self.host = host
        self.port = port
        self.tls = tls
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.uploads: list[tuple[str, str, str]] = []
        self.errors: list[str] = []  # tracebacks of unexpected server-side exceptions
        self._lock = threading.RLock()
        self._caches: dict[str, CacheState] = {}
        self._objects: dict[str, dict[str, StoredObject]] = {}
        self._nars: dict[bytes, Nar] = {}
        self._chunks: set[bytes] = set()
        self._conns: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._own_data_dir = data_dir is None
        self._data_dir = data_dir
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._down = False

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> AtticTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with self._state_lock:
            if self._data_dir is None:
                self._data_dir = tempfile.mkdtemp(prefix="attic-test-server-")
            os.makedirs(self._data_dir, exist_ok=True)
            self._listen()

    def stop(self) -> None:
        self.faults.upload_release.set()  # no handler thread stays held past the server
        with self._state_lock:
            self._unlisten()
            self._close_connections()
            if self._own_data_dir and self._data_dir:
                shutil.rmtree(self._data_dir, ignore_errors=True)
                self._data_dir = None

    def set_down(self, down: bool) -> None:
        """True: close the listening socket (connects are refused) and every open connection.
        False: listen again on the same port."""
        with self._state_lock:
            if down and not self._down:
                self._unlisten()
                self._close_connections()
                self._down = True
            elif not down and self._down:
                self._listen()
                self._down = False

    def _listen(self) -> None:
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"attic-test-server:{self.port}",
        )
        self._thread.start()

    def _unlisten(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    @property
    def hs256_secret_b64(self) -> str:
        return base64.b64encode(self.hs256_secret).decode()

    @property
    def rs256_secret_b64(self) -> str | None:
        if self.rs256_private_pem is None:
            return None
        return base64.b64encode(self.rs256_private_pem).decode()

    # -- tokens --------------------------------------------------------------------------------

    def make_token(
        self,
        caches: Mapping[str, Mapping[str, int | bool] | Iterable[str]] | None = None,
        sub: str = "ci",
        validity: float | None = 3600,
        nbf: float | None = None,
        exp: float | None = None,
    ) -> str:
        """A token laid out like ``atticadm make-token``: sub, exp, nbf and the namespace claim.
        Permissions are ``{"pattern": {"r": 1, ...}}`` (or an iterable of flag names); only true
        flags are written, as 1. nbf defaults to now and exp to now + validity."""
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub}
        if exp is not None:
            claims["exp"] = exp
        elif validity is not None:
            claims["exp"] = now + int(validity)
        claims["nbf"] = now if nbf is None else nbf
        out: dict[str, dict[str, int]] = {}
        for pattern, perm in (caches or {}).items():
            if isinstance(perm, Mapping):
                flags = [f for f, v in perm.items() if v]
            else:
                flags = list(perm)
            out[pattern] = {f: 1 for f in flags}
        claims[NAMESPACE] = {"caches": out}
        return self.make_token_raw(claims)

    def root_token(self, sub: str = "root", validity: float = 3600) -> str:
        """Every flag on ``*``."""
        return self.make_token({"*": dict.fromkeys(FLAGS, 1)}, sub=sub, validity=validity)

    def make_token_raw(
        self,
        claims: Mapping[str, Any],
        *,
        key: Any = None,
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign arbitrary claims with the server key (or ``key``/``algorithm``)."""
        return _JWT.encode(
            dict(claims),
            self._sign_key if key is None else key,
            algorithm=algorithm or self.algorithm,
            headers=dict(headers) if headers else None,
        )

    def _verify_token(self, token: str) -> _Token | None:
        try:
            header = jwt.get_unverified_header(token)
            typ = header.get("typ")
            if typ is not None:
                if not isinstance(typ, str):
                    return None
                if typ.upper() != "JWT" and not typ.upper().endswith("+JWT"):
                    return None
            claims = _JWT.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                },
            )
        except Exception:
            return None
        now = time.time()
        for name in ("exp", "nbf", "iat"):
            v = claims.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                return None
        if claims.get("exp") is not None and now > claims["exp"]:
            return None
        if claims.get("nbf") is not None and now < claims["nbf"]:
            return None
        if claims.get("iat") is not None and claims["iat"] > now:
            return None
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            return None
        ns = claims.get(NAMESPACE)
        if not isinstance(ns, dict) or not isinstance(ns.get("caches"), dict):
            return None
        caches: dict[str, frozenset[str]] = {}
        for pattern, perm in ns["caches"].items():
            if not PATTERN_RE.fullmatch(pattern) or not isinstance(perm, dict):
                return None
            flags = set()
            for flag, value in perm.items():
                if flag not in FLAGS:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
                    return None
                if value == 1:
                    flags.add(flag)
            caches[pattern] = frozenset(flags)
        return _Token(sub, caches)

    def _authenticate(self, x: _Exchange) -> None:
        value = x.headers.get("Authorization")
        if not value:
            return
        scheme, sep, rest = value.partition(" ")
        if not sep:
            return
        token: str | None = None
        if scheme.lower() == "bearer":
            token = rest
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(rest, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return
            _, colon, password = decoded.partition(":")
            if colon:
                token = password
        if token:
            x.token = self._verify_token(token)

    # -- direct state access -------------------------------------------------------------------

    def create_cache(
        self,
        name: str,
        public: bool = False,
        upstream: Iterable[str] = ("cache.nixos.org-1",),
        priority: int = 41,
        keypair: str | None = None,
        store_dir: str = "/nix/store",
        retention_period: int | None = None,
    ) -> CacheState:
        """Create a cache directly (no HTTP). ``keypair`` is Nix's ``name:base64(64 bytes)``."""
        if not CACHE_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid cache name {name!r}")
        kp = Keypair.generate(name) if keypair is None else Keypair.parse(keypair)
        with self._lock:
            if name in self._caches:
                raise ValueError(f"cache {name!r} already exists")
            cache = CacheState(
                name=name,
                keypair_obj=kp,
                is_public=public,
                store_dir=store_dir,
                priority=priority,
                upstream_cache_key_names=list(upstream),
                retention_period=retention_period,
            )
            self._caches[name] = cache
            self._objects[name] = {}
            return cache

    def delete_cache(self, name: str, soft: bool | None = None) -> None:
        """Delete directly; ``soft`` defaults to the server's soft_delete_caches setting."""
        with self._lock:
            self._destroy(name, self.soft_delete_caches if soft is None else soft)

    def _destroy(self, name: str, soft: bool) -> None:
        cache = self._caches.get(name)
        if cache is None or cache.deleted_at is not None:
            raise KeyError(name)
        if soft:
            cache.deleted_at = time.time()
        else:
            del self._caches[name]
            self._objects.pop(name, None)

    def cache(self, name: str) -> CacheState:
        """The live cache row (KeyError if absent or soft-deleted)."""
        with self._lock:
            cache = self._caches.get(name)
            if cache is None or cache.deleted_at is not None:
                raise KeyError(name)
            return cache

    def caches(self) -> list[str]:
        with self._lock:
            return sorted(n for n, c in self._caches.items() if c.deleted_at is None)

    def public_key(self, name: str) -> str:
        return self.cache(name).public_key

    def objects(self, name: str) -> dict[str, StoredObject]:
        with self._lock:
            self.cache(name)
            return dict(self._objects[name])

    def nar_bytes(self, name: str, store_path_hash: str) -> bytes:
        """The uncompressed NAR of an object (for assertions)."""
        with self._lock:
            obj = self._objects[name][store_path_hash]
            nar = self._nars[obj.nar_hash_bytes]
        with open(nar.path, "rb") as f:
            data = f.read()
        if nar.compression == "zstd":
            assert _zstd is not None
            data = _zstd.ZstdDecompressor().decompressobj().decompress(data)
        return data

    def add_object(
        self,
        name: str,
        store_path: str,
        nar: bytes,
        references: Iterable[str] = (),
        deriver: str | None = None,
        sigs: Iterable[str] = (),
        ca: str | None = None,
    ) -> StoredObject:
        """Insert an object directly (no HTTP); references are basenames."""
        digest = hashlib.sha256(nar).digest()
        with self._lock:
            self.cache(name)
            if digest not in self._nars:
                assert self._data_dir is not None, "start the server first"
                path = os.path.join(self._data_dir, f"{digest.hex()}-{uuid.uuid4().hex}.nar")
                stored = nar
                if self.compression == "zstd":
                    assert _zstd is not None
                    stored = _zstd.ZstdCompressor().compress(nar)
                with open(path, "wb") as f:
                    f.write(stored)
                self._nars[digest] = Nar(digest, len(nar), path, self.compression, len(stored))
            h = os.path.basename(store_path).split("-", 1)[0]
            obj = StoredObject(
                store_path=store_path,
                references=tuple(references),
                deriver=deriver,
                sigs=tuple(sigs),
                ca=ca,
                nar_hash="sha256:" + digest.hex(),
                nar_size=len(nar),
                created_at=time.time(),
            )
            self._objects[name][h] = obj
            return obj

    # -- records -------------------------------------------------------------------------------

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def _note_error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def count(
        self, method: str | None = None, path_prefix: str | None = None, status: int | None = None
    ) -> int:
        with self._lock:
            records = list(self.requests)
        return sum(
            1
            for r in records
            if (method is None or r.method == method)
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (status is None or r.status == status)
        )

    def clear_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.uploads.clear()

    # -- request processing --------------------------------------------------------------------

    def _serve(self, h: _Handler) -> None:
        x = _Exchange(self, h)
        try:
            try:
                x.body = _Body(h.rfile, h.headers)
            except _BadFraming as e:
                raise plain_error(400, f"Bad Request: {e}", "BadRequest", close=True) from None
            self._dispatch(x)
        except HttpError as e:
            if not x.responded:
                x.send_error(e)
        except _BadFraming as e:
            if not x.responded:
                x.send_error(plain_error(400, f"Bad Request: {e}", "BadRequest", close=True))
            h.close_connection = True
        except (_ClientGone, OSError):
            if x.kind is None:
                x.kind = "client-gone"
            x.record()
            h.close_connection = True
            return
        except Exception:
            self._note_error(traceback.format_exc())
            if not x.responded:
                try:
                    x.send_error(api_error("InternalServerError"))
                except OSError:
                    pass
            h.close_connection = True
        finally:
            x.record()
            # Keep the connection usable: discard whatever of the body the handler did not read.
            if x.body is not None:
                if not h.close_connection and not x.body.complete:
                    try:
                        x.body.drain()
                    except (_ClientGone, _BadFraming, OSError):
                        h.close_connection = True
                x.body.close()

    def _dispatch(self, x: _Exchange) -> None:
        f = self.faults
        is_api = x.path.startswith("/_api/")
        assert x.body is not None
        # Infrastructure faults first (they sit "in front of" atticd).
        if (x.method == "PUT" and f._take("reset_puts")) or f._roll(f.reset_rate):
            x.reset()
            return
        if is_api and f._take("cut_answers"):
            x.send_cut()
            return
        if f.max_body_size is not None:
            too_big = (
                x.body.length > f.max_body_size
                if x.body.length is not None
                else not x.body.prebuffer(f.max_body_size)
            )
            if too_big:
                x.send(
                    413,
                    NGINX_413,
                    "text/html",
                    {"Server": "nginx"},
                    close=True,
                    kind="fault:max_body_size",
                )
                x.linger_close()
                return
        if is_api:
            huge = f._pop_huge()
            if huge:
                x.send_generated(huge)
                return
            script = f._pop_script()
            if script is not None:
                status, headers, body = script
                if f.trickle_delay > 0:
                    x.send_trickled(status, headers, body, f.trickle_delay)
                    return
                x.send(status, body, None, headers, kind="fault:status_script")
                return
        if (is_api or f.include_binary_cache) and f._roll(f.fail_rate):
            status = f.fail_status
            if status == 500:
                e = api_error("InternalServerError")
                x.send(500, e.body, e.content_type, kind="fault:fail")
            else:
                try:
                    phrase = http.HTTPStatus(status).phrase
                except ValueError:
                    phrase = "Error"
                x.send(status, f"{status} {phrase}\n".encode(), "text/plain", kind="fault:fail")
            return
        # restrict_host
        host = x.headers.get("Host")
        if host is None:
            raise request_error("Missing Host header")
        if self.allowed_hosts and host not in self.allowed_hosts:
            raise request_error("Bad Host")
        self._authenticate(x)
        self._route(x)

    def _route(self, x: _Exchange) -> None:
        path = x.path
        m = x.method
        get = ("GET", "HEAD")
        if path == "/":
            self._methods(x, get)
            x.send(200, PLACEHOLDER_HTML, "text/html; charset=utf-8")
            return
        segs = path.split("/")[1:] if path.startswith("/") else []
        if not segs or any(s == "" for s in segs):
            raise api_error("NotFound")
        if len(segs) == 4 and segs[:3] == ["_api", "v1", "cache-config"]:
            self._methods(x, ("GET", "HEAD", "POST", "PATCH", "DELETE"))
            name = self._path_cache(segs[3])
            if m in get:
                self._get_cache_config(x, name)
            elif m == "POST":
                self._create_cache(x, name)
            elif m == "PATCH":
                self._configure_cache(x, name)
            else:
                self._destroy_cache(x, name)
            return
        if segs == ["_api", "v1", "get-missing-paths"]:
            self._methods(x, ("POST",))
            self._get_missing_paths(x)
            return
        if segs == ["_api", "v1", "upload-path"]:
            self._methods(x, ("PUT",))
            self._upload_path(x)
            return
        if len(segs) == 2:
            self._methods(x, get)
            name = self._path_cache(segs[0])
            if segs[1] == "nix-cache-info":
                self._nix_cache_info(x, name)
            elif segs[1] == "attic-cache-info":
                self._get_cache_config(x, name, binary_cache=True)
            else:
                self._narinfo(x, name, self._path_param(segs[1]))
            return
        if len(segs) == 3 and segs[1] == "nar":
            self._methods(x, get)
            name = self._path_cache(segs[0])
            self._nar(x, name, self._path_param(segs[2]))
            return
        raise api_error("NotFound")

    @staticmethod
    def _methods(x: _Exchange, allowed: tuple[str, ...]) -> None:
        if x.method not in allowed:
            allow = ",".join(allowed)
            raise HttpError(405, b"", None, "MethodNotAllowed", {"Allow": allow})

    @staticmethod
    def _path_param(seg: str) -> str:
        try:
            return unquote(seg, errors="strict")
        except UnicodeDecodeError:
            raise plain_error(
                400, "Invalid URL: Cannot parse percent-encoded path as UTF-8", "InvalidUrl"
            ) from None

    def _path_cache(self, seg: str) -> str:
        name = self._path_param(seg)
        if not CACHE_NAME_RE.fullmatch(name):
            raise plain_error(400, f'Invalid URL: Invalid cache name "{name}"', "InvalidUrl")
        return name

    # -- authorization (§4.3) -------------------------------------------------------------------

    def _auth_cache(
        self, x: _Exchange, name: str, flag: str, binary_cache: bool = False
    ) -> CacheState:
        perm = set(x.permission(name))
        with self._lock:
            cache = self._caches.get(name)
            if cache is not None and cache.deleted_at is not None:
                cache = None
        if cache is None:
            raise api_error("NoSuchCache" if perm else "Unauthorized")
        if cache.is_public:
            perm.add("r")
            if binary_cache:
                x.public = True
        if flag not in perm:
            raise api_error("AccessError" if perm else "Unauthorized")
        return cache

    # -- cache-config ----------------------------------------------------------------------------

    def _endpoints(self, x: _Exchange, name: str) -> tuple[str, str]:
        if self.api_endpoint is not None:
            api = self.api_endpoint
        else:
            proto = "https" if x.headers.get("X-Forwarded-Proto") == "https" else "http"
            api = f"{proto}://{x.headers.get('Host', '')}/"
        return (self.substituter_endpoint or api) + name, api

    def _get_cache_config(self, x: _Exchange, name: str, binary_cache: bool = False) -> None:
        cache = self._auth_cache(x, name, "r", binary_cache=binary_cache)
        subst, api = self._endpoints(x, name)
        with self._lock:
            config = {
                "substituter_endpoint": subst,
                "api_endpoint": api,
                "public_key": cache.public_key,
                "is_public": cache.is_public,
                "store_dir": cache.store_dir,
                "priority": cache.priority,
                "upstream_cache_key_names": list(cache.upstream_cache_key_names),
                "retention_period": "Global"
                if cache.retention_period is None
                else {"Period": cache.retention_period},
            }
        x.send_json(config)

    def _create_cache(self, x: _Exchange, name: str) -> None:
        def parse(v: Any) -> dict[str, Any]:
            obj = _de_struct(v, "CreateCacheRequest", "")
            return {
                "keypair": _req(obj, "keypair", _de_keypair, ""),
                "is_public": _req(obj, "is_public", _de_bool, ""),
                "store_dir": _req(obj, "store_dir", _de_str, ""),
                "priority": _req(obj, "priority", _de_i32, ""),
                "upstream_cache_key_names": _req(
                    obj, "upstream_cache_key_names", lambda v, p: _de_list(v, p, _de_str), ""
                ),
            }

        req = x.json_body(parse)
        perm = x.permission(name)  # token alone: no public grant, before any lookup
        if "cc" not in perm:
            raise api_error("AccessError" if perm else "Unauthorized")
        with self._lock:
            if name in self._caches:  # includes soft-deleted rows
                raise api_error("CacheAlreadyExists")
            self.create_cache(
                name,
                public=req["is_public"],
                upstream=req["upstream_cache_key_names"],
                priority=req["priority"],
                keypair=req["keypair"],
                store_dir=req["store_dir"],
            )
        x.send(200)

    def _configure_cache(self, x: _Exchange, name: str) -> None:
        def parse(v: Any) -> dict[str, Any]:
            obj = _de_struct(v, "CacheConfig", "")
            out: dict[str, Any] = {}
            if obj.get("keypair") is not None:
                out["keypair"] = _de_keypair(obj["keypair"], "keypair")
            for key, fn in (
                ("is_public", _de_bool),
                ("store_dir", _de_str),
                ("priority", _de_i32),
                ("upstream_cache_key_names", lambda v, p: _de_list(v, p, _de_str)),
            ):
                value = _opt(obj, key, fn, "")
                if value is not None:
                    out[key] = value
            if obj.get("retention_period") is not None:
                out["retention_period"] = _de_retention(obj["retention_period"], "retention_period")
            for key in ("substituter_endpoint", "api_endpoint", "public_key"):
                _opt(obj, key, _de_str, "")  # type-checked, then ignored (read-only)
            return out

        req = x.json_body(parse)
        cache = self._auth_cache(x, name, "cr")
        if "retention_period" in req:
            if "cq" not in x.permission(name):
                raise api_error("AccessError")
            period = req["retention_period"]
            if period is not None and period > 2**31 - 1:
                raise request_error("Invalid retention period")
        if not req:
            raise request_error("No modifiable fields were set.")
        with self._lock:
            if "keypair" in req:
                secret = req["keypair"]
                cache.keypair_obj = (
                    Keypair.generate(name) if secret is None else Keypair.parse(secret)
                )
            if "is_public" in req:
                cache.is_public = req["is_public"]
            if "store_dir" in req:
                cache.store_dir = req["store_dir"]
            if "priority" in req:
                cache.priority = req["priority"]
            if "upstream_cache_key_names" in req:
                cache.upstream_cache_key_names = list(req["upstream_cache_key_names"])
            if "retention_period" in req:
                cache.retention_period = req["retention_period"]
        x.send(200)

    def _destroy_cache(self, x: _Exchange, name: str) -> None:
        self._auth_cache(x, name, "cd")
        with self._lock:
            try:
                self._destroy(name, self.soft_delete_caches)
            except KeyError:
                raise api_error("NoSuchCache") from None
        x.send(200)

    # -- get-missing-paths -----------------------------------------------------------------------

    def _get_missing_paths(self, x: _Exchange) -> None:
        def parse(v: Any) -> tuple[str, list[str]]:
            obj = _de_struct(v, "GetMissingPathsRequest", "")
            return (
                _req(obj, "cache", _de_cache_name, ""),
                _req(
                    obj,
                    "store_path_hashes",
                    lambda v, p: _de_list(v, p, _de_store_path_hash),
                    "",
                ),
            )

        name, hashes = x.json_body(parse)
        self._auth_cache(x, name, "w")
        with self._lock:
            present = {
                h for h, o in self._objects.get(name, {}).items() if o.nar_hash_bytes in self._nars
            }
        missing = set(hashes) - present
        x.send_json({"missing_paths": sorted(missing)})

    # -- upload-path -------------------------------------------------------------------------------

    def _upload_info(self, x: _Exchange) -> _UploadInfo:
        assert x.body is not None
        preamble = x.headers.get("X-Attic-Nar-Info-Preamble-Size")
        if preamble is not None:
            if not _visible_ascii(preamble):
                raise request_error("X-Attic-Nar-Info-Preamble-Size has invalid encoding")
            digits = preamble[1:] if preamble.startswith("+") else preamble
            if not digits or not digits.isascii() or not digits.isdigit() or int(digits) >= 2**64:
                raise request_error(
                    "X-Attic-Nar-Info-Preamble-Size must be a valid unsigned integer"
                )
            size = int(digits)
            if size > MAX_NAR_INFO_SIZE:
                raise request_error("Upload info is too large")
            raw = x.body.read_exact(size)
            if len(raw) != size:
                raise request_error("Upload info doesn't match specified size")
        else:
            header = x.headers.get("X-Attic-Nar-Info")
            if header is None:
                raise request_error("X-Attic-Nar-Info must be set")
            if not _visible_ascii(header):
                raise request_error("X-Attic-Nar-Info has invalid encoding")
            raw = header.encode("ascii")
        try:
            value = _json_loads(raw)
        except ValueError as e:
            raise request_error(str(e)) from None
        try:
            return self._parse_upload_info(value)
        except _DataError as e:
            raise request_error(e.render(with_path=False)) from None

    @staticmethod
    def _parse_upload_info(v: Any) -> _UploadInfo:
        obj = _de_struct(v, "UploadPathNarInfo", "")
        str_list = lambda v, p: _de_list(v, p, _de_str)  # noqa: E731

        def nar_hash(v: Any, p: str) -> bytes:
            s = _de_str(v, p)
            try:
                return parse_nar_hash(s)
            except ValueError as e:
                raise _DataError(str(e), p) from None

        info = _UploadInfo(
            cache=_req(obj, "cache", _de_cache_name, ""),
            store_path_hash=_req(obj, "store_path_hash", _de_store_path_hash, ""),
            store_path=_req(obj, "store_path", _de_str, ""),
            references=_req(obj, "references", str_list, ""),
            deriver=_opt(obj, "deriver", _de_str, ""),
            sigs=_req(obj, "sigs", str_list, ""),
            ca=_opt(obj, "ca", _de_str, ""),
            nar_hash=_req(obj, "nar_hash", nar_hash, ""),
            nar_size=_req(obj, "nar_size", _de_u64, ""),
        )
        _opt(obj, "system", _de_str, "")  # accepted, never stored
        return info

    def _upload_path(self, x: _Exchange) -> None:
        assert x.body is not None
        info = self._upload_info(x)  # 400 before auth
        self._auth_cache(x, info.cache, "w")
        if self.faults._hold_upload():
            self.faults.upload_release.wait()
        with self._lock:
            existing = self._nars.get(info.nar_hash)
        if existing is not None:
            if self.require_proof_of_possession:
                hasher = hashlib.sha256()
                size = 0
                while data := x.body.read(IO_SIZE):
                    hasher.update(data)
                    size += len(data)
                if (
                    hasher.digest() != info.nar_hash
                    or size != info.nar_size
                    or size != existing.nar_size
                ):
                    raise request_error("Bad NAR Hash or Size")
            self._upsert(x, info)
            self._note_upload(info, "Deduplicated")
            x.send_json({"kind": "Deduplicated", "frac_deduplicated": None})
            return
        unchunked = self.nar_size_threshold == 0 or info.nar_size < self.nar_size_threshold
        nar, frac, new_chunks = self._store_nar(x, info, unchunked)
        if not _client_stays(x, self.faults.upload_response_delay):
            os.unlink(nar.path)
            raise _ClientGone()
        with self._lock:
            if info.nar_hash in self._nars:  # a concurrent upload won the race
                os.unlink(nar.path)
                nar = self._nars[info.nar_hash]
            else:
                self._nars[info.nar_hash] = nar
            self._chunks.update(new_chunks)
        self._upsert(x, info)
        self._note_upload(info, "Uploaded")
        x.send_json({"kind": "Uploaded", "file_size": nar.file_size, "frac_deduplicated": frac})

    def _store_nar(
        self, x: _Exchange, info: _UploadInfo, unchunked: bool
    ) -> tuple[Nar, float | None, set[bytes]]:
        assert x.body is not None and self._data_dir is not None
        path = os.path.join(self._data_dir, f"{info.nar_hash.hex()}-{uuid.uuid4().hex}.nar")
        hasher = hashlib.sha256()
        size = 0
        compressor = _zstd.ZstdCompressor().compressobj() if self.compression == "zstd" else None
        pending = bytearray()  # for per-chunk hashes when "chunked"
        chunk_hashes: list[tuple[bytes, int]] = []
        ok = False
        try:
            with open(path, "wb") as out:
                left = info.nar_size
                while left > 0:
                    data = x.body.read(min(IO_SIZE, left))
                    if not data:
                        break
                    left -= len(data)
                    size += len(data)
                    hasher.update(data)
                    out.write(compressor.compress(data) if compressor else data)
                    if not unchunked:
                        pending += data
                        while len(pending) >= CHUNK_SIZE:
                            chunk_hashes.append(
                                (hashlib.sha256(pending[:CHUNK_SIZE]).digest(), CHUNK_SIZE)
                            )
                            del pending[:CHUNK_SIZE]
                if compressor:
                    out.write(compressor.flush())
            if not unchunked and pending:
                chunk_hashes.append((hashlib.sha256(pending).digest(), len(pending)))
            if hasher.digest() != info.nar_hash or size != info.nar_size:
                raise request_error(
                    "Bad chunk hash or size" if unchunked else "Bad NAR Hash or Size"
                )
            ok = True
        finally:
            if not ok:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        file_size = os.path.getsize(path)
        frac: float | None = None
        new_chunks: set[bytes] = set()
        if not unchunked:
            with self._lock:
                reused = sum(n for h, n in chunk_hashes if h in self._chunks)
            new_chunks = {h for h, _ in chunk_hashes}
            frac = reused / size if size else 0.0
        return Nar(info.nar_hash, size, path, self.compression, file_size), frac, new_chunks

    def _upsert(self, x: _Exchange, info: _UploadInfo) -> None:
        obj = StoredObject(
            store_path=info.store_path,
            references=tuple(info.references),
            deriver=info.deriver,
            sigs=tuple(info.sigs),
            ca=info.ca,
            nar_hash="sha256:" + info.nar_hash.hex(),
            nar_size=info.nar_size,
            created_by=x.token.sub if x.token else None,
            created_at=time.time(),
        )
        with self._lock:
            cache = self._caches.get(info.cache)
            if cache is None or cache.deleted_at is not None:
                raise api_error("NoSuchCache")
            self._objects[info.cache][info.store_path_hash] = obj

    def _note_upload(self, info: _UploadInfo, kind: str) -> None:
        with self._lock:
            self.uploads.append((info.cache, info.store_path_hash, kind))

    # -- binary cache ------------------------------------------------------------------------------

    def _nix_cache_info(self, x: _Exchange, name: str) -> None:
        cache = self._auth_cache(x, name, "r", binary_cache=True)
        body = f"WantMassQuery: 1\nStoreDir: {cache.store_dir}\nPriority: {cache.priority}\n"
        x.send(200, body.encode(), "text/x-nix-cache-info")

    def _lookup(self, x: _Exchange, name: str, param: str, suffix: str) -> tuple[StoredObject, Nar]:
        stem, dot, ext = param.partition(".")
        if not dot or ext != suffix:
            raise api_error("NotFound")
        if not STORE_PATH_HASH_RE.fullmatch(stem):
            raise api_error("InvalidStorePathHash")
        with self._lock:
            cache = self._caches.get(name)
            obj = None
            if cache is not None and cache.deleted_at is None:
                obj = self._objects.get(name, {}).get(stem)
            nar = self._nars.get(obj.nar_hash_bytes) if obj is not None else None
        if obj is None or nar is None:
            raise api_error("NoSuchObject")  # before any permission check
        self._auth_cache(x, name, "r", binary_cache=True)
        return obj, nar

    def _narinfo(self, x: _Exchange, name: str, param: str) -> None:
        obj, nar = self._lookup(x, name, param, "narinfo")
        cache = self.cache(name)
        h = param.partition(".")[0]
        lines = [
            f"StorePath: {obj.store_path}",
            f"URL: nar/{h}.nar",
            f"Compression: {nar.compression}",
            f"NarHash: {obj.nar_hash}",
            f"NarSize: {obj.nar_size}",
            f"References: {' '.join(obj.references)}",
        ]
        if obj.deriver:
            lines.append(f"Deriver: {obj.deriver}")
        fp = fingerprint(obj.store_path, obj.nar_hash_bytes, obj.nar_size, obj.references)
        lines.append(f"Sig: {cache.keypair_obj.sign(fp)}")
        if obj.ca:
            lines.append(f"CA: {obj.ca}")
        x.send(200, ("\n".join(lines) + "\n").encode(), "text/x-nix-narinfo")

    def _nar(self, x: _Exchange, name: str, param: str) -> None:
        _, nar = self._lookup(x, name, param, "nar")
        x.send(200, b"", "application/x-nix-nar", file=nar.path, length=nar.file_size)


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.attic_server", description="Run the Attic test server."
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="NAME[:public]",
        help="create a cache at startup (repeatable)",
    )
    ap.add_argument(
        "--print-token", action="store_true", help="print a root token (all flags on *)"
    )
    ap.add_argument("--token-validity", type=int, default=30 * 86400, metavar="SECONDS")
    ap.add_argument("--algorithm", choices=("HS256", "RS256"), default="HS256")
    ap.add_argument("--hs256-secret-base64", default=None)
    ap.add_argument("--compression", choices=("none", "zstd"), default="none")
    ap.add_argument("--nar-size-threshold", type=int, default=64 * 1024)
    ap.add_argument("--no-proof-of-possession", action="store_true")
    ap.add_argument("--soft-delete-caches", action="store_true")
    ap.add_argument("--api-endpoint", default=None)
    ap.add_argument("--data-dir", default=None, help="where NARs are stored (default: a temp dir)")
    ap.add_argument("--tls-cert", default=None, help="serve HTTPS with this PEM certificate chain")
    ap.add_argument("--tls-key", default=None, help="the certificate's PEM key")
    ap.add_argument(
        "--tls-client-ca", default=None, help="require client certificates from this CA"
    )
    args = ap.parse_args(argv)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            tls.load_verify_locations(args.tls_client_ca)
            tls.verify_mode = ssl.CERT_REQUIRED

    secret = base64.b64decode(args.hs256_secret_base64) if args.hs256_secret_base64 else None
    srv = AtticTestServer(
        algorithm=args.algorithm,
        hs256_secret=secret,
        require_proof_of_possession=not args.no_proof_of_possession,
        nar_size_threshold=args.nar_size_threshold,
        compression=args.compression,
        soft_delete_caches=args.soft_delete_caches,
        api_endpoint=args.api_endpoint,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        tls=tls,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with srv:
        for spec in args.cache:
            name, _, flag = spec.partition(":")
            if flag not in ("", "public"):
                ap.error(f"--cache {spec!r}: the suffix may only be ':public'")
            srv.create_cache(name, public=flag == "public")
            print(f"cache {name} {srv.public_key(name)}", file=sys.stderr)
        print(srv.url, flush=True)
        if args.print_token:
            print(srv.root_token(validity=args.token_validity), flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
