"""Run the fault and abuse suite once, full size, and write docs/reliability.md from its numbers.

    .venv/bin/python bench/faults_report.py                 # run (HOOKD_SLOW=1) and render
    .venv/bin/python bench/faults_report.py --render DIR    # re-render a previous run's DIR

A run goes to ``bench/out/faults-<UTC time>/``: ``results.jsonl`` (one line per scenario, written
by tests/test_faults.py and tests/test_recovery.py when HOOKD_FAULTS_REPORT is set), ``junit.xml`` (outcomes, xfail reasons),
``pytest.log`` and ``meta.json`` (command, wall time, machine facts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = ["tests/test_faults.py", "tests/test_recovery.py"]
COMMAND = "HOOKD_SLOW=1 .venv/bin/pytest -m fault " + " ".join(SUITE)
FAST_COMMAND = ".venv/bin/pytest -m fault " + " ".join(SUITE)

# What each scenario does and asserts, in the order of the report.
SCENARIOS: dict[str, str] = {
    "kill -9 at random moments": (
        "Paths built with real Nix; one real `hookd-hook` process per path (8 at a time, paced "
        "over the kill schedule; half of them with `OUT_PATHS` empty, as Nix 2.8 sends it); the "
        "daemon is `kill -9`ed at random moments (`random.Random(seed)`) and restarted each time, "
        "while hooks are being acknowledged, requests resolved and uploads in flight. *Accepted* "
        "= the hook got its acknowledgement, or spooled the request (fsync'd, imported at start). "
        "Asserted: every hook exited 0 and was acknowledged or spooled; after the last restart "
        "the closure of every accepted path is on the server; no spool file is left; at least "
        "one kill landed mid-push; duplicate uploads ≤ 4 per kill. The push keeps pace with the "
        "hooks (see the uploaded counts at each kill), so little or nothing is left to drain "
        "after the last restart."
    ),
    "server down mid-push + random 5xx/resets": (
        "The server answers 30 % of API requests with HTTP 500 and resets 10 % of connections "
        "(seeded) for the whole run; once a quarter of the paths are on it, it goes down "
        "(connection refused) for the given time. Asserted: the closure of every path is on the "
        "server in the end; failed connection attempts in any 60 s window while it is down ≤ "
        "(concurrency + `breaker_threshold`) x `retry_attempts` (the in-flight uploads retry, "
        "then whole batches, until the circuit breaker opens); duplicate uploads ≤ max(3, 5 %). "
        "The fast variant uses a scaled-down backoff, the full one the daemon's defaults "
        "(`min_backoff` 1 s, `breaker_threshold` 5, `breaker_cooldown` 30 s) with `max_backoff` "
        "capped at 60 s. While the server is down it cannot count anything, so the attempts are "
        "counted from the daemon's debug log (one `attic.retry` event per failed attempt)."
    ),
    "token rotated mid-run": (
        "(a) Planned rotation during a push: the token file is replaced atomically (as sops-nix "
        "and agenix do); every request from 0.5 s after the rotation carries the new token (the "
        "server records each token's `sub`) and nothing fails. (b) The token expires before it "
        "is rotated: new paths park with the expiry in the message, the server sees ≤ 3 requests "
        "while they are parked, and replacing the file resumes them without a restart, pushed "
        "with the newer token."
    ),
    "token file removed": (
        "The token file is deleted mid-run. New paths park with a message naming the missing "
        "file; the daemon is restarted while they are parked (they survive, and stay quiet); no "
        "HTTP request is made without a token; restoring the file resumes the push without a "
        "restart."
    ),
    "cache deleted on the server": (
        "The cache is deleted on the server after 10 pushes. A new path parks with Attic's "
        "`NoSuchCache` turned into a message naming the cache, the server and the fix; it "
        "survives a daemon restart; ≤ 3 requests while parked; re-creating the cache and "
        "`hookd retry --all` push it. (See the known bug below for closures pushed before the "
        "deletion.)"
    ),
    "garbage collection while queued": (
        "The server is down, so the paths wait in the queue. Every queued path is pinned (a GC "
        "root in the state directory, counted by `status.gc_roots`); `nix-store --delete` of "
        "each queued path and of each of its dependencies is refused (`still alive`), while an "
        "unqueued control path is deleted. (A full `nix-store --gc` would also delete other "
        "tests' unrooted paths, so the suite deletes path by path.) When the server is back "
        "everything is pushed, the roots are released and the paths become collectable."
    ),
    "path collected before it was pinned": (
        "A path is spooled while the daemon is down and garbage-collected before the daemon "
        "starts (nothing can pin it then). It is failed with `path is no longer valid in the "
        "local store` and a `skip.gone` log line, with no request sent for it; the next path is "
        "pushed normally."
    ),
    "SIGTERM during an upload (cut-off)": (
        "An 8 MiB NAR is sent through a proxy paced at 2 MiB/s; SIGTERM arrives with half the "
        "body sent and `stop_timeout` 2 s. Asserted: the daemon exits within `stop_timeout` + "
        "3 s, the cut-off upload is not on the server and stays queued (`daemon.stopped` "
        "reports the unfinished task); after a restart everything lands, with no duplicate."
    ),
    "SIGTERM during an upload (finishes)": (
        "The same, with `stop_timeout` 15 s: the in-flight upload finishes before the daemon "
        "exits (well before the timeout), and nothing is uploaded twice after the restart."
    ),
    "fuzzing the live daemon socket": (
        "Hypothesis cases sent to a running daemon over a few reused connections: random bytes "
        "(newlines included: one reply per line), random JSON values, and request-shaped objects "
        "(mostly valid `v`/`op`, random fields, near-valid store paths; `wait` timeouts set to 0 "
        "and `backfill` given a non-numeric `since`, because those valid requests are slow, not "
        "bad). Then 50 lines cut off by EOF, one line over 1 MiB, and 200 idle or half-written "
        "connections (a ping right after them retries EAGAIN from the full listen backlog, see "
        "Observations). Asserted: every line gets exactly one JSON reply with `ok` true or false "
        "and a known error code (never `internal`); no `socket.error`, `socket.op_failed` or "
        "`task.crashed` in the log; the daemon still answers `ping`."
    ),
    # issue 9: tests/test_recovery.py
    "spooled .drv collected before start": (
        "While the daemon is down the real hook spools a request with both `DRV_PATH` and "
        "`OUT_PATHS` (as Nix 2.9 and later send them); one of the two outputs does not exist, "
        "and the `.drv` is deleted (`nix-store --delete`, as a GC with `keep-derivations = "
        "false` would) before the daemon starts. Asserted: the valid output is pushed, the gone "
        "one is named in a `resolve.dropped` log line, nothing is marked failed. *Recovered* = "
        "from the start to the push."
    ),
    "queue locked for 12 s while hooks run": (
        "Another SQLite connection holds `BEGIN IMMEDIATE` on `queue.sqlite` for 12 s (past the "
        "daemon's 10 s `busy_timeout`) while real hooks keep arriving for real Nix-built paths. "
        "Asserted: every hook exits 0, acknowledged or spooled (the daemon answers "
        "`queue-unavailable` and the hook spools); after the release, the next hook is "
        "acknowledged, `status` answers, the spool is imported and every accepted path is on "
        "the server, all by the same daemon process. *Recovered* = from the release to the last "
        "path pushed."
    ),
    "state_dir full, then freed": (
        "`state_dir` on a 2 MiB tmpfs (skipped, with the reason, where mounting is not "
        "allowed); three paths pushed, then the file system is filled to ENOSPC and four hooks "
        "run; then the space is freed and three more hooks run. While full the queue cannot "
        "commit and the spool (same disk) cannot take the file, so those hooks exit 0 saying so "
        "and advising `hookd backfill`, which the scenario then runs. Asserted: `status` answers "
        "while full, the next hook after the space returns is acknowledged, every path is on "
        "the server in the end, same process."
    ),
    "malformed cache-config, then fixed": (
        "The server answers `cache-config` with `upstream_cache_key_names: 5` six times (more "
        "than `retry_attempts`), then correctly. Asserted: the answer is a classified error "
        "naming the field (in `status`), the cached server state is dropped, and the paths are "
        "pushed once the server answers correctly, without a restart or a `hookd retry`."
    ),
    "server echoes the token": (
        "After a first push, the server answers six requests with the whole token and its "
        "signature in the body (a 200 without `missing_paths`, a 500 with it in the JSON "
        "`message`, a 502 text page), then correctly. The daemon runs at debug level so every "
        "retry is logged. Asserted: no 16-character fragment of the token in the `status` "
        "reply and output, the log, or the queue database's files (including free pages and "
        "the WAL); every path pushed afterwards."
    ),
    "api_endpoint on another origin": (
        "`cache-config` advertises an `api_endpoint` on another origin (a second test server "
        "on another port). Asserted: that server receives no request at all (so never the "
        "token), the refusal is logged with both origins (`attic.api_endpoint_refused`), and "
        "the paths are pushed to the configured endpoint."
    ),
    "server trickles its answers": (
        "Three answers are sent one byte every 0.5 s with `request_timeout` 1 s, so no single "
        "read times out. Asserted: each request ends at the total deadline (3 x "
        "`request_timeout`) as a transient error shown in `status`, the circuit breaker opens "
        "(`breaker.open`), and the paths are pushed once the server answers normally again."
    ),
    "huge answers": (
        "After a first push, a `get-missing-paths` answer of 50 MB (fast) or 300 MB (full), "
        "generated by the server as it is sent, and a 500 whose JSON `message` is 20 MB. "
        "Asserted: the daemon's peak RSS (VmHWM) stays under 80 MB, no log line or `status` "
        "output is anywhere near the message's size, and the paths are pushed afterwards."
    ),
    "100 clients holding 1 MiB each": (
        "100 connections to the daemon's socket each send 1 MiB without a newline and keep the "
        "connection open. Meanwhile a real hook runs and a `ping` is sent. Asserted: the hook "
        "is acknowledged and the ping answered while they hold on; RSS grows by less than "
        "32 MiB and is back within 16 MiB of where it was once they close; peak RSS under "
        "80 MB."
    ),
    "hostile spool entries": (
        "While the daemon is down the real hook spools two requests; next to them sit a regular "
        "file named `corrupt` (where the quarantine directory goes), a FIFO and a symlink. The "
        "daemon starts; then a FIFO, a symlink to `/etc/passwd` and two good requests are added "
        "while it runs. Asserted: every good request is imported and pushed, the FIFOs and "
        "links are quarantined unread, the operator's file is left alone, same process. "
        "*Recovered* = the longer of start-to-pushed and planted-to-pushed."
    ),
    "3xx redirect": (
        "The configured endpoint answers every request with 308 to another origin (a moved "
        "server). Asserted: the paths are parked (not dead-lettered) with the status, the "
        "Location host and the setting to change; after the endpoint is fixed in the "
        "configuration (read at start, so the daemon is restarted to apply it) and `hookd retry "
        "--all`, everything is pushed."
    ),
    "leftover .tmp spool files": (
        "Hidden `.tmp` files an hour old (from a hook whose write failed) in the spool at start "
        "and while running, plus a fresh one a hook could be writing. Asserted: the old ones "
        "are removed (at start, and at the next rescan while running), the fresh one is kept, "
        "imports continue. *Recovered* = from planting to removal while running."
    ),
    "25 concurrent hooks": (
        "Real hooks for real Nix-built paths, 25 at a time (half with `OUT_PATHS` empty, as "
        "Nix 2.8 runs them), 50 (fast) or 150 (full) in all, against a daemon pushing to the "
        "test server. Reported: how many spooled instead of being acknowledged, hook times. "
        "Asserted: every hook acknowledged or spooled, nothing lost. *Recovered* = from the "
        "last hook to the last path pushed."
    ),
}

# Which finding of issue 9 each scenario is the evidence for.
ISSUE9 = {
    "queue locked for 12 s while hooks run": "bug 1 (locked queue)",
    "state_dir full, then freed": "bug 1 (disk full)",
    "malformed cache-config, then fixed": "bug 2",
    "server echoes the token": "bug 4",
    "hostile spool entries": "bug 5; spool reads",
    "api_endpoint on another origin": "token origin",
    "server trickles its answers": "total deadline",
    "huge answers": "unbounded sizes",
    "100 clients holding 1 MiB each": "socket memory",
    "3xx redirect": "redirects",
    "leftover .tmp spool files": "leftover .tmp files",
    "25 concurrent hooks": "hook acceptance",
    "spooled .drv collected before start": "bug 3",
}

# How the issue 6 scenarios recover (their rows predate the recovery columns): the text, and
# whether the time to drain measures it.
RECOVERY = {
    "kill -9 at random moments": ("n/a (the fault is a restart); drained", True),
    "SIGTERM during an upload (cut-off)": ("n/a (the fault is a stop); drained", True),
    "SIGTERM during an upload (finishes)": ("n/a (the fault is a stop); drained", True),
    "server down mid-push + random 5xx/resets": ("yes", True),
    "token rotated mid-run": ("yes", True),
    "token file removed": ("yes, once the file is back", True),
    "cache deleted on the server": ("yes, after `hookd retry --all`", True),
    "garbage collection while queued": ("yes", True),
    "path collected before it was pinned": ("yes", True),
    "fuzzing the live daemon socket": ("yes (never stopped answering)", False),
}

PEERS = [
    (
        "daemon killed or restarted mid-push",
        "queue in memory: a SIGTERM lost the in-flight path and two queued ones, nothing logged "
        "(§3, ran)",
        "`cachix daemon` queue in memory, no restart durability (§4)",
        "no durability; store events missed while down are never caught up (§6)",
        "SQLite queue, resumes pending paths after a restart (§7)",
        "kill",
    ),
    (
        "hook fires while the daemon is down",
        "hook retries for 409.6 s, then exits 2: the build fails (§3, ran)",
        "hook exits non-zero ~15 s later: the build fails (fedimint/fedimint#5186, "
        "cachix/cachix-action#185, cachix/cachix#726)",
        "no hook (watch-store); events are missed",
        "5 s deadline, exits 0, the paths are lost (§7)",
        "down",
    ),
    (
        "concurrent hooks",
        "—",
        "—",
        "—",
        "`SQLITE_BUSY`: paths silently not uploaded (ocf/nix#337)",
        "concurrent",
    ),
    (
        "server down, 5xx, resets",
        'your script re-run 1 s apart, 5 attempts in all, then "Dropped message" (§3)',
        "backoff 1-15 s (≤ 90 s), 3 more tries 5 s apart, then failed, not re-queued (§4)",
        "no retries (zhaofengli/attic#239, #141); watch-store panics when the server fails "
        "mid-session (#226) and never retries a failed path (§6)",
        "backoff 1 s-15 min, stays queued (§7)",
        "server",
    ),
    (
        "token rotated",
        "credentials exported as environment variables at start: restart needed (§3)",
        "token read once at start: restart needed (§4)",
        "`token-file` re-read when the config is loaded (attic PR #51; §0.3)",
        "token file (`--auth-token-path`); re-reading not covered in docs/peers.md",
        "rotation",
    ),
    (
        "token missing or invalid, cache deleted",
        "not told apart from outages: dropped after 5 attempts (§9.3)",
        "not told apart: the path fails (§9.3)",
        '"Unauthorized." with no reason (zhaofengli/attic#90, #166)',
        "not told apart: backoff (§9.3)",
        "auth",
    ),
    (
        "garbage collection of a queued path",
        "—",
        "watch-store crashed on `nix::InvalidPath` (cachix/cachix#370; 1.6.1 filters invalid "
        "paths)",
        "—",
        "drops collected paths with a warning (§7)",
        "gc",
    ),
    (
        "SIGTERM (systemd's stop)",
        "drops everything (§3, ran)",
        "exits at once, dropping the queue; only `cachix daemon stop`/SIGINT drains, 60 s (§4)",
        "no durability (§6)",
        "drains what it can; the rest stays queued (§7)",
        "sigterm",
    ),
    (
        "malformed requests on the socket",
        "not covered in docs/peers.md",
        "not covered in docs/peers.md",
        "—",
        "not covered in docs/peers.md",
        "fuzz",
    ),
]


# -- running --------------------------------------------------------------------------------


def sh(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def commit() -> str:
    head = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hookd"]).splitlines()
    if dirty:
        files = ", ".join(sorted(line[3:] for line in dirty))
        return f"{head} + uncommitted changes in {files} (shared working tree)"
    return head


def machine_facts() -> dict[str, str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = "?"
    if Path("/etc/os-release").exists():
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
        os_name = m.group(1) if m else "?"
    py = ROOT / ".venv" / "bin" / "python"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "os": f"{os_name}, Linux {platform.release()}",
        "python": sh([str(py), "-c", "import sys; print(sys.version.split()[0])"]),
        "nix": sh(["nix", "--version"]),
        "hypothesis": sh([str(py), "-c", "import hypothesis; print(hypothesis.__version__)"]),
        "commit": commit(),
        "store": "single-user root store, `sandbox = false` (the integration-test Nix)",
    }


def run(out: Path, extra: list[str], *, slow: bool = True) -> int:
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    env = {**os.environ, "HOOKD_SLOW": "1" if slow else "0", "HOOKD_FAULTS_REPORT": str(results)}
    argv = [
        str(ROOT / ".venv" / "bin" / "pytest"),
        "-m",
        "fault",
        *SUITE,
        "-p",
        "no:cacheprovider",
        f"--junitxml={out / 'junit.xml'}",
        "-rA",
        *extra,
    ]
    start_wall = time.time()
    start = time.monotonic()
    with open(out / "pytest.log", "w") as log:
        rc = subprocess.call(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    meta = {
        "command": COMMAND if slow else FAST_COMMAND,
        "slow": slow,
        "argv": argv,
        "exit_code": rc,
        "wall_s": round(time.monotonic() - start, 1),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start_wall)),
        "machine": machine_facts(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return rc


# -- rendering ------------------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return "—"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


Pairs = list[tuple[str, str]]


def outcomes(junit: Path) -> tuple[dict[str, int], Pairs, Pairs, Pairs]:
    """Counts by outcome, the xfailed tests with reasons, failures, and skips with reasons."""
    counts = {"passed": 0, "failed": 0, "xfailed": 0, "skipped": 0}
    xfails: Pairs = []
    failures: Pairs = []
    skipped_tests: Pairs = []
    if not junit.exists():
        return counts, xfails, failures, skipped_tests
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        skipped = case.find("skipped")
        failure = case.find("failure")
        error = case.find("error")
        if skipped is not None and skipped.get("type") == "pytest.xfail":
            counts["xfailed"] += 1
            xfails.append((name, skipped.get("message", "")))
        elif skipped is not None:
            counts["skipped"] += 1
            reason = skipped.get("message", "")
            if not reason.startswith("slow fault run"):  # the fast run's full-size variants
                skipped_tests.append((name, reason))
        elif failure is not None or error is not None:
            counts["failed"] += 1
            node = failure if failure is not None else error
            assert node is not None
            failures.append((name, (node.get("message") or "")[:300]))
        else:
            counts["passed"] += 1
    return counts, xfails, failures, skipped_tests


def drain(row: dict[str, Any]) -> str:
    if row.get("time_to_drain_s") is None:
        return "—"
    return f"{row['time_to_drain_s']} s"


def rate(row: dict[str, Any]) -> str:
    value = row.get("max_requests_per_min_failing")
    if value is None:
        return "—"
    window = row.get("failing_window_s")
    bound = row.get("rate_bound")
    text = str(value)
    if window is not None:
        text += f" (in {window} s)"
    if bound is not None:
        text += f", bound {bound}"
    return text


def recovered(row: dict[str, Any]) -> str:
    """The "recovered without restart" cell: yes/no (or how), and in how many seconds."""
    value = row.get("recovered")
    seconds = row.get("recovery_s")
    if value is None:
        text, timed = RECOVERY.get(row["scenario"], ("—", False))
        seconds = row.get("time_to_drain_s") if timed else None
    else:
        text = "yes" if value is True else "no" if value is False else str(value)
    if str(row.get("result", "")).startswith("FAIL"):
        text = "no (failed)"
    elif row.get("not_handed_over"):
        text += (
            f" (the {row['not_handed_over']} hooks refused while full: by `hookd backfill`, "
            "as they advise)"
        )
    if seconds is None:
        return text
    return (
        f"{text} {seconds} s after the restart"
        if text.endswith("drained")
        else f"{text}, {seconds} s"
    )


def rss(row: dict[str, Any]) -> str:
    value = row.get("peak_rss_mib")
    return "—" if value is None else f"{value} MiB"


def render(out: Path, dest: Path) -> str:
    meta = json.loads((out / "meta.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
    counts, xfails, failures, skipped = outcomes(out / "junit.xml")
    facts = meta["machine"]
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["scenario"], []).append(row)
    order = [s for s in SCENARIOS if s in by] + [s for s in by if s not in SCENARIOS]

    lines: list[str] = []
    w = lines.append
    w("# Reliability: the fault and abuse suite")
    w("")
    w(
        "hookd's promise is that a build result, once the post-build hook has handed it over, "
        "reaches the binary cache in the end, whatever happens to the daemon, the server or the "
        "token in between, and that no fault turns into a failed build or a hammered server. "
        "`tests/test_faults.py` checks that against a real `hookd daemon`, real Nix and the "
        "Attic-compatible test server (`tests/attic_server.py`), injecting each fault for real "
        "(`kill -9`, SIGTERM, a refusing or failing server, token files and caches changed under "
        "the daemon, `nix-store --delete`, garbage on the socket). `tests/test_recovery.py` adds "
        "the faults a running daemon must come back from **by itself, without a restart**: a "
        "locked queue, a full disk, malformed, hostile, trickling, huge and redirecting server "
        "answers, greedy socket clients, a hostile spool, a burst of hooks; each is timed, and "
        "the daemon's peak resident set (VmHWM from `/proc/PID/status`) is measured in every "
        "scenario. Every number below comes from one run of both files."
    )
    w("")
    w("## The run")
    w("")
    w("```sh")
    w(f"{COMMAND}        # full size")
    w(f"{FAST_COMMAND}                    # fast variants only: what CI runs")
    w(".venv/bin/python bench/faults_report.py          # runs the full size, writes this file")
    w(".venv/bin/python bench/faults_report.py --fast   # the same from the fast variants")
    w("```")
    w("")
    kind = "the full run" if meta.get("slow", True) else "the fast run (full-size variants skipped)"
    w(
        f"This report: {kind}. "
        f"Run {meta['started']}, wall time {meta['wall_s']:.0f} s, pytest exit code "
        f"{meta['exit_code']}: {counts['passed']} passed, {counts['xfailed']} xfailed (known bugs, "
        f"below), {counts['failed']} failed, {counts['skipped']} skipped."
    )
    w("")
    w("| machine | |")
    w("|---|---|")
    for key in ("cpu", "memory", "os", "python", "nix", "hypothesis", "store", "commit"):
        w(f"| {key} | {cell(facts.get(key))} |")
    w("")
    w(
        "Each test has the `fault` marker. The full-size variants (300 paths x 10 kills, "
        "30 s of downtime, 10,000 fuzz cases, a 300 MB answer, 150 concurrent hooks) are also "
        "marked `slow` and skipped unless `HOOKD_SLOW=1`; plain `pytest` (CI) runs the fast "
        "variants (60 paths x 3 kills, 5 s of downtime, 2,000 fuzz cases, a 50 MB answer, 50 "
        "hooks) and every other scenario."
    )
    w("")
    w("Columns:")
    w("")
    w(
        "- **lost**: store paths in the closure of an accepted path that are not on the server at "
        "the end. Checked against the server's own objects, not against hookd's bookkeeping."
    )
    w(
        "- **duplicate uploads**: `upload-path` requests answered 200 for a store path that was "
        "already uploaded (the server deduplicates them, but they cost bandwidth)."
    )
    w(
        "- **max requests/min while failing**: the most requests in any 60 s window while the "
        "server was unreachable or the paths were parked (for a shorter window, all of them), "
        "with the window's length."
    )
    w(
        "- **time to drain**: from the end of the fault (server back, token restored, restart) to "
        "the last path pushed."
    )
    w(
        "- **recovered without restart**: whether the same daemon process came back by itself "
        "once the fault ended (for the issue 6 scenarios: after the stated action), and how "
        "long from the end of the fault to the last path pushed (each scenario's description "
        "says what it times)."
    )
    w(
        "- **peak RSS**: the highest VmHWM of the daemon processes the scenario started, read "
        "from `/proc/PID/status` just before each was stopped (the goal is under 80 MB)."
    )
    w("")
    w("## Recovery without a restart")
    w("")
    w(
        "One row per scenario and variant; the issue 9 column names the bug or weakness of "
        "issue 9 that the row is the evidence for."
    )
    w("")
    w("| fault | issue 9 | variant | recovered without restart | paths lost | peak RSS | result |")
    w("|---|---|---|---|---|---|---|")
    for name in order:
        for row in by[name]:
            w(
                f"| {cell(name)} | {cell(ISSUE9.get(name, '—'))} | {row['variant']} | "
                f"{cell(recovered(row))} | {cell(row.get('lost'))} | {rss(row)} | "
                f"{cell(row.get('result'))} |"
            )
    w("")
    if skipped:
        w("Skipped in this run:")
        w("")
        for name, reason in skipped:
            w(f"- `{name}`: {cell(reason)}")
        w("")
    w("## Summary")
    w("")
    w(
        "| scenario | variant | paths | lost | duplicate uploads | max requests/min while "
        "failing | time to drain | peak RSS | result |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    for name in order:
        for row in by[name]:
            w(
                f"| {cell(name)} | {row['variant']} | {cell(row.get('paths'))} | "
                f"{cell(row.get('lost'))} | {cell(row.get('duplicate_uploads'))} | "
                f"{cell(rate(row))} | {drain(row)} | {rss(row)} | {cell(row.get('result'))} |"
            )
    w("")
    for i, name in enumerate(order, 1):
        w(f"## {i}. {name[0].upper() + name[1:]}")
        w("")
        if name in SCENARIOS:
            w(SCENARIOS[name])
            w("")
        if any("recovered" in row for row in by[name]):
            w(
                "| variant | paths | faults injected | lost | recovered without restart | "
                "peak RSS | result |"
            )
            w("|---|---|---|---|---|---|---|")
            for row in by[name]:
                w(
                    f"| {row['variant']} | {cell(row.get('paths'))} | "
                    f"{cell(row.get('faults'))} | {cell(row.get('lost'))} | "
                    f"{cell(recovered(row))} | {rss(row)} | {cell(row.get('result'))} |"
                )
        else:
            w(
                "| variant | paths | faults injected | lost | duplicate uploads | max "
                "requests/min while failing | time to drain | result |"
            )
            w("|---|---|---|---|---|---|---|---|")
            for row in by[name]:
                w(
                    f"| {row['variant']} | {cell(row.get('paths'))} | "
                    f"{cell(row.get('faults'))} | {cell(row.get('lost'))} | "
                    f"{cell(row.get('duplicate_uploads'))} | {cell(rate(row))} | {drain(row)} | "
                    f"{cell(row.get('result'))} |"
                )
        w("")
        for row in by[name]:
            extra = details(row)
            if extra:
                w(f"Details ({row['variant']}): {extra}")
                w("")
        shown = next((r for r in by[name] if r["variant"] == "full"), by[name][0])
        message = shown.get("message")
        if message:
            where = shown.get("seen_in") or "`hookd status`"
            w(f"What the user sees ({shown['variant']} run, in {where}):")
            w("")
            for line in [message] if isinstance(message, str) else message:
                w(f"- `{shorten(line)}`")
            w("")
    w("## Known bugs found by this suite")
    w("")
    w(
        "Each is a test marked `xfail(strict=True)`: it fails today for the stated reason and "
        "will turn the suite red (XPASS) once the bug is fixed, so the marker gets removed."
    )
    w("")
    if xfails:
        w("| test | what goes wrong |")
        w("|---|---|")
        for name, reason in xfails:
            w(f"| `{name}` | {cell(reason)} |")
    else:
        w("None.")
    w("")
    if failures:
        w("## Failures in this run")
        w("")
        for name, message in failures:
            w(f"- `{name}`: {cell(message)}")
        w("")
    w("## Observations")
    w("")
    w(
        "- Fixed after this suite's first run, and measured by the run above: the circuit "
        "breaker is half-open after its cool-down (one failed probe re-opens it, for twice as "
        "long), so an outage costs about one request per cool-down once the breaker has opened; "
        "an auth failure (401/403, missing token file) or a missing cache parks every pending "
        "path of that target at the first such answer, not batch by batch; the daemon listens "
        "with a backlog of 1024 and the hook retries `connect()` on EAGAIN within its budget; "
        "a deleted cache makes the daemon forget what that cache was known to hold (a recreated "
        "cache gets whole closures again); spool files written while the daemon starts are "
        "picked up by a rescan at most 5 s later; and `NaN`/`Infinity` in a request are refused."
    )
    w(
        "- `hookd backfill` reads `nix path-info --json --all` whole: on this machine's store "
        "(tens of thousands of paths) it takes the daemon's RSS well past the 80 MB goal (the "
        "`state_dir full` row measures it before and after). Streaming that output, or asking "
        "the store only for paths registered since the given time, would bound it; not done "
        "here."
    )
    w(
        "- Under random failures the worker pushes one batch at a time, so a path that is "
        "retrying (up to `retry_attempts` attempts with in-process backoff) holds up the next "
        "batch; that, not the outage itself, dominates the drain time of the full downtime run."
    )
    w("")
    w("## Compared with the peers")
    w("")
    w(
        "What the other uploaders do in the same situations, from the project's survey of the "
        'peers (`docs/peers.md`; section and issue numbers are the ones it cites, "ran" marks '
        "behaviour it measured; zhaofengli/attic#166 is from `docs/attic-api.md` §10), next to what "
        "this run measured for hookd."
    )
    w("")
    w(
        "| situation | queued-build-hook | cachix | attic watch-store / push | niks3-hook | "
        "hookd (this run) |"
    )
    w("|---|---|---|---|---|---|")
    for situation, qbh, cachix, attic, niks3, ours in PEERS:
        w(
            f"| {situation} | {cell(qbh)} | {cell(cachix)} | {cell(attic)} | {cell(niks3)} | "
            f"{cell(ours_summary(ours, by))} |"
        )
    w("")
    w("## Left out")
    w("")
    w(
        "- A full `nix-store --gc` (it would delete every unrooted path on the machine, other "
        "test runs' included); GC is exercised with `nix-store --delete` per path, which uses "
        "the same liveness check."
    )
    w(
        "- Power loss (the queue runs SQLite with `synchronous=FULL` and the hook fsyncs spool "
        "files, but nothing here cuts power). A server that accepts connections and never "
        "answers at all is covered by the same total deadline as the trickling one, but not "
        "run separately."
    )
    w(
        "- Faults without a recovery time are checked at unit level, not here: the file modes "
        "(umask 077), supervision of crashed components and the systemd watchdog "
        "(`tests/test_daemon.py`), a caller giving up on a locked queue "
        "(`tests/test_queue_faults.py`)."
    )
    w(
        "- Real atticd: the server is the Attic-compatible test server; multi-user Nix with a "
        "nix-daemon is covered by `tests/test_e2e.py`, not here."
    )
    w("")
    text = "\n".join(lines)
    dest.write_text(text)
    return text


def shorten(text: str, limit: int = 330) -> str:
    # pytest's temporary directories, spelled in pieces (a committed file names no machine path)
    text = re.sub(r"/tmp/pytest" r"-of-[^/]+/pytest-\d+/[^/ ]+/", "…/", str(text))
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[:limit] + " …"


def details(row: dict[str, Any]) -> str:
    parts = []
    if "acknowledged" in row:
        parts.append(
            f"{row['acknowledged']} hooks acknowledged, {row['spooled']} spooled, "
            f"{row['accepted']} accepted in all"
        )
    if "kills" in row:
        marks = ", ".join(f"{k['hooks_done']}/{k['uploaded']}" for k in row["kills"])
        parts.append(f"hooks done / paths uploaded at each kill: {marks}")
    if "backoff" in row:
        parts.append(
            "backoff " + ", ".join(f"`{k}` {v}" for k, v in sorted(row["backoff"].items()))
        )
    if "exit_s" in row:
        parts.append(f"exit {row['exit_s']} s after SIGTERM")
    if "hook_s" in row:
        h = row["hook_s"]
        parts.append(
            f"{row.get('spooled')} hooks spooled; hook time median {h['median']} s, p95 "
            f"{h['p95']} s, max {h['max']} s"
        )
    if "rss_mib" in row:
        r = row["rss_mib"]
        parts.append(
            f"RSS before {r['before']} MiB, during {r['during']} MiB, after {r['after']} MiB"
        )
    if "peak_rss_before_backfill_mib" in row:
        parts.append(
            f"{row.get('not_handed_over')} hooks could not hand over; peak RSS "
            f"{row['peak_rss_before_backfill_mib']} MiB up to `hookd backfill`, "
            f"{row.get('peak_rss_mib')} MiB after it (see Observations)"
        )
    if "first_ack_after_s" in row:
        parts.append(f"first hook acknowledged {row['first_ack_after_s']} s after the release")
    if "replies" in row:
        replies = ", ".join(f"{k} {v}" for k, v in sorted(row["replies"].items()))
        parts.append(f"{row.get('cases')} requests in {row.get('elapsed_s')} s; replies: {replies}")
    return "; ".join(parts)


def pick(by: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any] | None:
    rows = by.get(name, [])
    return next((r for r in rows if r["variant"] == "full"), rows[0] if rows else None)


def ours_summary(key: str, by: dict[str, list[dict[str, Any]]]) -> str:
    """The hookd cell of a row of the comparison, from this run's numbers."""
    kill = pick(by, "kill -9 at random moments")
    down = pick(by, "server down mid-push + random 5xx/resets")
    rot = pick(by, "token rotated mid-run")
    removed = pick(by, "token file removed")
    deleted = pick(by, "cache deleted on the server")
    gc = pick(by, "garbage collection while queued")
    term = pick(by, "SIGTERM during an upload (cut-off)")
    fuzz = pick(by, "fuzzing the live daemon socket")
    try:
        if key == "kill" and kill:
            return (
                f"{kill['paths']} paths, {len(kill['kills'])} x kill -9 at random moments: "
                f"{kill['lost']} lost ({kill['result']})"
            )
        if key == "down" and kill:
            return (
                f"{kill['spooled']} hooks found no daemon: each spooled its request and exited 0; "
                f"{kill['lost']} lost ({kill['result']})"
            )
        if key == "concurrent" and kill:
            return (
                f"8 hooks at a time, {kill['paths']} in all, through the kills: "
                f"{kill['lost']} lost ({kill['result']})"
            )
        if key == "server" and down:
            return (
                f"{down['paths']} paths, {down.get('failing_window_s')} s down + 30 % 5xx + "
                f"10 % resets: {down['lost']} lost, {down['duplicate_uploads']} duplicate "
                f"uploads, ≤ {down['max_requests_per_min_failing']} failed attempts per minute "
                f"while down ({down['result']})"
            )
        if key == "rotation" and rot:
            return (
                "no restart: requests after the rotation carry the new token; an expired token "
                f"parks the paths with its expiry date, ≤ {rot['max_requests_per_min_failing']} "
                f"requests while parked; {rot['lost']} lost ({rot['result']})"
            )
        if key == "auth" and removed and deleted:
            return (
                "parked with the missing file / the missing cache named and the fix; "
                f"{removed['max_requests_per_min_failing']} and "
                f"{deleted['max_requests_per_min_failing']} requests while parked; survive a "
                f"restart; {removed['lost'] + deleted['lost']} lost ({removed['result']}, "
                f"{deleted['result']})"
            )
        if key == "gc" and gc:
            return (
                "queued paths and their dependencies pinned by GC roots (`still alive`), "
                f"released once pushed; {gc['lost']} lost ({gc['result']})"
            )
        if key == "sigterm" and term:
            return (
                f"exits {term.get('exit_s')} s after SIGTERM (stop_timeout 2 s); the cut-off "
                f"upload stays queued and lands after the restart; {term['lost']} lost "
                f"({term['result']})"
            )
        if key == "fuzz" and fuzz:
            return f"{fuzz.get('cases')} requests, every line answered, no crash ({fuzz['result']})"
    except (KeyError, TypeError):
        pass
    return "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--render", type=Path, help="only render this run directory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument(
        "--fast", action="store_true", help="the fast variants only (what CI runs); says so"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args(argv)
    if args.render:
        run_dir = args.render
        rc = 0
    else:
        run_dir = ROOT / "bench" / "out" / time.strftime("faults-%Y%m%dT%H%M%SZ", time.gmtime())
        rc = run(run_dir, args.pytest_args, slow=not args.fast)
    render(run_dir, args.out)
    print(f"{args.out} written from {run_dir} (pytest exit code {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
