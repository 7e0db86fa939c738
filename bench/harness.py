"""Shared pieces of the benchmark: timed process runs, statistics, Nix builds, a hookd daemon
subprocess with its socket client, and an in-process Attic-compatible server.

Everything here waits on conditions with deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hookd.cli import Client as DaemonClient
from hookd.errors import HookdError

ROOT = Path(__file__).resolve().parent.parent
GRAPH = ROOT / "bench" / "graph.nix"
HOOK_PY = ROOT / "hookd" / "hook.py"
HOOK_RUN = ROOT / "hookd" / "hookrun.py"  # the shipped launcher: hook.py from its bytecode
VENV_BIN = Path(sys.executable).parent
HOOKD = VENV_BIN / "hookd"
HOOKD_HOOK = VENV_BIN / "hookd-hook"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A figure could not be measured (the message says why)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def hook_python() -> str:
    """The plain interpreter the production hook runs under (``python3 -I -S hook.py``)."""
    for cand in ("/usr/bin/python3", shutil.which("python3") or ""):
        if cand and os.access(cand, os.X_OK) and "shims" not in cand:
            return os.path.realpath(cand)
    return os.path.realpath(sys.executable)


def clean_env(**extra: str) -> dict[str, str]:
    """The bench's own environment without anything that would steer hookd or nix."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HOOKD_", "NIX_CONFIG", "DRV_PATH", "OUT_PATHS"))
    }
    env.update(extra)
    return env


# -- timed runs ---------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user+sys seconds of the process and the children it waited for
    rc: int


def timed(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    stdout: str = os.devnull,
    stderr: str = os.devnull,
    timeout: float = 600,
) -> Run:
    """Spawn ``argv``, wait for it, return wall time (perf_counter) and CPU (wait4 rusage).

    posix_spawn + wait4 keeps the bench's own overhead tiny and identical for every variant."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout, flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, stderr, flags, 0o644),
    ]
    exe = argv[0] if "/" in argv[0] else (shutil.which(argv[0], path=env.get("PATH")) or argv[0])
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, list(argv), env, file_actions=actions)
    killed: list[bool] = []

    def kill() -> None:
        killed.append(True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        _, status, ru = os.wait4(pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - t0
    if killed:
        raise BenchError(f"timed out after {timeout}s: {shlex.join(argv)}")
    rc = os.waitstatus_to_exitcode(status)
    return Run(wall, ru.ru_utime + ru.ru_stime, rc)


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(1, min(len(s), int(-(-q * len(s) // 100))))
    return s[k - 1]


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    v = [x * scale for x in values]
    return {
        "n": len(v),
        "median": median(v),
        "p99": percentile(v, 99),
        "min": min(v) if v else None,
        "max": max(v) if v else None,
        "mean": sum(v) / len(v) if v else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def rotated(items: Sequence[Any], i: int) -> list[Any]:
    """Round ``i``'s order: A B C, B C A, C A B, … so no variant always runs first."""
    k = i % len(items)
    return list(items[k:]) + list(items[:k])


# -- Nix ----------------------------------------------------------------------------------------


def nix_graph_args(nonce: str, **args: Any) -> list[str]:
    argv = [str(GRAPH), "--argstr", "nonce", nonce]
    for k, v in args.items():
        if isinstance(v, list):
            argv += ["--arg", k, "[ " + " ".join(str(int(x)) for x in v) + " ]"]
        else:
            argv += ["--arg", k, str(v)]
    return argv


# Everything the bench builds is GC-rooted (indirect roots in here) until the run ends: the
# store is shared with other users' test runs, which may collect garbage at any time.
GC_ROOTS: Path | None = None
_root_seq = itertools.count()


def root_link(name: str) -> list[str]:
    if GC_ROOTS is None:
        return []
    GC_ROOTS.mkdir(parents=True, exist_ok=True)
    return [str(GC_ROOTS / f"{name}-{next(_root_seq)}")]


def add_root(path: str, name: str) -> None:
    """Root one existing store path (and so its closure) for the rest of the run."""
    link = root_link(name)
    if link:
        subprocess.run(
            ["nix-store", "--add-root", link[0], "--indirect", "--realise", path],
            capture_output=True,
            check=True,
            timeout=120,
        )


def release_roots() -> None:
    if GC_ROOTS is not None:
        shutil.rmtree(GC_ROOTS, ignore_errors=True)


def instantiate(nonce: str, attr: str, **args: Any) -> list[str]:
    link = root_link(f"{attr}-drv")
    argv = ["nix-instantiate", *nix_graph_args(nonce, **args), "-A", attr]
    if link:
        argv += ["--add-root", link[0], "--indirect"]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, check=False, env=clean_env()
    )
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed: {out.stderr[-2000:]}")
    # with --add-root, nix-instantiate prints the roots: resolve them to the .drv paths
    return [os.readlink(p) if not p.startswith("/nix/store/") else p for p in out.stdout.split()]


