"""Who is on the other end of a Unix socket connection (the daemon's access check).

Linux has ``SO_PEERCRED`` (pid, uid, gid). macOS and the BSDs have ``LOCAL_PEERCRED`` at level
``SOL_LOCAL`` (0), which fills a ``struct xucred`` (version, uid, group count, up to 16 groups;
the first group is the effective gid) — the same call ``getpeereid(3)`` makes; macOS adds
``LOCAL_PEERPID`` for the pid. Python exposes none of the BSD constants by name, so they are
spelled out here from ``<sys/un.h>`` and ``<sys/ucred.h>``.

Where neither exists, :func:`peer_credentials` returns ``None``: the socket's file mode (0660)
and group are then the only gate, which is what they are anyway for a connect(2); this is
logged once per process, not per connection.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

import structlog

log = structlog.get_logger("hookd.peercred")

SOL_LOCAL = 0  # <sys/un.h>: the level of the LOCAL_* options on macOS and FreeBSD
LOCAL_PEERCRED = 0x001  # struct xucred of the peer
LOCAL_PEERPID = 0x002  # macOS only: pid_t of the peer
XUCRED_VERSION = 0
# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
XUCRED = struct.Struct("=IIh2x16I")
_LINUX_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


@dataclass(frozen=True)
class PeerCredentials:
    pid: int  # -1 where the platform does not tell
    uid: int
    gid: int


_warned = False


def _bsd_like() -> bool:
    return sys.platform == "darwin" or sys.platform.startswith(("freebsd", "dragonfly"))


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """The connected peer's credentials, or ``None`` when this platform cannot tell.

    Raises OSError when the platform supports it and the call fails (the peer is then refused).
    """
    so_peercred: int | None = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:
        pid, uid, gid = _LINUX_UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, so_peercred, _LINUX_UCRED.size)
        )
        return PeerCredentials(pid, uid, gid)
    if _bsd_like():
        return parse_xucred(
            sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, XUCRED.size), _peer_pid(sock)
        )
    _unavailable()
    return None


def parse_xucred(data: bytes, pid: int = -1) -> PeerCredentials:
    """A ``struct xucred`` as ``LOCAL_PEERCRED`` returns it (macOS, FreeBSD)."""
    if len(data) < XUCRED.size:
        raise OSError(f"LOCAL_PEERCRED returned {len(data)} bytes, expected {XUCRED.size}")
    version, uid, ngroups, *groups = XUCRED.unpack_from(data)
    if version != XUCRED_VERSION or ngroups < 1:
        raise OSError(f"LOCAL_PEERCRED: unexpected xucred (version {version}, {ngroups} groups)")
    return PeerCredentials(pid, uid, groups[0])


def _peer_pid(sock: socket.socket) -> int:
    if sys.platform != "darwin":
        return -1
    try:
        pid: int = struct.unpack("i", sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, 4))[0]
    except OSError:
        return -1
    return pid


def _unavailable() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "socket.peercred_unavailable",
            platform=sys.platform,
            gate="the socket's mode 0660 and group decide who may connect",
            action="allowed_users/allowed_groups are not enforced on this platform",
        )
