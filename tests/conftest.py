"""Shared fixtures: real Nix builds, a real hookd daemon process, a private nix-daemon."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookd.nix import path_info_entries

ROOT = Path(__file__).resolve().parent.parent
GRAPH = ROOT / "tests" / "data" / "graph.nix"
BIN = Path(sys.executable).parent
HOOKD = str(BIN / "hookd")
HOOKD_HOOK = str(BIN / "hookd-hook")

HAVE_NIX = shutil.which("nix-build") is not None
needs_nix = pytest.mark.skipif(
    not HAVE_NIX, reason="needs real Nix: run scripts/setup.sh (installs Debian's nix-bin)"
)


def nonce() -> str:
    return f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def nix_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKD_", "NIX_CONFIG"))}
    env.update(extra)
    return env


def nix_build(
    attrs: list[str],
    *,
    nonce_value: str,
    hook: Path | None = None,
    env: dict[str, str] | None = None,
    args: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    argv = ["nix-build", str(GRAPH), "--no-out-link", "--argstr", "nonce", nonce_value]
    for k, v in (args or {}).items():
        argv += ["--arg", k, v]
    for attr in attrs:
        argv += ["-A", attr]
    if hook is not None:
        argv += ["--option", "post-build-hook", str(hook)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env or nix_env(), check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"nix-build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def instantiate(attr: str, nonce_value: str, args: dict[str, str] | None = None) -> str:
    argv = ["nix-instantiate", str(GRAPH), "--argstr", "nonce", nonce_value, "-A", attr]
    for k, v in (args or {}).items():
        argv += ["--arg", k, v]
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()[0]


def outputs_of(drv: str) -> list[str]:
    out = subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def requisites(paths: list[str]) -> set[str]:
    out = subprocess.run(["nix-store", "-qR", *paths], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def path_info(paths: list[str], store: str | None = None) -> dict[str, dict[str, Any]]:
    argv = ["nix", "path-info", "--json"] + (["--store", store] if store else []) + paths
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    # hookd's own reader: every Nix version's shape (list, object, versioned), by full path
    return {p: d for p, d in path_info_entries(out.stdout).items() if d is not None}


def substitute(
    paths: list[str], *, store_dir: Path, substituter: str, public_key: str
) -> subprocess.CompletedProcess[str]:
    """Realise ``paths`` into a clean chroot store from ``substituter``, signatures checked."""
    argv = [
        "nix-store",
        "--store",
        str(store_dir),
        "-r",
        *paths,
        "--option",
        "substituters",
        substituter,
        "--option",
        "trusted-public-keys",
        public_key,
        "--option",
        "require-sigs",
        "true",
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        "--option",
        "narinfo-cache-positive-ttl",
        "0",
        "--option",
        "download-attempts",
        "1",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def write_hook_script(directory: Path, socket_path: Path, spool: Path) -> Path:
    script = directory / "post-build-hook.sh"
    script.write_text(f"#!/bin/sh\nexec {HOOKD_HOOK} --socket {socket_path} --spool {spool}\n")
    script.chmod(0o755)
    return script


class Client:
    def __init__(self, path: Path) -> None:
        self.path = path

    def raw(self, payload: bytes, timeout: float = 10) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.path))
            s.sendall(payload)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        return json.loads(buf) if buf else {}

    def call(self, message: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return self.raw((json.dumps({"v": 1, **message}) + "\n").encode(), timeout=timeout)

    def wait(self, timeout: float = 120, paths: list[str] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"op": "wait", "timeout": timeout}
        if paths is not None:
            message["paths"] = paths
        return self.call(message, timeout=timeout + 30)


_RUNNING: list[HookdProcess] = []
STARTED: list[HookdProcess] = []  # every daemon a test started, in order (for peak RSS)


def proc_status_kib(pid: int, field: str) -> int | None:
    """A ``/proc/PID/status`` memory field (VmRSS, VmHWM) in KiB; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


@pytest.fixture(autouse=True)
def _reap_daemons() -> Iterator[None]:
    """A test that fails half-way must not leave its daemon running (it would load the machine)."""
    yield
    while _RUNNING:
        _RUNNING.pop().stop(signal.SIGKILL)


