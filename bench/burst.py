"""Figure 5 — burst: N paths announced by 50 concurrent hook processes.

Two rows, each against a fresh daemon whose target is the Attic-compatible server:
- ``hooks``: 50 lanes, each running the real hook (production form) one path at a time until N
  invocations are done: what 50 parallel builds finishing at once look like;
- ``socket``: 50 threads speaking the hook's exact wire format (one connection per request) to
  find the daemon's own acceptance capacity, without 10,000 interpreter start-ups.
The announced paths are real store paths (text files made by evaluation); the daemon starts
pushing them while the burst goes on, as it would in production. Once every request is resolved
(spool imported, items created) the daemon is stopped and its queue database is read:
lost = announced paths found neither as items nor as requests; it must be 0.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from bench import harness as h

LANES = 50


def make_paths(ctx: Any, n: int, tag: str) -> list[str]:
    """``n`` real, distinct store paths (builtins.toFile: created at evaluation, no build)."""
    nonce = f"{ctx.nonce}-burst-{tag}"
    expr = (
        f'let files = builtins.genList (i: builtins.toFile "bench-burst-${{toString i}}" '
        f'"hookd burst {nonce} ${{toString i}}\\n") {n}; in '
        '{ inherit files; list = builtins.toFile "bench-burst-list" '
        '(builtins.concatStringsSep "\\n" files); }'
    )
    proc = h.subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", "-E", expr],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=h.clean_env(),
    )
    if proc.returncode != 0:
        raise h.BenchError(f"making {n} burst paths failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    paths = result["files"]
    ctx.created.append(result["list"])
    h.add_root(result["list"], f"burst-{tag}")  # the list refers to every file: roots them all
    if len(set(paths)) != n or not all(os.path.exists(p) for p in paths[:10]):
        raise h.BenchError("burst paths were not created in the store")
    return paths


def queued_paths(db: Path) -> set[str]:
    """Every root path the queue database holds (any state), read after the daemon stopped."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = {r[0] for r in conn.execute("SELECT DISTINCT path FROM items")}
        for (outs,) in conn.execute("SELECT out_paths FROM requests"):
            found.update(json.loads(outs))
        states = dict(conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    finally:
        conn.close()
    return found, states  # type: ignore[return-value]


def sample_rss(d: h.Daemon, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.05):  # a sampler, not synchronisation: VmHWM is the real figure
        v = d.vm_rss_kib()
        if v:
            peak[0] = max(peak[0], v)


def hook_lanes(ctx: Any, d: h.Daemon, paths: list[str], work: Path) -> dict[str, Any]:
    argv_base = [
        ctx.py,
        "-I",
        "-S",
        str(h.HOOK_PY),
        "--socket",
        str(d.socket),
        "--spool",
        str(d.spool),
    ]
    lat: list[list[float]] = [[] for _ in range(LANES)]
    errors: list[str] = []

    def lane(k: int) -> None:
        err = str(work / f"lane-{k}.err")
        try:
            for i in range(k, len(paths), LANES):
                env = {"PATH": "/usr/bin:/bin", "OUT_PATHS": paths[i]}
                r = h.timed(argv_base, env, stderr=err, timeout=60)
                if r.rc != 0:
                    errors.append(f"hook exited {r.rc}")
                lat[k].append(r.wall)
        except Exception as e:  # reported, never swallowed
            errors.append(repr(e))

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(LANES)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    spooled = 0
    for k in range(LANES):
        f = work / f"lane-{k}.err"
        if f.exists():
            spooled += sum("spooled to" in line for line in f.read_text().splitlines())
    flat = [x for xs in lat for x in xs]
    return {
        "elapsed": elapsed,
        "latency_ms": h.summary(flat, 1000),
        "spooled": spooled,
        "errors": errors[:5],
        "error_count": len(errors),
        "command": h.shlex.join(argv_base) + "  (env OUT_PATHS=<one path>)",
    }


def socket_lanes(d: h.Daemon, paths: list[str]) -> dict[str, Any]:
    lat: list[list[float]] = [[] for _ in range(LANES)]
    refused: list[str] = []

    def lane(k: int) -> None:
        for i in range(k, len(paths), LANES):
            payload = (
                '{"v":1,"op":"enqueue","source":"hook","out_paths":['
                + json.dumps(paths[i])
                + "]}\n"
            ).encode()
            t0 = time.perf_counter()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            try:
                s.connect(str(d.socket))
                s.sendall(payload)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            except OSError as e:
                refused.append(repr(e))
                continue
            finally:
                s.close()
            lat[k].append(time.perf_counter() - t0)
            if b'"ok":true' not in reply:
                refused.append(reply[:200].decode(errors="replace"))

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(LANES)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for xs in lat for x in xs]
    return {
        "elapsed": elapsed,
        "latency_ms": h.summary(flat, 1000),
        "spooled": 0,
        "errors": refused[:5],
        "error_count": len(refused),
        "command": '50 threads x {"v":1,"op":"enqueue","out_paths":[<path>]} '
        "(one connection per request, as the hook does)",
    }


