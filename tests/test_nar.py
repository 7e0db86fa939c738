"""In-process NAR serialisation must be byte-identical to `nix-store --dump`."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from hookd import nar
from hookd.errors import NixError
from hookd.nix import Nix
from tests.conftest import needs_nix, nix_build, nonce, path_info, requisites

pytestmark = [needs_nix]


def dump(path: str) -> bytes:
    return subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True).stdout


def test_serialize_matches_nix_store_dump_for_files_dirs_symlinks_executables() -> None:
    out = nix_build(
        ["d", "multi.out", "multi.dev", "multi.lib"], nonce_value=nonce()
    ).stdout.split()
    closure = sorted(requisites(out))
    kinds = {Path(p).name.split("-", 1)[1] for p in closure}
    assert {"dep-c", "top-a", "multi-dev"} <= kinds  # c: dir + symlink + executable
    for path in closure:
        assert nar.serialize(path, limit=1 << 20) == dump(path), path


def test_serialize_refuses_past_the_limit_and_odd_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    with pytest.raises(nar.TooLarge):
        nar.serialize(str(tmp_path / "f"), limit=64)
    import os

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        nar.serialize(str(tmp_path / "fifo"), limit=1 << 20)


def collect(nix: Nix, path: str, **kw: object) -> bytes:
    async def run() -> bytes:
        parts = []
        async with nix.dump(path, **kw) as chunks:  # type: ignore[arg-type]
            async for c in chunks:
                parts.append(c)
        return b"".join(parts)

    return asyncio.run(run())


def test_small_paths_need_no_nix_store_process_and_a_mismatch_falls_back(tmp_path: Path) -> None:
    (a,) = [p for p in nix_build(["a"], nonce_value=nonce()).stdout.split()]
    info = path_info([a])[a]
    digest = hashlib.sha256(dump(a)).digest()
    no_nix = Nix(bin_dir=tmp_path / "no-nix-here")
    # verified in-process: no nix-store needed at all
    assert collect(no_nix, a, nar_hash=digest, nar_size=info["narSize"]) == dump(a)
    # a wrong recorded hash is never trusted: it falls back to nix-store (absent here → error)
    with pytest.raises((NixError, OSError)):
        collect(no_nix, a, nar_hash=b"\0" * 32, nar_size=info["narSize"])
    # and with nix-store present the fallback streams the real NAR
    assert collect(Nix(), a, nar_hash=b"\0" * 32, nar_size=info["narSize"]) == dump(a)
