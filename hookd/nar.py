"""NAR serialisation of small store paths, in-process.

Spawning `nix-store --dump` costs more than the dump itself for the many small paths a build
produces. Callers verify the result against the path's recorded NAR hash before sending a byte,
and fall back to `nix-store --dump` on any difference, so a bug here can cost speed, never a
corrupt upload.

Format (Nix's `nix-archive-1`): every token is a little-endian u64 length, the bytes, and zero
padding to 8; a node is `( type regular [executable ""] contents <data> )`,
`( type symlink target <t> )` or `( type directory entry ( name <n> node <node> )… )` with
entries in byte order of their names.
"""

from __future__ import annotations

import os
import stat


class TooLarge(Exception):
    """The NAR would exceed the limit given to ``serialize``."""


def _token(data: bytes) -> bytes:
    pad = (8 - len(data) % 8) % 8
    return len(data).to_bytes(8, "little") + data + b"\0" * pad


_OPEN, _CLOSE, _TYPE = _token(b"("), _token(b")"), _token(b"type")


def serialize(path: str, limit: int) -> bytes:
    """The NAR of ``path``; raises TooLarge past ``limit`` bytes, OSError if unreadable."""
    out: list[bytes] = [_token(b"nix-archive-1")]
    size = [len(out[0])]

    def emit(*parts: bytes) -> None:
        for part in parts:
            size[0] += len(part)
            if size[0] > limit:
                raise TooLarge(path)
            out.append(part)

    def node(p: bytes) -> None:
        st = os.lstat(p)
        emit(_OPEN, _TYPE)
        if stat.S_ISREG(st.st_mode):
            if st.st_size > limit:
                raise TooLarge(path)
            emit(_token(b"regular"))
            if st.st_mode & stat.S_IXUSR:
                emit(_token(b"executable"), _token(b""))
            with open(p, "rb") as f:
                emit(_token(b"contents"), _token(f.read()))
        elif stat.S_ISLNK(st.st_mode):
            emit(_token(b"symlink"), _token(b"target"), _token(os.readlink(p)))
        elif stat.S_ISDIR(st.st_mode):
            emit(_token(b"directory"))
            for name in sorted(os.listdir(p)):
                emit(_token(b"entry"), _OPEN, _token(b"name"), _token(name), _token(b"node"))
                node(os.path.join(p, name))
                emit(_CLOSE)
        else:
            raise OSError(f"{p!r}: not a regular file, symlink or directory")
        emit(_CLOSE)

    node(os.fsencode(path))
    return b"".join(out)
