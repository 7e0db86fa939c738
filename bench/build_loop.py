"""Figure 2 — build-loop impact: 50 fresh derivations realised with no hook, the interpreter-floor
hook, hookd's hook and the synchronous upload hook, interleaved round by round."""

from __future__ import annotations

import shlex
import shutil
from typing import Any

from bench import harness as h
from bench.hook_cost import sync_hook_script


def wrapper(path: Any, command: str) -> Any:
    path.write_text(f"#!/bin/sh\nexec {command}\n")
    path.chmod(0o755)
    return path


LABELS = {
    "none": "no post-build hook",
    "floor": "hook = `sh` + `python3 -I -S -c pass` (the interpreter floor)",
    "hookd": "hook = `sh` + `python3 -I -S hook.py` (hookd, daemon up)",
    "hookd_down": "hook = the same, daemon down (spools; no daemon work during the build)",
    "sync": "hook = synchronous `nix copy --to file://…?compression=none`",
}


def run(ctx: Any) -> dict[str, Any]:
    work = ctx.out / "build_loop"
    hooks = work / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    d = ctx.daemon
    scripts = {
        "none": None,
        "floor": wrapper(hooks / "floor.sh", f"{shlex.quote(ctx.py)} -I -S -c pass"),
        "hookd": wrapper(
            hooks / "hookd.sh",
            shlex.join(
                [
                    ctx.py,
                    "-I",
                    "-S",
                    str(h.HOOK_PY),
                    "--socket",
                    str(d.socket),
                    "--spool",
                    str(work / "spool"),
                ]
            ),
        ),
        "hookd_down": wrapper(
            hooks / "hookd-down.sh",
            shlex.join(
                [
                    ctx.py,
                    "-I",
                    "-S",
                    str(h.HOOK_PY),
                    "--socket",
                    str(work / "no-daemon" / "hookd.sock"),
                    "--spool",
                    str(work / "spool-down"),
                ]
            ),
        ),
        "sync": sync_hook_script(hooks / "sync.sh", work / "sync-cache"),
    }
    names = list(scripts)
    count, rounds = ctx.loop_derivations, ctx.loop_rounds
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    daemon_cpu: list[float] = []
    daemon_children: list[float] = []
    drain: list[float] = []
    commands: dict[str, str] = {}
    errs = str(work / "nix.log")
    h.log(f"build loop: {rounds} rounds x {len(names)} variants x {count} fresh derivations")
    for i in range(rounds):
        for name in h.rotated(names, i):
            nonce = f"{ctx.nonce}-loop-{i}-{name}"
            drvs = h.instantiate(nonce, "many", count=count)  # evaluation is not timed
            argv = [
                "nix-store",
                "--realise",
                *drvs,
                "--option",
                "post-build-hook",
                str(scripts[name] or ""),
            ]
            commands[name] = shlex.join([*argv[:2], f"<{count} fresh .drv>", *argv[2 + count :]])
            before = d.cpu() if name == "hookd" else None
            r = h.timed(argv, h.clean_env(), stderr=errs, timeout=900)
            if r.rc != 0:
                raise h.BenchError(f"build loop ({name}) failed with {r.rc}; see {errs}")
            walls[name].append(r.wall)
            cpus[name].append(r.cpu)
            ctx.created.extend(h.outputs_of(drvs))
            if name == "hookd" and before is not None:
                t0 = h.time.perf_counter()
                d.wait_drained(600)  # not part of the build: how long until all is pushed
                drain.append(h.time.perf_counter() - t0)
                after = d.cpu()
                daemon_cpu.append((after[0] - before[0]) + (after[1] - before[1]))
                daemon_children.append(after[1] - before[1])
    shutil.rmtree(work / "sync-cache", ignore_errors=True)
    none = h.median(walls["none"])
    rows = {}
    for name in names:
        rows[name] = {
            "label": LABELS[name],
            "command": commands[name],
            "hook": str(scripts[name]) if scripts[name] else None,
            "hook_script": scripts[name].read_text() if scripts[name] else None,
            "wall_s": h.summary(walls[name]),
            "cpu_s": h.summary(cpus[name]),
            "ratio_to_none": h.ratio(h.median(walls[name]), none),
            "cpu_ratio_to_none": h.ratio(h.median(cpus[name]), h.median(cpus["none"])),
        }
    rows["hookd_down"]["ratio_to_floor"] = h.ratio(
        h.median(walls["hookd_down"]), h.median(walls["floor"])
    )
    rows["hookd"]["ratio_to_floor"] = h.ratio(h.median(walls["hookd"]), h.median(walls["floor"]))
    rows["hookd"]["ratio_to_sync"] = h.ratio(h.median(walls["hookd"]), h.median(walls["sync"]))
    rows["hookd"]["daemon_cpu_s"] = h.summary(daemon_cpu)
    rows["hookd"]["daemon_children_cpu_s"] = h.summary(daemon_children)
    rows["hookd"]["drain_after_build_s"] = h.summary(drain)
    per_drv = {k: (h.median(walls[k]) - none) / count * 1000 for k in names}
    return {
        "derivations": count,
        "rounds": rounds,
        "variants": rows,
        "added_ms_per_derivation": per_drv,
        "daemon_target": ctx.daemon_target,
    }
