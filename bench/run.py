"""hookd benchmarks, one command: ``.venv/bin/python -m bench.run [--quick]``.

Measures the six figures of issue 6 side by side in one run (variants interleaved run by run),
writes ``docs/benchmarks.json`` and regenerates ``docs/benchmarks.md`` from it. ``--quick`` is a
smoke run with small sizes; it writes into ``bench/out/<run>/`` unless ``--docs`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import build_loop, burst, hook_cost, push, report, scale
from bench import harness as h

DOCS = h.ROOT / "docs"

FULL = {
    "hook_runs": 200,
    "loop_derivations": 50,
    "loop_rounds": 5,
    "push_mib": 500,
    "push_rounds": 5,
    "noop_paths": 1000,
    "noop_rounds": 3,
    "burst_paths": 10_000,
    "mem_mib": 1024,
    "tiny_paths": 2000,
    "scale_small": 1000,
    "scale_paths": 10_000,
    "scale_rounds": 2,
    "scale_large_rounds": 1,
}
QUICK = {
    "hook_runs": 20,
    "loop_derivations": 50,
    "loop_rounds": 2,
    "push_mib": 50,
    "push_rounds": 2,
    "noop_paths": 1000,
    "noop_rounds": 1,
    "burst_paths": 100,
    "mem_mib": 50,
    "tiny_paths": 300,
    "scale_small": 200,
    "scale_paths": 1000,
    "scale_rounds": 1,
    "scale_large_rounds": 1,
}

FIGURES = ["hook_cost", "build_loop", "throughput", "noop", "burst", "memory", "scale"]


@dataclass
class Context:
    out: Path
    nonce: str
    py: str
    hook_runs: int
    loop_derivations: int
    loop_rounds: int
    push_mib: int
    push_rounds: int
    noop_paths: int
    noop_rounds: int
    burst_paths: int
    mem_mib: int
    tiny_paths: int
    scale_small: int
    scale_paths: int
    scale_rounds: int
    scale_large_rounds: int
    baseline: str = scale.BASELINE
    created: list[str] = field(default_factory=list)
    daemon: h.Daemon | None = None  # shared by figures 1 and 2
    attic: h.Attic | None = None
    daemon_target: str = ""


def ensure_tools() -> dict[str, Any]:
    """The bench installs what it needs: only `perf` (linux-perf) is optional and from apt."""
    missing = [t for t in ("nix-build", "nix-store", "nix", "openssl") if not shutil.which(t)]
    if missing:
        raise SystemExit(
            f"bench: missing {', '.join(missing)}; run scripts/setup.sh first "
            "(installs Debian's nix-bin) and apt-get install openssl"
        )
    notes: dict[str, Any] = {}
    if not shutil.which("perf") and os.geteuid() == 0 and shutil.which("apt-get"):
        h.log("installing linux-perf (apt-get) for `perf stat`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"],
            [
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=300",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "linux-perf",
            ],
        ):
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
    notes["perf"] = shutil.which("perf")
    return notes


def machine(py: str) -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except OSError:
            return ""

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    os_release = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, _, v = line.partition("=")
            os_release[k] = v.strip('"')
    except OSError:
        pass
    commit = cmd("git", "-C", str(h.ROOT), "rev-parse", "--short", "HEAD")
    dirty = cmd("git", "-C", str(h.ROOT), "status", "--porcelain", "--", "hookd")
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_release.get("PRETTY_NAME", platform.platform()),
        "bench_python": f"{sys.executable} ({platform.python_version()})",
        "hook_python": f"{py} ({cmd(py, '-c', 'import platform; print(platform.python_version())')})",
        "nix": cmd("nix", "--version"),
        "openssl": cmd("openssl", "version"),
        "perf": cmd("perf", "--version") or "not installed",
        "hookd_commit": commit + (" (hookd/ has uncommitted changes)" if dirty else ""),
        "load_average_start": os.getloadavg(),
    }


def start_shared(ctx: Context) -> None:
    ctx.attic = h.Attic(ctx.out / "shared")
    ctx.daemon = h.Daemon(ctx.out / "shared" / "daemon", ctx.attic.daemon_settings()).start()
    ctx.daemon_target = (
        f"Attic-compatible test server in the bench process ({ctx.attic.url}), cache `bench`"
    )


def stop_shared(ctx: Context) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if ctx.daemon is not None and ctx.daemon.proc is not None:
        info["vmhwm_kib"] = ctx.daemon.vm_hwm_kib()
        ctx.daemon.stop()
    if ctx.attic is not None:
        info["paths_on_server"] = ctx.attic.objects()
        ctx.attic.close()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run with small sizes (~3 min)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument(
        "--docs",
        action="store_true",
        help="write docs/benchmarks.{json,md} even for --quick/--only runs",
    )
    ap.add_argument(
        "--keep-store", action="store_true", help="do not delete the store paths the bench built"
    )
    ap.add_argument(
        "--python", default=None, help="interpreter for the hook (default /usr/bin/python3)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=N",
        help=f"override a size ({', '.join(FULL)}); the run is then not written to docs/",
    )
    ap.add_argument(
        "--baseline",
        default=scale.BASELINE,
        help=f"commit measured side by side with the current tree in figure 7 (default {scale.BASELINE})",
    )
    args = ap.parse_args(argv)
    only = [f for f in args.only.split(",") if f] or FIGURES
    unknown = set(only) - set(FIGURES)
    if unknown:
        ap.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        ap.error("run as root: the bench builds into the single-user root Nix store")

    started = time.time()
    tools = ensure_tools()
    py = args.python or h.hook_python()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = h.ROOT / "bench" / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    sizes = dict(QUICK if args.quick else FULL)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in sizes or not value.isdigit():
            ap.error(f"--set {item}: expected KEY=N with KEY one of {', '.join(sizes)}")
        sizes[key] = int(value)
    h.GC_ROOTS = out / "gcroots"
    ctx = Context(
        out=out, nonce=f"{stamp}-{uuid.uuid4().hex[:6]}", py=py, baseline=args.baseline, **sizes
    )
    data: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "parameters": sizes,
        "machine": machine(py),
        "tools": tools,
        "figures": {},
        "errors": {},
        "timings_s": {},
    }
    h.log(f"run {stamp} ({data['mode']}); scratch in {out}")
    runners: dict[str, Callable[[Context], dict[str, Any]]] = {
        "hook_cost": hook_cost.run,
        "build_loop": build_loop.run,
        "throughput": push.throughput,
        "noop": push.noop,
        "burst": burst.run,
        "memory": push.memory,
        "scale": scale.run,
    }
    try:
        if {"hook_cost", "build_loop"} & set(only):
            start_shared(ctx)
        for name in FIGURES:
            if name not in only:
                continue
            t0 = time.time()
            try:
                data["figures"][name] = runners[name](ctx)
            except Exception as e:  # one broken figure must not cost the others
                h.log(f"{name} FAILED: {e}")
                data["errors"][name] = f"{type(e).__name__}: {e}"[:4000]
                (out / f"{name}.traceback").write_text(traceback.format_exc())
            data["timings_s"][name] = round(time.time() - t0, 1)
            h.log(f"{name}: {data['timings_s'][name]} s")
    finally:
        data["shared_daemon"] = stop_shared(ctx)
        if not args.keep_store:
            h.release_roots()
            data["store_cleanup"] = h.delete_paths(ctx.created)
    data["machine"]["load_average_end"] = os.getloadavg()
    data["total_seconds"] = round(time.time() - started, 1)
    data["goals"] = report.goals(data)
    # paths relative to the repository: the report must not embed this machine's checkout
    data = json.loads(json.dumps(data, default=str).replace(str(h.ROOT) + "/", ""))
    text_json = json.dumps(data, indent=2) + "\n"
    (out / "benchmarks.json").write_text(text_json)
    (out / "benchmarks.md").write_text(report.render(data))
    write_docs = args.docs or (not args.quick and only == FIGURES and not args.set)
    if write_docs:
        (DOCS / "benchmarks.json").write_text(text_json)
        (DOCS / "benchmarks.md").write_text(report.render(data))
        h.log(f"wrote {DOCS / 'benchmarks.md'} and {DOCS / 'benchmarks.json'}")
    h.log(f"done in {data['total_seconds']} s; report: {out / 'benchmarks.md'}")
    print(report.headline(data))
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
