# ruff: noqa: RUF001
"""Goals and the Markdown report, both computed from the JSON results only.

``python -m bench.report [docs/benchmarks.json]`` re-renders ``docs/benchmarks.md`` from a JSON file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RSS_GOAL_MB = 80.0  # 80 MB = 80,000,000 bytes (the stricter reading of "80 MB")


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _x(r: Any) -> str:
    return "—" if r is None else f"{r:.2f}×"


def _mb(kib: Any) -> str:
    return "—" if not kib else f"{kib * 1024 / 1e6:.1f} MB"


def _upper(measured: float | None, limit: float, unit: str = "×") -> tuple[bool | None, str]:
    """A goal of the form measured ≤ limit."""
    if measured is None:
        return None, "not measured"
    if measured <= limit:
        return True, f"met ({measured:.2f}{unit} ≤ {limit:g}{unit})"
    over = (measured / limit - 1) * 100
    return False, f"missed by {over:.0f}% ({measured:.2f}{unit} vs ≤ {limit:g}{unit})"


def _lower(measured: float | None, limit: float, unit: str = "×") -> tuple[bool | None, str]:
    if measured is None:
        return None, "not measured"
    if measured >= limit:
        return True, f"met ({measured:.2f}{unit} ≥ {limit:g}{unit})"
    short = (1 - measured / limit) * 100
    return False, f"missed by {short:.0f}% ({measured:.2f}{unit} vs ≥ {limit:g}{unit})"


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    f = data.get("figures", {})
    out: list[dict[str, Any]] = []

    def add(figure: str, goal: str, result: tuple[bool | None, str], note: str = "") -> None:
        out.append(
            {"figure": figure, "goal": goal, "met": result[0], "result": result[1], "note": note}
        )

    hc = f.get("hook_cost")
    if hc:
        v = hc["variants"]
        add(
            "1 hook cost",
            "production hook, daemon up: median ≤ 1.2× the interpreter floor",
            _upper(v["hookd_up"]["ratio_to_floor"], 1.2),
            f"p99 {_x(v['hookd_up']['p99_ratio_to_floor'])} of the floor's p99; "
            f"CPU {_x(v['hookd_up']['cpu_ratio_to_floor'])} of the floor's CPU",
        )
        add(
            "1 hook cost",
            "production hook, daemon down: median ≤ 1.2× the interpreter floor",
            _upper(v["hookd_down"]["ratio_to_floor"], 1.2),
            f"p99 {_x(v['hookd_down']['p99_ratio_to_floor'])}; "
            f"CPU {_x(v['hookd_down']['cpu_ratio_to_floor'])}",
        )
        add(
            "1 hook cost",
            "console-script hook (second row), daemon up: ≤ 1.2× the floor",
            _upper(v["console_up"]["ratio_to_floor"], 1.2),
            "the form `.venv/bin/hookd-hook` (site + package import)",
        )
        if "run_up" in v:
            add(
                "1 hook cost",
                "shipped launcher (hookrun.py: hook.py from bytecode), daemon up: ≤ 1.2× the floor",
                _upper(v["run_up"]["ratio_to_floor"], 1.2),
                f"production form before: {_x(v['hookd_up']['ratio_to_floor'])}; p99 "
                f"{_x(v['run_up']['p99_ratio_to_floor'])}; CPU {_x(v['run_up']['cpu_ratio_to_floor'])}",
            )
            add(
                "1 hook cost",
                "shipped launcher, daemon down: ≤ 1.2× the floor",
                _upper(v["run_down"]["ratio_to_floor"], 1.2),
                f"CPU {_x(v['run_down']['cpu_ratio_to_floor'])}",
            )
        if "pyc_up" in v:
            add(
                "1 hook cost",
                "(diagnostic) the same hook from precompiled bytecode, daemon up: ≤ 1.2× the floor",
                _upper(v["pyc_up"]["ratio_to_floor"], 1.2),
                "not a shipped form: shows what compiling hook.py on every run costs",
            )
    bl = f.get("build_loop")
    if bl:
        v = bl["variants"]
        floor_ratio = v["floor"]["ratio_to_none"]
        note = (
            f"the interpreter floor alone costs {_x(floor_ratio)}"
            + (", so the floor does not allow 1.1×" if floor_ratio and floor_ratio > 1.1 else "")
            + f"; hookd is {_x(v['hookd']['ratio_to_floor'])} of the floor-hook loop"
        )
        add(
            "2 build loop",
            "hookd hook: ≤ 1.1× no hook (when the floor allows)",
            _upper(v["hookd"]["ratio_to_none"], 1.1),
            note,
        )
        added = bl["added_ms_per_derivation"]
        hk, sy = added.get("hookd"), added.get("sync")
        far = None if hk is None or sy is None else hk <= 0.5 * sy
        add(
            "2 build loop",
            "far below the synchronous hook (criterion: hookd adds ≤ ½ of what the "
            "sync hook adds per derivation)",
            (
                far,
                f"{'met' if far else 'missed'}: hookd {_x(v['hookd']['ratio_to_sync'])} of the "
                f"sync loop; +{_f(hk, 1)} ms vs +{_f(sy, 1)} ms per derivation",
            ),
        )
    tp = f.get("throughput")
    if tp:
        add(
            "3 push throughput",
            "hookd ≥ 0.7× raw `nix-store --dump`",
            _lower(tp["ratio_hookd_to_dump"], 0.7),
            f"{_f(tp['mb_per_s']['hookd']['median'], 0)} vs {_f(tp['mb_per_s']['dump']['median'], 0)}"
            " MB/s (medians)",
        )
    no = f.get("noop")
    if no:
        n = no["fresh_daemon"]["requests_max"]
        add(
            "4 no-op re-push",
            f"{no['paths']}-path closure already cached: ≤ 2 HTTP requests per target",
            (
                n <= 2,
                f"{'met' if n <= 2 else 'missed'}: {n} request(s) with an empty queue database, "
                f"{no['warm_daemon']['requests_max']} when the daemon already knows",
            ),
            f"wall {_f(no['fresh_daemon']['seconds']['median'], 3)} s",
        )
    bu = f.get("burst")
    if bu:
        for key in ("hooks", "socket"):
            b = bu.get(key)
            if not b:
                continue
            add(
                "5 burst",
                f"{b['paths']} paths via {b['clients']} concurrent {key}: lost = 0",
                (b["lost"] == 0, f"{'met' if b['lost'] == 0 else 'missed'}: lost {b['lost']}"),
                f"{b['accepted_per_s']:.0f} paths/s accepted, {b['spooled']} spooled",
            )
            add(
                "5 burst",
                f"daemon peak RSS ≤ {RSS_GOAL_MB:g} MB ({key})",
                _upper(b["daemon_vmhwm_mb"], RSS_GOAL_MB, " MB"),
                "VmHWM before stopping",
            )
    me = f.get("memory")
    if me:
        add(
            "6 memory",
            f"daemon peak RSS ≤ {RSS_GOAL_MB:g} MB streaming a {me['nar_mib']:.0f} MiB NAR",
            _upper(me["daemon_vmhwm_mb"], RSS_GOAL_MB, " MB"),
            f"idle before the push: {_mb(me['daemon_idle_vmhwm_kib'])}",
        )
    sc = f.get("scale")
    if sc:
        tiny = sc["cases"]["tiny"]
        cur, base = tiny["rows"]["current"], tiny["rows"]["baseline"]
        add(
            "7 scale",
            "tiny paths (~0.5 KiB NARs): daemon CPU ≤ 1.5 ms per path",
            _upper(cur["cpu_ms_per_path"], 1.5, " ms"),
            f"baseline {base['cpu_ms_per_path']:.2f} ms; {tiny['paths']} paths; nix children "
            "included",
        )
        add(
            "7 scale",
            "tiny paths: ≥ 3× the baseline's paths/s",
            _lower(tiny["speedup_paths_per_s"], 3.0),
            f"{cur['paths_per_s']:.0f} vs {base['paths_per_s']:.0f} paths/s",
        )
        for v in ("current", "baseline"):
            e = sc["exponent"][v]
            add(
                "7 scale",
                f"{v}: cost linear in the closure size (wall-time exponent ≤ 1.1, "
                f"{sc['cases']['small']['paths']} → {sc['cases']['large']['paths']} paths)",
                _upper(e["wall"], 1.1, ""),
                f"CPU exponent {_f(e['cpu'])}",
            )
        large = sc["cases"]["large"]
        add(
            "7 scale",
            f"daemon peak RSS ≤ {RSS_GOAL_MB:g} MB for the {large['paths']}-path push (current)",
            _upper(large["rows"]["current"]["vmhwm_mb"], RSS_GOAL_MB, " MB"),
            f"baseline {large['rows']['baseline']['vmhwm_mb']:.1f} MB",
        )
    for name, err in data.get("errors", {}).items():
        out.append(
            {
                "figure": name,
                "goal": "figure measured",
                "met": False,
                "result": f"not measured: {err[:300]}",
                "note": "",
            }
        )
    return out


def headline(data: dict[str, Any]) -> str:
    lines = ["hookd benchmarks — goals:"]
    for g in data.get("goals", []):
        mark = {True: "MET   ", False: "MISSED", None: "  ?   "}[g["met"]]
        lines.append(f"  [{mark}] {g['figure']}: {g['goal']} — {g['result']}")
    return "\n".join(lines)


def _cmd(s: str) -> str:
    return f"`{s}`" if "`" not in s else f"<code>{s}</code>"


def render(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    f = data.get("figures", {})
    p = data.get("parameters", {})
    L: list[str] = []
    w = L.append
    w("# hookd benchmarks")
    w("")
    w(
        "Generated by `.venv/bin/python -m bench.run` from `docs/benchmarks.json`; do not edit by "
        "hand (`python -m bench.report` re-renders it). Every ratio compares variants measured "
        "side by side in the same run, interleaved run by run (A B C, B C A, …), so the noise of "
        "this shared machine hits all of them alike. Medians unless marked; p99 is nearest-rank."
    )
    w("")
    w(
        f"Run: **{data.get('mode')}** mode, {m.get('date_utc')}, {data.get('total_seconds')} s in all."
    )
    w("")
    w("## Goals")
    w("")
    w("| figure | goal | result | note |")
    w("|---|---|---|---|")
    for g in data.get("goals", []):
        mark = {True: "✅", False: "❌", None: "?"}[g["met"]]
        w(f"| {g['figure']} | {g['goal']} | {mark} {g['result']} | {g['note']} |")
    w("")

    hc = f.get("hook_cost")
    if hc:
        w(f"## 1. Hook cost ({hc['runs']} runs per variant)")
        w("")
        w(
            f"One invocation of each hook, wall time from spawn to exit (`posix_spawn` + `wait4`), "
            f"CPU = user+sys of the process (and children) from `wait4`. Environment: {hc['env']}. "
            f"Daemon up = a running `hookd daemon` whose target is the {hc['daemon_target']}; "
            "daemon down = the socket is absent, so the hook spools."
        )
        w("")
        w(
            "| variant | wall median | wall p99 | CPU median | ratio to floor (median) | ratio (p99) |"
        )
        w("|---|---|---|---|---|---|")
        for v in hc["variants"].values():
            w(
                f"| {v['label']} | {_f(v['wall_ms']['median'])} ms | {_f(v['wall_ms']['p99'])} ms | "
                f"{_f(v['cpu_ms']['median'])} ms | {_x(v['ratio_to_floor'])} | "
                f"{_x(v['p99_ratio_to_floor'])} |"
            )
        w("")
        sync = hc["variants"]["sync"]
        w(
            f"The synchronous upload hook takes {_x(sync.get('ratio_to_hookd_up'))} the time of "
            "hookd's hook (daemon up), for a tiny output; it grows with the output's size and the "
            "network, hookd's does not."
        )
        ack = hc.get("ack_roundtrip_ms")
        v = hc["variants"]
        if ack and "pyc_up" in v:
            w("")
            w(
                "Where the production hook's time goes (daemon up): the interpreter floor "
                f"{_f(v['floor']['wall_ms']['median'])} ms; the enqueue round trip alone, measured "
                f"from an in-process client (the daemon answers after its queue commit, "
                f"`synchronous=FULL`): median {_f(ack['median'])} ms, p99 {_f(ack['p99'])} ms; "
                "compiling `hook.py` on every run: the bytecode row is "
                f"{_f(v['hookd_up']['wall_ms']['median'] - v['pyc_up']['wall_ms']['median'])} ms "
                f"faster ({_x(v['pyc_up']['ratio_to_floor'])} of the floor)."
            )
        perf = hc.get("perf_stat", {})
        if perf:
            w("")
            w(
                f"`perf stat -r {hc.get('perf_reps')}` of the same commands (kernel-counted; "
                "hardware counters are reported when the VM exposes a PMU):"
            )
            w("")
            w("| variant | task-clock | ± | context switches | page faults | instructions |")
            w("|---|---|---|---|---|---|")
            for name, r in perf.items():
                if not r.get("available"):
                    w(f"| {name} | not available: {r.get('reason')} | | | | |")
                    continue
                ev = r["events"]

                def val(key: str, ev: dict[str, Any] = ev) -> str:
                    e = ev.get(key) or {}
                    value = e.get("value")
                    if isinstance(value, float) and value.is_integer():
                        value = int(value)
                    return f"`{e['note']}`" if e.get("note") else _f(value)

                tc = ev.get("task-clock", {})
                w(
                    f"| {name} | {_f(tc.get('value'))} ms | {_f(tc.get('stddev_pct'))}% | "
                    f"{val('context-switches')} | {val('page-faults')} | {val('instructions:u')} |"
                )
        w("")
        w("Commands:")
        w("")
        for v in hc["variants"].values():
            w(f"- {v['label']}: {_cmd(v['command'])}")
        w("")

    bl = f.get("build_loop")
    if bl:
        w(f"## 2. Build-loop impact ({bl['derivations']} fresh derivations, {bl['rounds']} rounds)")
        w("")
        w(
            "Each round instantiates fresh derivations (not timed) and realises them with "
            "`nix-store --realise` in the root single-user store, `max-jobs = 1` (Nix runs the "
            "hook after every build, serially). CPU = nix + builders + hooks (`wait4`)."
        )
        w("")
        w(
            "| variant | wall median | wall p99 | CPU median | ratio to no hook | added per derivation |"
        )
        w("|---|---|---|---|---|---|")
        for name, v in bl["variants"].items():
            w(
                f"| {v['label']} | {_f(v['wall_s']['median'], 3)} s | {_f(v['wall_s']['p99'], 3)} s | "
                f"{_f(v['cpu_s']['median'], 3)} s | {_x(v['ratio_to_none'])} | "
                f"{_f(bl['added_ms_per_derivation'][name], 1)} ms |"
            )
        hk = bl["variants"]["hookd"]
        w("")
        w(
            f"hookd / floor hook: {_x(hk['ratio_to_floor'])} with the daemon up, "
            f"{_x(bl['variants'].get('hookd_down', {}).get('ratio_to_floor'))} with it down; "
            f"hookd / synchronous hook: {_x(hk['ratio_to_sync'])}. "
            f"The daemon's own CPU (nix subprocesses included) during a hookd round, which "
            f"competes with the build on this {data.get('machine', {}).get('nproc')}-core "
            f"machine: {_f(hk['daemon_cpu_s']['median'], 3)} s, i.e. "
            f"{_f(hk['daemon_cpu_s']['median'] * 1000 / bl['derivations'], 1)} ms per derivation "
            f"({_f(hk.get('daemon_children_cpu_s', {}).get('median', 0) * 1000 / bl['derivations'], 1)}"
            " ms of it in the `nix-store`/`nix` processes it runs); "
            f"after the build returned, everything was pushed within "
            f"{_f(hk['drain_after_build_s']['median'], 3)} s (median)."
        )
        w("")
        w("Commands (hook scripts in `bench/out/<run>/build_loop/hooks/`):")
        w("")
        for v in bl["variants"].values():
            extra = (
                f" — hook: `{v['hook_script'].strip().splitlines()[-1]}`"
                if v["hook_script"]
                else ""
            )
            w(f"- {v['label']}: {_cmd(v['command'])}{extra}")
        w("")

    tp = f.get("throughput")
    if tp:
        w(
            f"## 3. Push throughput ({tp['paths']} paths, {tp['nar_mib']:.0f} MiB of NAR, "
            f"{tp['rounds']} rounds)"
        )
        w("")
        w(
            f"Incompressible data (openssl aes-128-ctr), largest path {tp['largest_path_mib']:.0f} MiB. "
            "hookd: a fresh daemon (fresh queue) and a fresh server per round, timed from the "
            "`enqueue` of the closure's root to `wait` answering drained. MB = 10⁶ bytes of NAR. "
            f"Server: {tp['server']}; it shares the 2 cores with the daemon. The daemon's nix "
            f"processes run at nice {tp.get('nice', 0)} (hookd's default; the daemon itself keeps "
            "its normal priority so that it acknowledges hooks promptly), and so do the "
            "comparators, so that other work on this shared machine slows them alike. hookd's time includes its "
            f"{tp.get('batch_window_s', 0)} s batching window."
        )
        w("")
        w("| variant | MB/s median | seconds median | seconds max | hookd ratio |")
        w("|---|---|---|---|---|")
        names = {
            "hookd": "hookd → Attic server",
            "dump": "raw `nix-store --dump` → sha256 (bound)",
            "copy": "`nix copy --to file://…?compression=none`",
        }
        ratios = {
            "hookd": "",
            "dump": _x(tp["ratio_hookd_to_dump"]),
            "copy": _x(tp["ratio_hookd_to_copy"]),
        }
        for k, label in names.items():
            w(
                f"| {label} | {_f(tp['mb_per_s'][k]['median'], 0)} | {_f(tp['seconds'][k]['median'], 3)} | "
                f"{_f(tp['seconds'][k]['max'], 3)} | {ratios[k]} |"
            )
        if tp.get("hookd_runs"):
            r0 = tp["hookd_runs"][0]
            w("")
            w(
                f"First hookd round: daemon CPU {_f(r0['daemon_own_cpu_s'])} s in the daemon itself "
                f"+ {_f(r0['daemon_children_cpu_s'])} s in its nix children (`nix-store --dump`, "
                f"`nix path-info`), server CPU {_f(r0['server_cpu_s'])} s, {r0['requests']} HTTP "
                f"requests ({', '.join(f'{k} ×{v}' for k, v in r0['request_breakdown'].items())})."
            )
        cpg = tp.get("cpu_s_per_gb")
        if cpg:
            w("")
            w(
                "CPU cost, which the noise of a shared machine disturbs far less than wall time "
                "(user+sys seconds per GB of NAR, medians): "
                f"hookd daemon incl. its nix children {_f(cpg.get('hookd'))} s/GB "
                f"(+ the co-located test server: {_f(cpg.get('hookd+server'))} s/GB); "
                f"raw dump → sha256 {_f(cpg.get('dump'))} s/GB; `nix copy` {_f(cpg.get('copy'))} s/GB. "
                f"hookd / dump CPU: {_x(tp.get('cpu_ratio_hookd_to_dump'))}."
            )
        w("")
        w("Commands:")
        w("")
        for k, label in names.items():
            w(f"- {label}: {_cmd(tp['commands'].get(k, ''))}")
        w("")

    no = f.get("noop")
    if no:
        w(f"## 4. No-op re-push ({no['paths']}-path closure already in the cache, 1 target)")
        w("")
        w(
            "HTTP requests are counted by the server between the `enqueue` and `wait` answering "
            f"drained; `nix copy` runs at the daemon's nice {no.get('nice', 0)}."
        )
        w("")
        w("| case | wall median | HTTP requests | detail |")
        w("|---|---|---|---|")
        fr = no["fresh_daemon"]
        w(
            f"| hookd, empty queue database (asks the server) | {_f(fr['seconds']['median'], 3)} s | "
            f"{fr['requests_max']} | {', '.join(f'{k} ×{v}' for k, v in fr['request_breakdown'].items())} |"
        )
        wa = no["warm_daemon"]
        w(
            f"| hookd, same daemon again (knows the target has them) | {_f(wa['seconds']['median'], 3)} s | "
            f"{wa['requests_max']} | no request at all |"
        )
        w(
            f"| `nix copy` to a `file://` cache that has them | {_f(no['nix_copy_noop_seconds']['median'], 3)} s | "
            "n/a (reads 1 narinfo per path) | |"
        )
        sp = no["seed_push"]
        w(
            f"| (first push of the closure by hookd, for scale) | {_f(sp['seconds'], 3)} s | "
            f"{sp['requests']} | {', '.join(f'{k} ×{v}' for k, v in sp['request_breakdown'].items())} |"
        )
        w("")
        w(
            f"hookd's times include its batching window (`upload.batch_window`, "
            f"{no.get('batch_window_s', 0)} s by default): after being idle, a worker waits that "
            "long so that a burst of builds shares one closure computation."
        )
        w("")
        w(
            f"hookd (empty queue) / nix copy no-op: {_x(no['ratio_fresh_to_copy'])}. Commands: "
            f"hookd: {_cmd(no['commands']['hookd'])}; copy: {_cmd(no['commands']['copy'])}."
        )
        w("")

    bu = f.get("burst")
    if bu:
        w("## 5. Burst")
        w("")
        w(
            "Real store paths (text files made by evaluation), one path per request, a fresh "
            "daemon per row (Attic target), started pushing while the burst goes on. *Accepted* = "
            "acknowledged by the daemon after its queue commit, or spooled by the hook. The daemon "
            "is stopped once every request is resolved (spool imported, items created); *lost* = "
            "announced paths then found in neither the queue's items nor its requests."
        )
        w("")
        w(
            "| clients | paths | accepted/s | client latency median / p99 / max | spooled | lost | "
            "all resolved after | daemon peak RSS (VmHWM) |"
        )
        w("|---|---|---|---|---|---|---|---|")
        for key, label in (
            ("hooks", "50 concurrent hook processes (production form)"),
            ("socket", "50 concurrent socket clients (hook wire format)"),
        ):
            b = bu.get(key)
            if not b:
                continue
            lat = b["client_latency_ms"]
            w(
                f"| {label} | {b['paths']} | {b['accepted_per_s']:.0f} | {_f(lat['median'], 1)} / "
                f"{_f(lat['p99'], 1)} / {_f(lat['max'], 1)} ms | {b['spooled']} | {b['lost']} | "
                f"+{_f(b['resolved_seconds_after_accept'], 2)} s | {_mb(b['daemon_vmhwm_kib'])} "
                f"(idle {_mb(b['daemon_idle_vmhwm_kib'])}) |"
            )
        w("")
        for key in ("hooks", "socket"):
            b = bu.get(key)
            if b:
                w(
                    f"- {key}: queue states at stop {b['queue_states']}; {b['pushed_meanwhile']} "
                    f"paths uploaded before the stop; daemon CPU {_f(b['daemon_cpu_accept_s'])} s while "
                    f"accepting (nix subprocesses included), {_f(b['daemon_cpu_total_s'])} s in all; "
                    f"{b['client_errors']} client errors; requests resolved into queue items at "
                    f"{b['paths'] / (b['accept_seconds'] + b['resolved_seconds_after_accept']):.0f}/s "
                    f"overall. Command: {_cmd(b['command'])}"
                )
        w("")

    me = f.get("memory")
    if me:
        w(f"## 6. Memory while streaming a {me['nar_mib']:.0f} MiB NAR")
        w("")
        w("| daemon peak RSS (VmHWM) | idle before the push | push time | MB/s | requests |")
        w("|---|---|---|---|---|")
        w(
            f"| {_mb(me['daemon_vmhwm_kib'])} | {_mb(me['daemon_idle_vmhwm_kib'])} | "
            f"{_f(me['seconds'], 2)} s | {_f(me['mb_per_s'], 0)} | {me['requests']} |"
        )
        w("")
        w(
            f"VmHWM is read from `/proc/<daemon pid>/status` right before the daemon is stopped. "
            f"Command: {_cmd(me['command'])}, then `enqueue` + `wait`."
        )
        w("")

    sc = f.get("scale")
    if sc:
        render_scale(sc, w)
        analysis = Path(__file__).resolve().parent / "analysis.md"
        if analysis.exists():  # hand-written from the profiles (bench/profile.py)
            w(analysis.read_text().rstrip("\n"))
            w("")

    if data.get("errors"):
        w("## Figures that could not be measured")
        w("")
        for k, v in data["errors"].items():
            w(f"- {k}: {v[:500]}")
        w("")

    w("## Machine and run")
    w("")
    w("| fact | value |")
    w("|---|---|")
    for k in (
        "date_utc",
        "nproc",
        "cpu",
        "memory_gib",
        "os",
        "kernel",
        "nix",
        "hook_python",
        "bench_python",
        "openssl",
        "perf",
        "hookd_commit",
        "load_average_start",
        "load_average_end",
    ):
        val = m.get(k)
        if isinstance(val, list | tuple):
            val = ", ".join(f"{x:.2f}" for x in val)
        w(f"| {k} | {val} |")
    w(f"| parameters | {', '.join(f'{k}={v}' for k, v in p.items())} |")
    w(
        f"| seconds per figure | {', '.join(f'{k} {v}' for k, v in data.get('timings_s', {}).items())} |"
    )
    w("")
    return "\n".join(L)


def render_scale(sc: dict[str, Any], w: Any) -> None:
    w("## 7. Scale: closures of thousands of tiny paths, baseline and current side by side")
    w("")
    w(
        f"Baseline: commit `{sc['baseline_commit']}` (`git archive` of it, installed with `pip` "
        f"into a venv of its own, `{sc['baseline_command']}`); current: this tree "
        f"(`{sc['current_command']}`). Each push: a fresh daemon (empty queue database) and a "
        "fresh test server, `enqueue` of the closure's root to `wait` drained; the variants "
        "alternate round by round. CPU = the daemon's user+sys, its `nix` children included "
        "(own = without them). Tiny paths are text files of ~0.5 KiB NAR made at evaluation "
        "time; the mixed closures add 0.5 % of 1 to 4 MiB blobs."
    )
    w("")
    w(
        "| closure | variant | rounds | wall median | paths/s | CPU per path | own CPU per path "
        "| CPU / wall | peak RSS | requests |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|")
    for case, c in sc["cases"].items():
        label = f"{case}: {c['paths']} paths, {c['nar_bytes'] / 1e6:.1f} MB of NAR"
        for v, r in c["rows"].items():
            w(
                f"| {label} | {v} | {r['rounds']} | {r['seconds']['median']:.2f} s | "
                f"{r['paths_per_s']:.0f} | {r['cpu_ms_per_path']:.2f} ms | "
                f"{r['own_cpu_ms_per_path']:.2f} ms | {r['cpu_share_of_wall']:.0%} | "
                f"{r['vmhwm_mb']:.1f} MB | {r['requests']} |"
            )
    w("")
    lines = []
    for case, c in sc["cases"].items():
        lines.append(
            f"{case}: current/baseline CPU per path {_x(c['cpu_ratio_current_to_baseline'])}, "
            f"paths/s {_x(c['speedup_paths_per_s'])}"
        )
    w("; ".join(lines) + ".")
    w("")
    ex = sc["exponent"]
    w(
        "Scaling exponent between the two mixed closures (log(t₂/t₁) / log(n₂/n₁); 1 = linear): "
        + "; ".join(f"{v} wall {_f(e['wall'])}, CPU {_f(e['cpu'])}" for v, e in ex.items())
        + "."
    )
    w("")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    src = (
        Path(args[0])
        if args
        else Path(__file__).resolve().parent.parent / "docs" / "benchmarks.json"
    )
    data = json.loads(src.read_text())
    data["goals"] = goals(data)
    out = src.with_suffix(".md")
    out.write_text(render(data))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
