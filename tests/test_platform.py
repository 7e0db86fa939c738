"""macOS safety: peer credentials on Darwin, and the daemon with Linux-only APIs taken away.

macOS cannot run here, so it is covered twice: by typing (`mypy --strict --platform darwin`,
tests/test_static.py) and by running the real daemon, hook and CLI with the Linux-only APIs
removed before hookd is imported (a sitecustomize on PYTHONPATH), as a macOS Python lacks them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hookd import peercred
from hookd.peercred import XUCRED, PeerCredentials, parse_xucred, peer_credentials
from tests.conftest import (
    HOOKD,
    HookdProcess,
    needs_nix,
    nix_build,
    nix_env,
    nonce,
    requisites,
)

# What a macOS Python does not have, removed before anything imports hookd.
SITECUSTOMIZE = """
import fcntl, os, socket
for mod, names in (
    (socket, ["SO_PEERCRED", "SO_PASSCRED", "SO_PEERSEC"]),
    (os, ["sched_setaffinity", "sched_getaffinity", "sched_setscheduler", "sched_getscheduler",
          "sched_param", "pidfd_open", "memfd_create", "eventfd"]),
    (fcntl, ["F_SETPIPE_SZ", "F_GETPIPE_SZ"]),
):
    for name in names:
        if hasattr(mod, name):
            delattr(mod, name)
# As on macOS, where os.process_cpu_count (3.13) is os.cpu_count: no sched_getaffinity.
if hasattr(os, "process_cpu_count"):
    os.process_cpu_count = os.cpu_count
os.environ["HOOKD_SIMULATED_PLATFORM"] = "no-linux-apis"
"""


def test_peer_credentials_on_linux_are_our_own() -> None:
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("not Linux")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


def test_xucred_as_macos_returns_it() -> None:
    # struct xucred: version 0, uid 501, 3 groups (20 = staff first: the effective gid)
    data = XUCRED.pack(0, 501, 3, 20, 12, 61, *([0] * 13))
    assert len(data) == 76  # sizeof(struct xucred) on macOS
    assert parse_xucred(data, pid=4242) == PeerCredentials(4242, 501, 20)
    assert parse_xucred(data) == PeerCredentials(-1, 501, 20)
    with pytest.raises(OSError, match="76"):
        parse_xucred(data[:40])
    with pytest.raises(OSError, match="version"):
        parse_xucred(XUCRED.pack(1, 501, 1, 20, *([0] * 15)))


def test_no_peer_credentials_is_none_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(socket, "SO_PEERCRED", raising=False)
    monkeypatch.setattr(peercred.sys, "platform", "sunos5")
    monkeypatch.setattr(peercred, "_warned", False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) is None
        assert peer_credentials(a) is None
    out = capsys.readouterr()
    assert (out.out + out.err).count("peercred_unavailable") == 1


@needs_nix
@pytest.mark.nix
def test_daemon_without_linux_apis_acknowledges_hooks_and_serves_status_and_wait(
    tmp_path: Path,
) -> None:
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = nix_env(PYTHONPATH=str(sim))
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket; print(hasattr(socket, 'SO_PEERCRED'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"  # the simulation is in effect

    hookd = HookdProcess(tmp_path)
    hookd.start(env=env)
    # real builds through the real hook, run by nix-build with the same environment
    proc = nix_build(["a", "multi"], nonce_value=nonce(), hook=hookd.hook_script, env=env)
    assert "spooled" not in proc.stderr  # acknowledged over the socket, not spooled
    assert not list(hookd.spool.glob("*.json"))
    cli_env = {**env, "HOOKD_CONFIG": str(hookd.config_path)}
    wait = subprocess.run(
        [HOOKD, "wait", "--timeout", "120"],
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wait.returncode == 0, wait.stdout + wait.stderr
    status = subprocess.run(
        [HOOKD, "status", "--json"], env=cli_env, capture_output=True, text=True, check=False
    )
    assert status.returncode == 0, status.stdout + status.stderr
    outs = [line for line in proc.stdout.split() if line.startswith("/nix/store/")]
    closure = sorted(requisites(outs))
    assert hookd.cached(closure) == set(closure)
    events = [e.get("event") for e in hookd.log_events()]
    assert events.count("socket.peercred_unavailable") == 1  # logged once, not per connection
    assert "socket.refused" not in events and "socket.error" not in events
    hookd.stop()