class HookdProcess:
    """A real `hookd daemon` subprocess with its own state directory and config."""

    def __init__(self, workdir: Path, settings: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.socket = workdir / "hookd.sock"
        self.spool = self.state / "spool"
        self.log_path = workdir / "daemon.log"
        config: dict[str, Any] = {
            "state_dir": str(self.state),
            "socket": str(self.socket),
            "attic_config": False,
            "upload": {"min_backoff": 0.2, "max_backoff": 2, "stop_timeout": 5},
        }
        for key, value in (settings or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0  # VmHWM: the highest of every process this object started
        self.client = Client(self.socket)
        self.hook_script = write_hook_script(workdir, self.socket, self.spool)

    # A poll with a generous deadline: on a loaded 2-core machine an interpreter importing
    # hookd's dependencies waits seconds for a CPU; start() returns as soon as it answers.
    def start(self, timeout: float = 120, env: dict[str, str] | None = None) -> HookdProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [HOOKD, "daemon", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env or nix_env(),
            start_new_session=True,
        )
        _RUNNING.append(self)
        if self not in STARTED:
            STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hookd daemon exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.client.call({"op": "ping"}, timeout=2).get("ok"):
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)  # polling for readiness with a deadline, not a fixed wait
        raise AssertionError(f"hookd daemon did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        self.peak_rss()  # noted while the process still exists
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        if self in _RUNNING:
            _RUNNING.remove(self)
        return rc

    def rss_kib(self) -> int | None:
        """The running daemon's resident set now (VmRSS), in KiB."""
        return proc_status_kib(self.proc.pid, "VmRSS") if self.proc is not None else None

    def peak_rss(self) -> int:
        """Peak resident set (VmHWM, KiB) over every daemon process this object started."""
        if self.proc is not None:
            self.peak_rss_kib = max(self.peak_rss_kib, proc_status_kib(self.proc.pid, "VmHWM") or 0)
        return self.peak_rss_kib

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def status(self) -> dict[str, Any]:
        return self.client.call({"op": "status"})

    def public_key(self) -> str:
        return (self.state / "cache-key.pub").read_text().strip()

    @property
    def cache_url(self) -> str:
        return f"file://{self.state / 'cache'}"

    def cached(self, paths: list[str]) -> set[str]:
        cache = self.state / "cache"
        return {p for p in paths if (cache / (Path(p).name.split("-", 1)[0] + ".narinfo")).exists()}


@pytest.fixture
def hookd(tmp_path: Path) -> Iterator[HookdProcess]:
    proc = HookdProcess(tmp_path)
    yield proc
    proc.stop(signal.SIGKILL)


def write_token(path: Path, token: str, mode: int = 0o600) -> Path:
    """Write a token file the way sops-nix/agenix/k8s do: its mode, then an atomic rename-over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(token + "\n")
    tmp.chmod(mode)
    tmp.replace(path)
    return path


def until(predicate: Callable[[], Any], hookd: HookdProcess, timeout: float = 60) -> Any:
    """Poll a condition, waking on the daemon's progress notifications; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met in {timeout} s; daemon log:\n{hookd.log()[-4000:]}"
            )
        hookd.client.wait(timeout=0.5)


class NixDaemon:
    """A private nix-daemon with its own nix.conf (post-build-hook set) and socket."""

    def __init__(self, workdir: Path, hook: Path) -> None:
        self.conf_dir = workdir / "nixconf"
        self.conf_dir.mkdir()
        base = Path("/etc/nix/nix.conf").read_text() if Path("/etc/nix/nix.conf").exists() else ""
        lines = [line for line in base.splitlines() if not line.startswith("post-build-hook")]
        (self.conf_dir / "nix.conf").write_text(
            "\n".join([*lines, f"post-build-hook = {hook}", ""])
        )
        self.socket = workdir / "nix-daemon.sock"
        self.log = workdir / "nix-daemon.log"
        env = nix_env(NIX_CONF_DIR=str(self.conf_dir), NIX_DAEMON_SOCKET_PATH=str(self.socket))
        self.proc = subprocess.Popen(
            ["nix-daemon"],
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120  # a poll: returns as soon as the socket exists
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"nix-daemon did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def client_env(self) -> dict[str, str]:
        return nix_env(NIX_REMOTE=f"unix://{self.socket}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- a small file system to fill (disk-full scenarios) ----------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a 2 MiB tmpfs (run the suite as root)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the file system is full; deleting it frees the space again."""
    filler = fs / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    return filler
