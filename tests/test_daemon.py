"""The daemon's robustness (issue 9): what it does with a garbage-collected .drv, a hostile or
broken spool, greedy socket clients, file modes, supervision and systemd's watchdog.

Real daemon processes, real Nix, real sockets; in-process tests use the real queue and asyncio.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from hookd.backoff import Backoff
from hookd.daemon.spool import STALE_TMP_SECONDS
from hookd.daemon.supervisor import Liveness, Supervisor
from hookd.queue import Queue
from tests.conftest import (
    HOOKD,
    HOOKD_HOOK,
    HookdProcess,
    needs_nix,
    nix_build,
    nix_env,
    nonce,
    until,
)

ZEROS = "0" * 32


def built(attr: str) -> str:
    proc = nix_build([attr], nonce_value=nonce())
    return next(line for line in proc.stdout.split() if line.startswith("/nix/store/"))


def enqueue_line(**fields: object) -> bytes:
    return json.dumps({"v": 1, "op": "enqueue", **fields}).encode() + b"\n"


def spool_file(spool: Path, name: str, data: bytes) -> Path:
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f".{name}.tmp"
    tmp.write_bytes(data)
    path = spool / name
    tmp.rename(path)
    return path


# -- bug 3: a garbage-collected .drv with valid outputs ----------------------------------------


@needs_nix
@pytest.mark.nix
def test_request_whose_drv_is_gone_pushes_its_valid_outputs(hookd: HookdProcess) -> None:
    hookd.start()
    out = built("a")
    gone_drv = (
        f"/nix/store/{ZEROS}-hookd-collected.drv"  # as after a GC with keep-derivations = false
    )
    gone_out = f"/nix/store/{'1' * 32}-hookd-collected-out"
    reply = hookd.client.call({"op": "enqueue", "drv_path": gone_drv, "out_paths": [out, gone_out]})
    assert reply["ok"]
    assert hookd.client.wait(timeout=60)["drained"]
    assert hookd.cached([out]) == {out}
    dropped = [e for e in hookd.log_events() if e.get("event") == "resolve.dropped"]
    assert [e.get("path") for e in dropped] == [gone_out], dropped
    hookd.stop()


# -- bug 5 and the spool's reads ----------------------------------------------------------------


@needs_nix
@pytest.mark.nix
def test_file_named_like_the_quarantine_stops_neither_start_nor_imports(
    hookd: HookdProcess,
) -> None:
    hookd.spool.mkdir(parents=True)
    (hookd.spool / "corrupt").write_text("an operator's file, not a directory\n")
    spool_file(hookd.spool, "1-1.json", b"{broken")
    first = built("a")
    spool_file(hookd.spool, "1-2.json", enqueue_line(out_paths=[first]))
    hookd.start()
    until(lambda: hookd.cached([first]), hookd)
    assert (hookd.spool / "1-1.json.corrupt").exists()
    assert (hookd.spool / "corrupt").read_text().startswith("an operator's file")
    # while running: a broken file next to a good one never holds the good one up
    spool_file(hookd.spool, "2-1.json", b"[]")
    second = built("b")
    spool_file(hookd.spool, "2-2.json", enqueue_line(out_paths=[second]))
    until(lambda: hookd.cached([second]), hookd)
    assert not (hookd.spool / "2-1.json").exists()
    hookd.stop()


@needs_nix
@pytest.mark.nix
def test_symlinks_fifos_and_oversized_spool_files_are_quarantined_unread(
    tmp_path: Path, hookd: HookdProcess
) -> None:
    hookd.spool.mkdir(parents=True)
    elsewhere = built("a")
    outside = tmp_path / "outside.json"
    outside.write_bytes(enqueue_line(out_paths=[elsewhere]))
    (hookd.spool / "1-1.json").symlink_to(outside)
    os.mkfifo(hookd.spool / "1-2.json")  # a plain open() would block the daemon for good
    padded = enqueue_line(out_paths=[elsewhere]).rstrip(b"\n") + b" " * (2 << 20) + b"\n"
    spool_file(hookd.spool, "1-3.json", padded)
    good = built("b")
    spool_file(hookd.spool, "1-4.json", enqueue_line(out_paths=[good]))
    hookd.start()
    until(lambda: hookd.cached([good]), hookd)
    quarantined = {p.name for p in (hookd.spool / "corrupt").iterdir()}
    assert quarantined == {"1-1.json", "1-2.json", "1-3.json"}
    assert outside.exists()  # the link was moved, not what it points to
    assert hookd.cached([elsewhere]) == set()  # nothing was read through the link
    reasons = [e["reason"] for e in hookd.log_events() if e.get("event") == "spool.corrupt"]
    assert any("symbolic link" in r for r in reasons), reasons
    assert any("not a regular file" in r for r in reasons), reasons
    assert any("more than" in r for r in reasons), reasons
    hookd.stop()


@needs_nix
@pytest.mark.nix
def test_wait_counts_spooled_requests_as_handed_over(hookd: HookdProcess) -> None:
    hookd.start()
    out = built("c")
    # Spooled while the daemon runs (as by a hook that timed out); `wait` right away must not
    # call the queue drained before the spooled request is imported and pushed.
    spool_file(hookd.spool, "1-1.json", enqueue_line(out_paths=[out]))
    assert hookd.client.wait(timeout=60)["drained"]
    assert hookd.cached([out]) == {out}
    assert not (hookd.spool / "1-1.json").exists()
    hookd.stop()


def test_stale_hidden_tmp_files_are_cleaned_fresh_ones_kept(hookd: HookdProcess) -> None:
    hookd.spool.mkdir(parents=True)
    stale = hookd.spool / ".1-1.json.tmp"
    stale.write_bytes(b'{"v":1,"op":"enq')
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    fresh = hookd.spool / ".1-2.json.tmp"  # a hook may be writing it right now
    fresh.write_bytes(b"")
    hookd.start()
    assert not stale.exists()
    assert fresh.exists()
    hookd.stop()


def test_hook_leaves_no_partial_spool_file_when_the_disk_fills(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    drv = f"/nix/store/{ZEROS}-x.drv"
    outs = " ".join(f"/nix/store/{ZEROS}-out-{i}" for i in range(200))  # a ~10 KB request

    def small_disk() -> None:
        # RLIMIT_FSIZE stands in for a full disk: writes past it fail (EFBIG, like ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    proc = subprocess.run(
        [HOOKD_HOOK, "--socket", str(tmp_path / "absent.sock"), "--spool", str(spool)],
        env=nix_env(DRV_PATH=drv, OUT_PATHS=outs),
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=small_disk,
        check=False,
    )
    assert proc.returncode == 0
    assert "spool failed" in proc.stderr
    assert list(spool.iterdir()) == []  # neither a hidden .tmp nor a truncated .json


# -- the socket: bounded memory, polite refusals -------------------------------------------------


def _recv_line(s: socket.socket) -> dict[str, object]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf) if buf else {}


def test_clients_holding_buffers_are_refused_and_the_daemon_keeps_serving(
    hookd: HookdProcess,
) -> None:
    hookd.start()
    greedy: list[socket.socket] = []
    refusals = []
    try:
        for _ in range(40):  # 40 x 1,000,000 bytes without a newline
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(str(hookd.socket))
            greedy.append(s)
            try:
                s.sendall(b"x" * 1_000_000)
            except OSError:  # the daemon refused and closed before we finished sending
                pass
        # The ping is answered while they hold their connections open.
        assert hookd.client.call({"op": "ping"}, timeout=10)["ok"]
        for s in greedy:
            s.setblocking(True)
            s.settimeout(0.2)
            try:
                reply = _recv_line(s)
            except (TimeoutError, OSError):
                continue
            if reply:
                refusals.append(reply)
    finally:
        for s in greedy:
            s.close()
    assert refusals, "no client was refused"
    assert {r.get("error") for r in refusals} == {"busy"}
    assert hookd.status()["ok"]
    hookd.stop()


def test_connections_past_the_cap_get_a_busy_reply(hookd: HookdProcess) -> None:
    hookd.start()
    held = []
    try:
        for _ in range(300):  # more than the daemon's connection cap, all silent
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(hookd.socket))
            held.append(s)
        s = held[-1]
        assert _recv_line(s).get("error") == "busy"
    finally:
        for s in held:
            s.close()
    assert hookd.client.call({"op": "ping"})["ok"]  # the slots are free again
    hookd.stop()


def test_daemon_files_are_private_and_the_socket_group_writable(tmp_path: Path) -> None:
    hookd = HookdProcess(tmp_path, {"socket": str(tmp_path / "run" / "hookd.sock")})
    hookd.socket = tmp_path / "run" / "hookd.sock"
    hookd.client.path = hookd.socket
    old = os.umask(0o022)  # what a shell or a non-NixOS service manager typically leaves
    try:
        hookd.start()
    finally:
        os.umask(old)
    db = hookd.state / "queue.sqlite"
    assert stat.S_IMODE(db.stat().st_mode) & 0o077 == 0, oct(db.stat().st_mode)
    assert stat.S_IMODE(hookd.socket.stat().st_mode) == 0o660
    # the socket's directory, created by the daemon, stays reachable for the hook and the CLI
    assert stat.S_IMODE(hookd.socket.parent.stat().st_mode) == 0o755
    hookd.stop()


# -- systemd: READY=1, WATCHDOG=1, liveness in status -----------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    yield sock
    sock.close()


def test_sd_notify_ready_and_watchdog_under_systemd(
    notify_socket: socket.socket, hookd: HookdProcess
) -> None:
    hookd.start()
    messages = set()
    while not {"READY=1", "WATCHDOG=1"} <= messages:
        messages.add(notify_socket.recv(4096).decode())  # times out (30 s) if never sent
    liveness = hookd.status()["liveness"]
    assert liveness["alive"] is True and liveness["queue_writer"] is True
    assert liveness["components"]["resolver"] == "running"
    assert liveness["components"]["spool"] == "running"
    shown = subprocess.run(
        [HOOKD, "status", "--config", str(hookd.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "liveness: alive" in shown and "queue writer running" in shown, shown
    hookd.stop()
    assert "STOPPING=1" in notify_socket.recv(4096).decode()


def test_liveness_fails_and_watchdog_stops_when_the_queue_writer_is_gone(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    async def go() -> tuple[bool, bool, bool]:
        stopping = asyncio.Event()
        queue = Queue(tmp_path / "queue.sqlite").open()
        liveness = Liveness(queue, Supervisor(stopping, Backoff(0.01, 0.02)), stopping)
        before = await liveness.beat()
        queue.close()  # the writer thread ends: nothing would answer a query any more
        after = await liveness.beat()
        return before, after, liveness.report()["alive"]

    before, after, reported = asyncio.run(go())
    assert before and not after and not reported
    notify_socket.settimeout(0.5)
    got = []
    while True:
        try:
            got.append(notify_socket.recv(4096).decode())
        except TimeoutError:
            break
    assert got == ["WATCHDOG=1"]  # only the healthy beat fed the watchdog


# -- supervision -----------------------------------------------------------------------------------


def test_supervisor_logs_a_crash_with_traceback_and_restarts_with_backoff() -> None:
    runs = []

    async def go() -> dict[str, str]:
        stopping = asyncio.Event()
        supervisor = Supervisor(stopping, Backoff(0.01, 0.05))

        async def flaky() -> None:
            runs.append(time.monotonic())
            if len(runs) < 3:
                raise RuntimeError(f"crash {len(runs)}")
            await stopping.wait()

        supervisor.spawn("flaky", flaky)
        while len(runs) < 3 or supervisor.states.get("flaky") != "running":
            await asyncio.sleep(0.01)  # yielding to the loop while polling the condition
        states = dict(supervisor.states)
        stopping.set()
        await asyncio.gather(*supervisor.tasks)
        return states

    with structlog.testing.capture_logs() as logs:
        states = asyncio.run(asyncio.wait_for(go(), 20))
    assert states == {"flaky": "running"}
    crashes = [e for e in logs if e["event"] == "task.crashed"]
    assert len(crashes) == 2 and all(e["log_level"] == "error" for e in crashes)
    assert all(e.get("exc_info") for e in crashes)  # the traceback goes with the event
    assert len(runs) == 3