def wait_resolved(d: h.Daemon, timeout: float) -> float:
    """Until no request waits for resolution and the spool is empty, read from the queue
    database itself (WAL allows readers): asking the daemon (`status`) would load it."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    db = d.state / "queue.sqlite"
    while time.perf_counter() < deadline:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            pending = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        finally:
            conn.close()
        spool_left = list(d.spool.glob("*.json")) if d.spool.exists() else []
        if pending == 0 and not spool_left:
            return time.perf_counter() - t0
        time.sleep(0.1)  # polling a condition with a deadline
    raise h.BenchError(f"burst: requests still unresolved after {timeout}s")


def one(ctx: Any, mode: str, attic: h.Attic) -> dict[str, Any]:
    n = ctx.burst_paths
    work = ctx.out / "burst" / mode
    work.mkdir(parents=True, exist_ok=True)
    paths = make_paths(ctx, n, mode)
    ctx.created.extend(paths)
    d = h.Daemon(work / "daemon", attic.daemon_settings())
    stop = threading.Event()
    peak = [0]
    try:
        d.start()
        idle = d.vm_hwm_kib()
        sampler = threading.Thread(target=sample_rss, args=(d, stop, peak), daemon=True)
        sampler.start()
        cpu0 = d.cpu()
        h.log(f"burst ({mode}): {n} paths from {LANES} concurrent clients")
        res = hook_lanes(ctx, d, paths, work) if mode == "hooks" else socket_lanes(d, paths)
        cpu_accept = d.cpu()
        resolved = wait_resolved(d, 900)  # spool imported, every request turned into items
        status = d.client.call({"op": "status"}, timeout=60)
        hwm = d.vm_hwm_kib()
        stop.set()
        cpu1 = d.cpu()
    finally:
        stop.set()
        d.stop()
    found, states = queued_paths(d.state / "queue.sqlite")
    leftover = len(list(d.spool.glob("*.json"))) if d.spool.exists() else 0
    lost = len(set(paths) - found)
    pushed = sum(t.get("pushed_paths", 0) for t in status.get("targets", []))
    return {
        "paths": n,
        "clients": LANES,
        "accept_seconds": res["elapsed"],
        "accepted_per_s": n / res["elapsed"],
        "client_latency_ms": res["latency_ms"],
        "spooled": res["spooled"],
        "client_errors": res["error_count"],
        "client_error_samples": res["errors"],
        "lost": lost,
        "spool_files_left": leftover,
        "queue_states": states,
        "resolved_seconds_after_accept": resolved,
        "pushed_meanwhile": pushed,
        "daemon_vmhwm_kib": hwm,
        "daemon_vmhwm_mb": (hwm or 0) * 1024 / 1e6,
        "daemon_idle_vmhwm_kib": idle,
        "daemon_peak_rss_sampled_kib": peak[0],
        "daemon_cpu_accept_s": (cpu_accept[0] - cpu0[0]) + (cpu_accept[1] - cpu0[1]),
        "daemon_cpu_total_s": (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1]),
        "command": res["command"],
    }


def run(ctx: Any) -> dict[str, Any]:
    attic = h.Attic(ctx.out / "burst")
    try:
        return {"hooks": one(ctx, "hooks", attic), "socket": one(ctx, "socket", attic)}
    finally:
        attic.close()
