"""Figure 1 — hook cost: wall time of one post-build-hook invocation, variants interleaved."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import harness as h


def sync_hook_script(path: Path, cache_dir: Path) -> Path:
    """What nix-attic-infra-style hooks do: upload inline, inside Nix's hook slot."""
    path.write_text(
        "#!/bin/sh\n"
        "# synchronous upload hook (the comparator): copy this build's outputs before returning\n"
        "set -f\n"
        f'nix copy --to "file://{cache_dir}?compression=none" '
        '$(nix-store -q --outputs "$DRV_PATH") || true\n'
    )
    path.chmod(0o755)
    return path


def variants(
    py: str, up: Path, down: Path, spool_up: Path, spool_down: Path, sync: Path, pyc: Path
) -> dict[str, list[str]]:
    hook = str(h.HOOK_PY)
    run = str(h.HOOK_RUN)
    return {
        "floor": [py, "-I", "-S", "-c", "pass"],
        "hookd_up": [py, "-I", "-S", hook, "--socket", str(up), "--spool", str(spool_up)],
        "hookd_down": [py, "-I", "-S", hook, "--socket", str(down), "--spool", str(spool_down)],
        "console_up": [str(h.HOOKD_HOOK), "--socket", str(up), "--spool", str(spool_up)],
        "console_down": [str(h.HOOKD_HOOK), "--socket", str(down), "--spool", str(spool_down)],
        "sync": [str(sync)],
        "pyc_up": [py, "-I", "-S", str(pyc), "--socket", str(up), "--spool", str(spool_up)],
        "run_up": [py, "-I", "-S", run, "--socket", str(up), "--spool", str(spool_up)],
        "run_down": [py, "-I", "-S", run, "--socket", str(down), "--spool", str(spool_down)],
    }


def compile_hook(py: str, dest: Path) -> Path:
    """hook.py as bytecode for the hook interpreter (a diagnostic row: no compile per run)."""
    code = (
        "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)"
    )
    subprocess.run([py, "-I", "-S", "-c", code, str(h.HOOK_PY), str(dest)], check=True, timeout=60)
    return dest


def ack_roundtrips(sock: Path, drvs: list[str]) -> list[float]:
    """The enqueue round trip alone, from this process (the daemon answers after its commit)."""
    import socket as socketmod

    out = []
    for drv in drvs:
        payload = (
            '{"v":1,"op":"enqueue","source":"hook","out_paths":[],"drv_path":"' + drv + '"}\n'
        ).encode()
        t0 = time.perf_counter()
        s = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(sock))
            s.sendall(payload)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        finally:
            s.close()
        out.append(time.perf_counter() - t0)
        if b'"ok":true' not in reply:
            raise h.BenchError(f"enqueue refused: {reply[:200]!r}")
    return out


LABELS = {
    "floor": "interpreter floor `python3 -I -S -c pass`",
    "hookd_up": "hookd hook, production form (`python3 -I -S hook.py`), daemon up",
    "hookd_down": "hookd hook, production form, daemon down (spools)",
    "console_up": "hookd hook, console script `.venv/bin/hookd-hook`, daemon up",
    "console_down": "hookd hook, console script, daemon down (spools)",
    "sync": "synchronous upload hook (`nix copy --to file://…?compression=none`)",
    "pyc_up": "diagnostic: the same hook from precompiled bytecode (`python3 -I -S hook.pyc`), daemon up",
    "run_up": "hookd hook, shipped launcher (`python3 -I -S hookrun.py`: hook.py from bytecode), daemon up",
    "run_down": "hookd hook, shipped launcher, daemon down (spools)",
}


