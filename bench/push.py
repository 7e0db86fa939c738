"""Figures 3, 4 and 6 — pushing to the Attic-compatible server.

3. throughput: a ~20-path closure of incompressible data, hookd (enqueue → `wait` drained) vs
   raw `nix-store --dump` into sha256 (the bound) vs `nix copy --to file://…?compression=none`;
4. no-op re-push of a 1,000-path closure the cache already has: wall time and HTTP requests;
6. memory: the daemon's peak RSS (VmHWM) while streaming one large NAR.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from bench import harness as h

MB = 1_000_000
MIB = 1 << 20


def blob_sizes_kib(total_mib: int, n: int = 19) -> list[int]:
    """``n`` blob sizes (KiB) summing to ``total_mib`` MiB: a few large paths and a tail of small
    ones, plus two tiny text files, like a real closure."""
    weights = [160, 96, 64, 48, 32, 24, 16, 16, 12, 8, 8, 6, 4, 2, 2, 1, 1]
    scale = total_mib * 1024 / sum(weights)
    sizes = [max(1, round(w * scale)) for w in weights]
    sizes[0] += total_mib * 1024 - sum(sizes)
    return [*sizes, 0, 0][:n]


def push_once(
    ctx: Any, tag: str, roots: list[str], expect: int, hookd: Path | None = None, **server: Any
) -> dict[str, Any]:
    """Fresh server + fresh daemon; time enqueue → drained; peak RSS; request counts.

    ``hookd``: the `hookd` executable to run (another tree's venv, e.g. the baseline)."""
    work = ctx.out / "push" / tag
    attic = h.Attic(work, **server)
    d = h.Daemon(work / "daemon", attic.daemon_settings())
    if hookd is not None:
        d.command = [str(hookd), *d.command[1:]]
    try:
        d.start()
        idle_hwm = d.vm_hwm_kib()
        nice = h.proc_nice(d.pid)
        attic.clear()
        cpu0 = d.cpu()
        srv_cpu0 = time.process_time()  # the bench process runs only the server's threads now
        t0 = time.perf_counter()
        reply = d.client.enqueue(roots)
        if not reply.get("ok"):
            raise h.BenchError(f"enqueue refused: {reply}")
        d.wait_drained(1800)
        elapsed = time.perf_counter() - t0
        srv_cpu = time.process_time() - srv_cpu0
        cpu1 = d.cpu()
        hwm = d.vm_hwm_kib()
        got = attic.objects()
        reqs = attic.requests()
        if got < expect:
            raise h.BenchError(f"{tag}: the server has {got} of {expect} paths\n{d.log()[-2000:]}")
        return {
            "seconds": elapsed,
            "paths_on_server": got,
            "requests": len(reqs),
            "request_breakdown": h.request_breakdown(reqs),
            "daemon_cpu_s": (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1]),
            "daemon_own_cpu_s": cpu1[0] - cpu0[0],
            "daemon_children_cpu_s": cpu1[1] - cpu0[1],
            "server_cpu_s": srv_cpu,
            "daemon_vmhwm_kib": hwm,
            "daemon_idle_vmhwm_kib": idle_hwm,
            "daemon_nice": nice,
            "daemon_command": shlex.join(d.command),
            "config": d.config,
        }
    finally:
        d.stop()
        attic.close()


def nix_copy(paths: list[str], dest: Path, nice: int = 0, cpu: bool = False) -> Any:
    argv = h.niced(["nix", "copy", "--to", f"file://{dest}?compression=none", *paths], nice)
    r = h.timed(argv, h.clean_env(), stderr=str(dest.parent / "nix-copy.log"), timeout=1800)
    if r.rc != 0:
        raise h.BenchError(f"nix copy failed ({r.rc})")
    cmd = shlex.join([*argv[: argv.index("--to") + 2], "<root>"])
    return (r.wall, cmd, r.cpu) if cpu else (r.wall, cmd)


# -- 3. throughput ------------------------------------------------------------------------------


