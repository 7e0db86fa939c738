"""The routes hookd calls and their request bodies (docs/attic-api.md §2, §3).

Paths are relative to an endpoint that ends in ``/`` (``urljoin`` semantics, like Attic's own
client). Bodies are built here so that the push target and ``hookd provision`` send the same
bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from hookd.attic.answers import GLOBAL, Retention
from hookd.models import PathInfo

API = "_api/v1/"
MISSING_BATCH = 10_000  # hashes per get-missing-paths call (axum's 2 MiB body limit ≈ 59k)
PREAMBLE_THRESHOLD = 4096  # the official client's NAR_INFO_PREAMBLE_THRESHOLD
# One encoder for every upload: json.dumps with non-default options builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def cache_config(cache: str) -> str:
    return f"{API}cache-config/{cache}"


def get_missing_paths() -> str:
    return f"{API}get-missing-paths"


def upload_path() -> str:
    return f"{API}upload-path"


def narinfo(cache: str, store_path_hash: str) -> str:
    return f"{cache}/{store_path_hash}.narinfo"


def nix_cache_info(cache: str) -> str:
    return f"{cache}/nix-cache-info"


class MissingPathsRequest(TypedDict):
    cache: str
    store_path_hashes: list[str]


class UploadPathNarInfo(TypedDict):
    cache: str
    store_path_hash: str
    store_path: str
    references: list[str]
    system: None
    deriver: str | None
    sigs: list[str]
    ca: str | None
    nar_hash: str
    nar_size: int


Keypair = Literal["Generate"] | str  # "Generate", or a secret key "name:base64(64 bytes)"


@dataclass(frozen=True)
class CreateCache:
    """POST cache-config: all five fields are required by the server."""

    is_public: bool
    store_dir: str = "/nix/store"
    priority: int = 41
    upstream_cache_key_names: tuple[str, ...] = ("cache.nixos.org-1",)
    keypair: Keypair = "Generate"

    def body(self) -> dict[str, object]:
        return {
            "keypair": "Generate" if self.keypair == "Generate" else {"Keypair": self.keypair},
            "is_public": self.is_public,
            "store_dir": self.store_dir,
            "priority": self.priority,
            "upstream_cache_key_names": list(self.upstream_cache_key_names),
        }


def retention_wire(value: Retention) -> object:
    """``retention_period`` for a PATCH body (needs ``cq``)."""
    return "Global" if value == GLOBAL else {"Period": value}


def missing_paths_body(cache: str, hashes: Sequence[str]) -> MissingPathsRequest:
    return {"cache": cache, "store_path_hashes": list(hashes)}


def nar_info(info: PathInfo, cache: str) -> UploadPathNarInfo:
    """The ``UploadPathNarInfo`` JSON object, all ten keys in the official client's order."""
    return {
        "cache": cache,
        "store_path_hash": info.hash_part,
        "store_path": info.path,
        "references": [os.path.basename(r) for r in info.references],
        "system": None,
        "deriver": os.path.basename(info.deriver) if info.deriver else None,
        "sigs": list(info.signatures),
        "ca": info.ca,
        "nar_hash": info.nar_hash_hex,
        "nar_size": info.nar_size,
    }


def encode_nar_info(info: PathInfo, cache: str) -> tuple[bytes, bool]:
    """The compact JSON and whether it must go in the body preamble (JSON ≥ 4 KiB)."""
    data = _COMPACT.encode(nar_info(info, cache)).encode()
    return data, len(data) >= PREAMBLE_THRESHOLD


def upload_headers(meta: bytes, preamble: bool, nar_size: int) -> tuple[dict[str, str], int]:
    """Headers of PUT upload-path and the body length (preamble + NAR, or the NAR alone)."""
    headers = {"Content-Type": "application/octet-stream"}
    if preamble:
        headers["X-Attic-Nar-Info-Preamble-Size"] = str(len(meta))
        length = len(meta) + nar_size
    else:
        headers["X-Attic-Nar-Info"] = meta.decode("ascii")
        length = nar_size
    headers["Content-Length"] = str(length)
    return headers, length