def perf_stat(argv: list[str], env: dict[str, str], reps: int, out: Path) -> dict[str, Any]:
    """`perf stat -r N` of one command: task-clock and, where the VM has a PMU, instructions."""
    perf = h.shutil.which("perf")
    if not perf:
        return {"available": False, "reason": "perf not installed"}
    cmd = [
        perf,
        "stat",
        "-x",
        ",",
        "-r",
        str(reps),
        "-o",
        str(out),
        "-e",
        "task-clock,context-switches,page-faults,instructions:u,cycles:u",
        "--",
        *argv,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not out.exists():
        return {"available": False, "reason": (proc.stderr.strip() or "perf failed")[-300:]}
    result: dict[str, Any] = {"available": True, "command": shlex.join(cmd), "events": {}}
    for line in out.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        cols = line.split(",")
        if len(cols) < 3:
            continue
        value, unit, event = cols[0], cols[1], cols[2]
        var = cols[3].strip() if len(cols) > 3 else ""
        if value.startswith("<"):
            result["events"][event] = {"value": None, "note": value}
            continue
        try:
            v = float(value)
        except ValueError:
            continue
        result["events"][event] = {
            "value": v,
            "unit": unit,
            "stddev_pct": float(var.rstrip("%")) if re.match(r"^[\d.]+%?$", var) else None,
        }
    return result


def run(ctx: Any) -> dict[str, Any]:
    n = ctx.hook_runs
    work = ctx.out / "hook_cost"
    work.mkdir(parents=True, exist_ok=True)
    h.log(f"hook cost: building {n} trivial derivations (one fresh DRV_PATH per run)")
    drvs = h.instantiate(ctx.nonce + "-hook", "many", count=n)
    outs = h.build(ctx.nonce + "-hook", "many", max_jobs=2, count=n)
    ctx.created.extend(outs)
    cache_dir = work / "sync-cache"
    sync = sync_hook_script(work / "sync-hook.sh", cache_dir)
    down = work / "no-daemon" / "hookd.sock"  # the socket is absent: the hook spools
    down.parent.mkdir(parents=True, exist_ok=True)
    spool_up = work / "spool-up"
    spool_down = work / "spool-down"
    daemon = ctx.daemon
    pyc = compile_hook(ctx.py, work / "hook.pyc")
    # the launcher's import finds hookd/__pycache__/hook.*.pyc, as after scripts/setup.sh
    subprocess.run([ctx.py, "-I", "-S", "-m", "py_compile", str(h.HOOK_PY)], check=True, timeout=60)
    argvs = variants(ctx.py, daemon.socket, down, spool_up, spool_down, sync, pyc)
    names = list(argvs)
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    errs = str(work / "stderr.log")
    base_env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "OUT_PATHS": ""}
    # one untimed warm-up of each variant (page cache, pyc files)
    for name in names:
        h.timed(argvs[name], {**base_env, "DRV_PATH": drvs[0]}, stderr=errs)
    h.log(f"hook cost: {n} interleaved rounds of {len(names)} variants")
    for i in range(n):
        env = {**base_env, "DRV_PATH": drvs[i]}
        for name in h.rotated(names, i):
            r = h.timed(argvs[name], env, stderr=errs)
            if r.rc != 0:
                raise h.BenchError(f"hook variant {name} exited {r.rc}; see {errs}")
            walls[name].append(r.wall)
            cpus[name].append(r.cpu)
    spooled_up = len(list(spool_up.glob("*.json"))) if spool_up.exists() else 0
    daemon.wait_drained(300)
    acks = ack_roundtrips(daemon.socket, drvs)
    floor = h.median(walls["floor"])
    floor_p99 = h.percentile(walls["floor"], 99)
    rows = {}
    for name in names:
        w, c = h.summary(walls[name], 1000), h.summary(cpus[name], 1000)
        rows[name] = {
            "label": LABELS[name],
            "command": shlex.join(argvs[name]),
            "wall_ms": w,
            "cpu_ms": c,
            "ratio_to_floor": h.ratio(h.median(walls[name]), floor),
            "p99_ratio_to_floor": h.ratio(h.percentile(walls[name], 99), floor_p99),
            "cpu_ratio_to_floor": h.ratio(h.median(cpus[name]), h.median(cpus["floor"])),
        }
    rows["sync"]["ratio_to_hookd_up"] = h.ratio(
        h.median(walls["sync"]), h.median(walls["hookd_up"])
    )
    # perf stat: the same commands counted by the kernel (hardware counters where available)
    perf: dict[str, Any] = {}
    reps = max(5, n // 10)
    env = {**base_env, "DRV_PATH": drvs[-1]}
    for name in ("floor", "hookd_up", "hookd_down", "run_up", "run_down"):
        perf[name] = perf_stat(argvs[name], env, reps, work / f"perf-{name}.csv")
    return {
        "runs": n,
        "interpreter": ctx.py,
        "env": "`DRV_PATH=<a built .drv, a different one each round>`, `OUT_PATHS=''` (as Nix 2.8 sets them)",
        "daemon_target": ctx.daemon_target,
        "variants": rows,
        "spooled_while_up": spooled_up,
        "ack_roundtrip_ms": h.summary(acks, 1000),
        "perf_stat": perf,
        "perf_reps": reps,
    }