def throughput(ctx: Any) -> dict[str, Any]:
    sizes = blob_sizes_kib(ctx.push_mib)
    nonce = ctx.nonce + "-push"
    h.log(f"throughput: building a {len(sizes) + 1}-path closure of {ctx.push_mib} MiB")
    root = h.build(nonce, "closure", max_jobs=2, blobsKiB=sizes)[0]
    closure = h.requisites([root])
    ctx.created.extend(closure)
    nar = h.nar_sizes(closure)
    nar_bytes = sum(nar.values())
    h.dump_sha256(closure)  # warm the page cache for every variant alike
    # Every variant runs at the CPU priority the daemon gives itself, so that the noise of
    # other work on this shared machine hits them alike.
    nice = h.daemon_nice({})
    dump_argv = h.dump_bound_argv(closure, nice)
    env = h.clean_env()
    work = ctx.out / "push"
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[float]] = {"hookd": [], "dump": [], "copy": []}
    details: list[dict[str, Any]] = []
    cpu: dict[str, list[float]] = {"hookd": [], "hookd+server": [], "dump": [], "copy": []}
    commands: dict[str, str] = {}
    h.log(f"throughput: {ctx.push_rounds} interleaved rounds (hookd, dump, nix copy)")
    for i in range(ctx.push_rounds):
        for name in h.rotated(list(rows), i):
            if name == "hookd":
                res = push_once(ctx, f"throughput-{i}", [root], len(closure), nar_size_threshold=0)
                rows[name].append(res["seconds"])
                cpu["hookd"].append(res["daemon_cpu_s"])
                cpu["hookd+server"].append(res["daemon_cpu_s"] + res["server_cpu_s"])
                details.append(res)
                commands[name] = (
                    f"{res['daemon_command']}; then over its socket: "
                    '{"op":"enqueue","out_paths":[<root>]} and {"op":"wait"}'
                )
            elif name == "dump":
                out = work / f"dump-{i}.out"
                r = h.timed(dump_argv, env, stdout=str(out), timeout=1800)
                n = int(out.read_text().split()[-1])
                if r.rc != 0 or n != nar_bytes:
                    raise h.BenchError(f"dump bound: rc {r.rc}, {n} bytes, expected {nar_bytes}")
                rows[name].append(r.wall)
                cpu["dump"].append(r.cpu)
                commands[name] = (
                    shlex.join([*dump_argv[: dump_argv.index("-c") + 1], "<code>", "<paths>"])
                    + "  (the code: for each path, nix-store --dump <path> → sha256 in Python, "
                    "1 MiB reads; bench/harness.py DUMP_CODE)"
                )
            else:
                dest = ctx.out / "push" / f"copy-{i}"
                dest.mkdir(parents=True, exist_ok=True)
                wall, commands[name], copy_cpu = nix_copy([root], dest / "cache", nice, cpu=True)
                rows[name].append(wall)
                cpu["copy"].append(copy_cpu)
                shutil.rmtree(dest / "cache", ignore_errors=True)
    mbps = {k: [nar_bytes / MB / s for s in v] for k, v in rows.items()}
    med = {k: h.median(v) for k, v in mbps.items()}
    return {
        "paths": len(closure),
        "nar_bytes": nar_bytes,
        "nar_mib": nar_bytes / MIB,
        "largest_path_mib": max(nar.values()) / MIB,
        "rounds": ctx.push_rounds,
        "seconds": {k: h.summary(v) for k, v in rows.items()},
        "mb_per_s": {k: h.summary(v) for k, v in mbps.items()},
        "ratio_hookd_to_dump": h.ratio(med["hookd"], med["dump"]),
        "nice": nice,
        "batch_window_s": h.daemon_setting("upload.batch_window", 0.0),
        "ratio_hookd_to_copy": h.ratio(med["hookd"], med["copy"]),
        "cpu_s": {k: h.summary(v) for k, v in cpu.items()},
        "cpu_s_per_gb": {k: h.median(v) / (nar_bytes / 1e9) for k, v in cpu.items() if v},
        "cpu_ratio_hookd_to_dump": h.ratio(h.median(cpu["hookd"]), h.median(cpu["dump"])),
        "commands": commands,
        "hookd_runs": [{k: v for k, v in d.items() if k not in ("config",)} for d in details],
        "server": "tests.attic_server.AtticTestServer in the bench process, compression none, "
        "nar_size_threshold 0 (one sha256 per NAR, written to a temp file)",
        "daemon_config": details[0]["config"] if details else None,
    }


# -- 4. no-op re-push ---------------------------------------------------------------------------


