"""Typed values that flow between the modules."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32_encode(data: bytes) -> str:
    """Nix's base32: reversed bit order over its own alphabet (52 chars for 32 bytes)."""
    length = (len(data) * 8 - 1) // 5 + 1
    out = []
    for n in range(length - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(NIX32_ALPHABET[c & 0x1F])
    return "".join(out)


def nix32_decode(text: str) -> bytes:
    length = len(text) * 5 // 8
    out = bytearray(length)
    for n, ch in enumerate(reversed(text)):
        digit = NIX32_ALPHABET.find(ch)
        if digit < 0:
            raise ValueError(f"invalid nix-base32 character {ch!r}")
        b = n * 5
        i, j = divmod(b, 8)
        if i < length:
            out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < length:
            out[i + 1] |= carry
        elif carry:
            raise ValueError("invalid nix-base32 string (non-zero padding)")
    return bytes(out)


def sha256_digest(text: str) -> bytes:
    """Decode a sha256 hash given as SRI (sha256-<b64>), sha256:<hex> or sha256:<nix32>."""
    if text.startswith("sha256-"):
        raw = base64.b64decode(text[7:])
    elif text.startswith("sha256:"):
        body = text[7:]
        raw = bytes.fromhex(body) if len(body) == 64 else nix32_decode(body)
    else:
        raise ValueError(f"unsupported hash format: {text!r}")
    if len(raw) != 32:
        raise ValueError(f"sha256 digest must be 32 bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class PathInfo:
    """One valid store path as ``nix path-info --json`` describes it, normalised."""

    path: str
    nar_hash: bytes  # raw 32-byte sha256 digest
    nar_size: int
    references: tuple[str, ...] = ()  # full store paths, self-reference included when present
    deriver: str | None = None  # full path of the .drv, if known
    signatures: tuple[str, ...] = ()
    ca: str | None = None
    registration_time: int | None = None
    ultimate: bool = False

    @property
    def basename(self) -> str:
        return os.path.basename(self.path)

    @property
    def hash_part(self) -> str:
        return self.basename.split("-", 1)[0]

    @property
    def name(self) -> str:
        return self.basename.split("-", 1)[1]

    @property
    def nar_hash_hex(self) -> str:
        return "sha256:" + self.nar_hash.hex()

    @property
    def nar_hash_nix32(self) -> str:
        return "sha256:" + nix32_encode(self.nar_hash)

    @property
    def signature_key_names(self) -> frozenset[str]:
        return frozenset(s.split(":", 1)[0] for s in self.signatures)


@dataclass
class PushReport:
    """What one target did with a batch of paths."""

    uploaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # already in the cache
    upstream: list[str] = field(default_factory=list)  # signed by an upstream key: not uploaded
    failed: dict[str, Exception] = field(default_factory=dict)
    bytes_sent: int = 0


# -- target names: the one place that spells a target's id (queue rows, logs and status use it) --


def attic_server_key(server: str) -> str:
    """Every cache of one Attic server shares this key (its breaker, its parked items)."""
    return f"attic:{server}"


def attic_target_id(server: str, cache: str) -> str:
    return f"{attic_server_key(server)}/{cache}"


def store_target_id(url: str) -> str:
    return f"store:{url}"