def build(nonce: str, attr: str, *, max_jobs: int = 1, **args: Any) -> list[str]:
    argv = [
        "nix-build",
        *nix_graph_args(nonce, **args),
        "-A",
        attr,
        *(["--out-link", *root_link(attr)] if GC_ROOTS is not None else ["--no-out-link"]),
        "--option",
        "post-build-hook",
        "",
        "--max-jobs",
        str(max_jobs),
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=1800, check=False, env=clean_env()
    )
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed: {out.stderr[-2000:]}")
    return out.stdout.split()


def outputs_of(drvs: Sequence[str]) -> list[str]:
    out = subprocess.run(
        ["nix-store", "-q", "--outputs", *drvs],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.split()


def requisites(paths: Sequence[str]) -> list[str]:
    out = subprocess.run(
        ["nix-store", "-qR", *paths], capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.split()


def nar_sizes(paths: Sequence[str]) -> dict[str, int]:
    out = subprocess.run(
        ["nix", "path-info", "--json", *paths],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return {d["path"]: int(d["narSize"]) for d in json.loads(out.stdout) if "narSize" in d}


def dump_sha256(paths: Sequence[str], chunk: int = 1 << 20) -> int:
    """The bound for push throughput: `nix-store --dump` of each path into sha256 in Python."""
    total = 0
    for p in paths:
        proc = subprocess.Popen(
            ["nix-store", "--dump", p], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        h = hashlib.sha256()
        while block := proc.stdout.read(chunk):
            h.update(block)
            total += len(block)
        if proc.wait() != 0:
            raise BenchError(f"nix-store --dump {p} failed")
    return total


def daemon_setting(name: str, default: Any = 0) -> Any:
    """A setting's effective value in the bench's daemon config (hookd's default): e.g. `nice`
    (the CPU priority of the nix processes the daemon runs) or `upload.batch_window`."""
    from hookd.config import parse_config

    try:
        value: Any = parse_config({"attic_config": False})
        for part in name.split("."):
            value = getattr(value, part)
        return value
    except Exception:
        return default


def daemon_nice(settings: dict[str, Any] | None = None) -> int:
    return int(daemon_setting("nice", 0))


DUMP_CODE = """
import hashlib, subprocess, sys
total = 0
for p in sys.argv[1:]:
    proc = subprocess.Popen(["nix-store", "--dump", p], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    h = hashlib.sha256()
    while block := proc.stdout.read(1 << 20):
        h.update(block)
        total += len(block)
    if proc.wait() != 0:
        sys.exit("nix-store --dump failed: " + p)
print(total)
"""


def niced(argv: Sequence[str], nice: int) -> list[str]:
    return ["nice", "-n", str(nice), *argv] if nice else list(argv)


def dump_bound_argv(paths: Sequence[str], nice: int) -> list[str]:
    """The bound as a process of its own (so it runs at the daemon's priority)."""
    return niced([hook_python(), "-I", "-S", "-c", DUMP_CODE, *paths], nice)


def proc_nice(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])
    except (OSError, ValueError, IndexError):
        return None


def _chunks(items: Sequence[str], n: int = 1000) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def delete_paths(paths: Iterable[str]) -> str:
    """Delete what the bench built, with whatever refers to it (its own .drv files and roots,
    all nonce-unique), referrers first, in argv-sized chunks; never a global garbage collection."""
    todo = {p for p in paths if os.path.lexists(p)}
    if not todo:
        return "nothing to delete"
    for chunk in _chunks(sorted(todo)):
        refs = subprocess.run(
            ["nix-store", "-q", "--referrers-closure", *chunk],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        todo |= set(refs.stdout.split())
    total = len(todo)

    def rank(p: str) -> int:
        """Referrers before what they refer to: roots' outputs, roots' .drv files, other outputs,
        other .drv files, then evaluation-time sources (builtins.toFile)."""
        name = p.split("-", 1)[1] if "-" in p else p
        drv = name.endswith(".drv")
        root = any(k in name for k in ("closure", "files-root", "burst-list"))
        source = name.startswith(("bench-file-", "bench-burst-")) and not root
        return 4 if source else (1 if root else 3) if drv else (0 if root else 2)

    errors: list[str] = []

    def delete(chunk: Sequence[str]) -> None:
        out = subprocess.run(
            ["nix-store", "--delete", *chunk],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if out.returncode == 0:
            return
        if len(chunk) == 1:  # alive after all: leave it to a normal garbage collection
            errors.append((out.stderr.strip().splitlines() or [""])[-1][:300])
            return
        rest = [p for p in chunk if os.path.lexists(p)]
        half = len(rest) // 2
        if rest:
            delete(rest[:half] or rest)
            if half:
                delete(rest[half:])

    remaining = sorted(todo, key=lambda p: (rank(p), p))
    for chunk in _chunks(remaining):
        delete([p for p in chunk if os.path.lexists(p)])
    left = sum(1 for p in todo if os.path.lexists(p))
    return f"deleted {total - left} of {total} store paths" + (
        f"; {left} still alive (e.g. {errors[0]})" if left and errors else ""
    )


# -- /proc --------------------------------------------------------------------------------------


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own user+sys, waited-for children's user+sys) seconds from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ut, st, cut, cst = (int(x) for x in fields[11:15])
    return (ut + st) / CLK_TCK, (cut + cst) / CLK_TCK


# -- the hookd daemon ---------------------------------------------------------------------------


class Client:
    """The daemon's socket protocol: one NDJSON request, one reply line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, message: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return DaemonClient(self.path, timeout).call(message)

    def enqueue(self, out_paths: Sequence[str], drv_path: str | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"op": "enqueue", "out_paths": list(out_paths), "source": "bench"}
        if drv_path:
            msg["drv_path"] = drv_path
        return self.call(msg)

    def wait(self, timeout: float = 600) -> dict[str, Any]:
        return self.call({"op": "wait", "timeout": timeout}, timeout=timeout + 30)


@dataclass
class Daemon:
    """A real `hookd daemon` subprocess with its own state directory, socket and config."""

    workdir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "state"
        self.socket = self.workdir / "hookd.sock"
        self.spool = self.state / "spool"
        self.log_path = self.workdir / "daemon.log"
        self.config = {
            "state_dir": str(self.state),
            "socket": str(self.socket),
            "attic_config": False,
            "log": {"format": "json", "level": "info"},
            **self.settings,
        }
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.client = Client(self.socket)
        self.command = [str(HOOKD), "daemon", "--config", str(self.config_path)]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> Daemon:
        logf = open(self.log_path, "ab")  # the child owns it
        self.proc = subprocess.Popen(
            self.command,
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"hookd daemon exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
                )
            try:
                if self.client.call({"op": "ping"}, timeout=2).get("ok"):
                    return self
            except (OSError, ValueError, HookdError):
                pass
            time.sleep(0.02)  # readiness poll with a deadline
        raise BenchError(f"hookd daemon not ready after {timeout}s:\n{self.log()[-3000:]}")

    def vm_hwm_kib(self) -> int | None:
        return proc_status_kib(self.pid, "VmHWM")

    def vm_rss_kib(self) -> int | None:
        return proc_status_kib(self.pid, "VmRSS")

    def cpu(self) -> tuple[float, float]:
        return proc_cpu(self.pid)

    def wait_drained(self, timeout: float = 900) -> dict[str, Any]:
        reply = self.client.wait(timeout)
        if not reply.get("ok") or not reply.get("drained"):
            raise BenchError(f"daemon did not drain in {timeout}s: {reply}\n{self.log()[-2000:]}")
        return reply

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        self.release_gc_roots()
        return rc

    def release_gc_roots(self) -> None:
        """Remove the daemon's GC-root directory (named after the state dir, see hookd.config)."""
        name = "hookd-" + hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
        d = Path(os.environ.get("NIX_STATE_DIR", "/nix/var/nix")) / "gcroots" / name
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if event is None or e.get("event") == event:
                out.append(e)
        return out


# -- the Attic-compatible server ----------------------------------------------------------------


class Attic:
    """`tests.attic_server.AtticTestServer` in this process, one cache, a push+pull token file."""

    def __init__(self, workdir: Path, cache: str = "bench", **server_args: Any) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.attic_server import AtticTestServer

        self.srv = AtticTestServer(**server_args)
        self.srv.start()
        self.cache = cache
        self.srv.create_cache(cache, upstream=[])
        workdir.mkdir(parents=True, exist_ok=True)
        self.token_file = workdir / f"attic-token-{self.srv.port}"
        token = self.srv.make_token({cache: {"r": 1, "w": 1}}, sub="hookd-bench", validity=86400)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")

    @property
    def url(self) -> str:
        return str(self.srv.url)

    def daemon_settings(self) -> dict[str, Any]:
        return {
            "servers": {"bench": {"endpoint": self.url, "token_file": str(self.token_file)}},
            "targets": [{"server": "bench", "cache": self.cache}],
        }

    def objects(self) -> int:
        return len(self.srv.objects(self.cache))

    def requests(self) -> list[Any]:
        return list(self.srv.requests)

    def clear(self) -> None:
        self.srv.clear_records()

    def close(self) -> None:
        self.srv.stop()


def request_breakdown(records: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        path = r.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        route = "/".join(parts[:3]) if parts[:2] == ["_api", "v1"] else "/".join(parts[:1])
        key = f"{r.method} /{route}"
        out[key] = out.get(key, 0) + 1
    return out