def noop(ctx: Any) -> dict[str, Any]:
    n_files = ctx.noop_paths - 1
    nonce = ctx.nonce + "-noop"
    h.log(f"no-op re-push: a {ctx.noop_paths}-path closure")
    root = h.build(nonce, "filesRoot", files=n_files)[0]
    closure = h.requisites([root])
    ctx.created.extend(closure)
    work = ctx.out / "noop"
    attic = h.Attic(work)
    copy_dest = work / "copy-cache"
    try:
        # seed: the first push (its cost is reported too)
        d = h.Daemon(work / "seed", attic.daemon_settings())
        d.start()
        attic.clear()
        t0 = time.perf_counter()
        d.client.enqueue([root])
        d.wait_drained(1800)
        seed_s = time.perf_counter() - t0
        seed_reqs = attic.requests()
        d.stop()
        if attic.objects() < len(closure):
            raise h.BenchError(
                f"seed push: {attic.objects()} of {len(closure)} paths on the server"
            )
        nice = h.daemon_nice({})
        copy_seed, _ = nix_copy([root], copy_dest, nice)
        fresh: list[float] = []
        fresh_reqs: list[int] = []
        breakdown: dict[str, int] = {}
        warm: list[float] = []
        warm_reqs: list[int] = []
        copy_noop: list[float] = []
        copy_cmd = ""
        h.log(f"no-op re-push: {ctx.noop_rounds} interleaved rounds")
        for i in range(ctx.noop_rounds):
            for name in h.rotated(["hookd", "copy"], i):
                if name == "copy":
                    wall, copy_cmd = nix_copy([root], copy_dest, nice)
                    copy_noop.append(wall)
                    continue
                # a daemon with an empty queue database: all it knows comes from the server
                d = h.Daemon(work / f"fresh-{i}", attic.daemon_settings())
                d.start()
                try:
                    attic.clear()
                    t0 = time.perf_counter()
                    d.client.enqueue([root])
                    d.wait_drained(600)
                    fresh.append(time.perf_counter() - t0)
                    reqs = attic.requests()
                    fresh_reqs.append(len(reqs))
                    breakdown = h.request_breakdown(reqs)
                    # the same daemon again: it remembers what the target has
                    attic.clear()
                    t0 = time.perf_counter()
                    d.client.enqueue([root], drv_path=None)
                    d.wait_drained(600)
                    warm.append(time.perf_counter() - t0)
                    warm_reqs.append(len(attic.requests()))
                finally:
                    d.stop()
        shutil.rmtree(copy_dest, ignore_errors=True)
        return {
            "paths": len(closure),
            "targets": 1,
            "seed_push": {
                "seconds": seed_s,
                "requests": len(seed_reqs),
                "request_breakdown": h.request_breakdown(seed_reqs),
                "nix_copy_seconds": copy_seed,
            },
            "fresh_daemon": {
                "seconds": h.summary(fresh),
                "requests_max": max(fresh_reqs),
                "requests": fresh_reqs,
                "request_breakdown": breakdown,
            },
            "warm_daemon": {
                "seconds": h.summary(warm),
                "requests_max": max(warm_reqs),
                "requests": warm_reqs,
            },
            "nix_copy_noop_seconds": h.summary(copy_noop),
            "ratio_fresh_to_copy": h.ratio(h.median(fresh), h.median(copy_noop)),
            "commands": {
                "hookd": f"{shlex.join(h.Daemon(work / 'x', {}).command[:2])} --config <fresh "
                'state, Attic target>; then {"op":"enqueue","out_paths":[<root>]} '
                'and {"op":"wait"}',
                "copy": copy_cmd + " (destination already holds the closure)",
            },
            "rounds": ctx.noop_rounds,
            "nice": nice,
            "batch_window_s": h.daemon_setting("upload.batch_window", 0.0),
        }
    finally:
        attic.close()


# -- 6. memory ----------------------------------------------------------------------------------


def memory(ctx: Any) -> dict[str, Any]:
    nonce = ctx.nonce + "-mem"
    h.log(f"memory: building one {ctx.mem_mib} MiB path")
    big = h.build(nonce, "big", bigKiB=ctx.mem_mib * 1024)[0]
    ctx.created.append(big)
    nar = h.nar_sizes([big])[big]
    h.dump_sha256([big])  # warm the page cache
    res = push_once(ctx, "memory", [big], 1, nar_size_threshold=0)
    return {
        "nar_bytes": nar,
        "nar_mib": nar / MIB,
        "seconds": res["seconds"],
        "mb_per_s": nar / MB / res["seconds"],
        "daemon_vmhwm_kib": res["daemon_vmhwm_kib"],
        "daemon_idle_vmhwm_kib": res["daemon_idle_vmhwm_kib"],
        "daemon_vmhwm_mb": (res["daemon_vmhwm_kib"] or 0) * 1024 / MB,
        "requests": res["requests"],
        "request_breakdown": res["request_breakdown"],
        "command": res["daemon_command"],
    }
