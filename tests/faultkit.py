"""What the fault suites share: the report row, the daemon set-up and the measurements.

tests/test_faults.py (issue 6: kills, outages, tokens, GC, SIGTERM, socket fuzz) and
tests/test_recovery.py (issue 9: faults the daemon must recover from without a restart) both
write their rows through :func:`scenario`; ``bench/faults_report.py`` renders them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.attic_server import AtticTestServer
from tests.conftest import (
    HOOKD,
    HOOKD_HOOK,
    STARTED,
    HookdProcess,
    nix_env,
    requisites,
    write_token,
)

SLOW = os.environ.get("HOOKD_SLOW") == "1"
REPORT = os.environ.get("HOOKD_FAULTS_REPORT")
UPLOAD = "/_api/v1/upload-path"
CACHE = "team"
TARGET = f"attic:prod/{CACHE}"

slow_only = pytest.mark.skipif(not SLOW, reason="slow fault run: HOOKD_SLOW=1 pytest -m fault")


def full(*values: Any, id: str = "full") -> Any:
    """A full-size variant: marked slow, and skipped unless HOOKD_SLOW=1."""
    return pytest.param(*values, id=id, marks=[pytest.mark.slow, slow_only])


# -- the report ---------------------------------------------------------------------------


@contextlib.contextmanager
def scenario(name: str, variant: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """One row of the report; the result is 'pass' only if the body (its asserts) completed."""
    row: dict[str, Any] = {"scenario": name, "variant": variant, **fields}
    first_daemon = len(STARTED)
    start = time.monotonic()
    try:
        yield row
        row["result"] = "pass"
    except BaseException as e:
        first = (str(e).strip().splitlines() or [""])[0]
        row["result"] = f"FAIL: {type(e).__name__}: {first[:300]}"
        raise
    finally:
        row["duration_s"] = round(time.monotonic() - start, 1)
        # Peak RSS (VmHWM) of the daemon processes this scenario started, unless it measured
        # its own; a daemon the scenario stopped was measured just before its signal.
        peaks = [h.peak_rss() for h in STARTED[first_daemon:]]
        if "peak_rss_mib" not in row and any(peaks):
            row["peak_rss_mib"] = round(max(peaks) / 1024, 1)
        if REPORT:
            with open(REPORT, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")


# -- helpers ------------------------------------------------------------------------------


def outs_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stdout.split() if line.startswith("/nix/store/")]


def hash_of(path: str) -> str:
    return Path(path).name.split("-", 1)[0]


def rw_token(srv: AtticTestServer, sub: str = "hookd") -> str:
    # valid for 90 days: `hookd status` reports a token that expires within 7 days
    return srv.make_token({CACHE: {"r": 1, "w": 1}}, sub=sub, validity=90 * 86400)


def attic_hookd(
    tmp_path: Path, srv: AtticTestServer, token: str, *, endpoint: str | None = None, **extra: Any
) -> HookdProcess:
    # Token files live in their own directory: the token watcher watches its parent directory,
    # and the work directory also holds the daemon's log.
    token_file = write_token(tmp_path / "secrets" / "prod.token", token)
    settings: dict[str, Any] = {
        "servers": {"prod": {"endpoint": endpoint or srv.url, "token_file": str(token_file)}},
        "targets": [{"server": "prod", "cache": CACHE}],
    }
    settings.update(extra)
    return HookdProcess(tmp_path, settings)


def target_status(hookd: HookdProcess) -> dict[str, Any]:
    return next(t for t in hookd.status()["targets"] if t["id"] == TARGET)


def status_text(hookd: HookdProcess) -> str:
    """What `hookd status` prints (the user-visible message)."""
    out = subprocess.run(
        [HOOKD, "status"],
        env=nix_env(HOOKD_CONFIG=str(hookd.config_path)),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


def message_lines(text: str, limit: int = 3) -> list[str]:
    """The problem lines of `hookd status` output (long ones shortened)."""
    keep = ("last error:", "parked:", "failed:", "pending:", "token ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(keep)]
    return [line if len(line) <= 400 else line[:400] + " …" for line in lines[:limit]]


def missing_on_server(srv: AtticTestServer, roots: list[str]) -> list[str]:
    """Paths of the closures of ``roots`` that the server's cache does not hold."""
    if not roots:
        return []
    have = set(srv.objects(CACHE))
    return sorted(p for p in requisites(roots) if hash_of(p) not in have)


def duplicate_uploads(srv: AtticTestServer) -> int:
    """Successful upload-path answers beyond the first, per store path hash."""
    counts = collections.Counter(h for cache, h, _ in list(srv.uploads) if cache == CACHE)
    return sum(n - 1 for n in counts.values() if n > 1)


def max_per_minute(times: list[float], window: float = 60.0) -> int:
    """The most events in any ``window``-second interval."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def server_request_times(srv: AtticTestServer, start: float, end: float) -> list[float]:
    return [r.time for r in list(srv.requests) if start <= r.time <= end]


def parked_row(
    row: dict[str, Any],
    srv: AtticTestServer,
    *,
    paths: int,
    faults: str,
    lost: list[str],
    failing: tuple[float, float],
    drained: float,
    seen: str,
) -> None:
    """The report row of a scenario whose failing window ends when the user fixes things."""
    start, end = failing
    row.update(
        paths=paths,
        faults=faults,
        lost=len(lost),
        duplicate_uploads=duplicate_uploads(srv),
        max_requests_per_min_failing=max_per_minute(server_request_times(srv, start, end)),
        failing_window_s=round(end - start, 1),
        time_to_drain_s=round(drained - end, 1),
        message=message_lines(seen),
    )


def attempt_times(hookd: HookdProcess, start: float, end: float) -> list[float]:
    """Request attempts that failed, from the daemon's debug log (server down: nothing to count
    on the server side). The target logs ``attic.retry`` once per failed attempt, the last of
    the in-process attempts included."""
    times = []
    for e in hookd.log_events():
        if e.get("event") == "attic.retry" and "timestamp" in e:
            t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            if start <= t <= end:
                times.append(t)
    return times


def enqueue(hookd: HookdProcess, paths: list[str], chunk: int = 25) -> None:
    for i in range(0, len(paths), chunk):
        reply = hookd.client.call({"op": "enqueue", "out_paths": paths[i : i + chunk]})
        assert reply["ok"], reply


def cli(hookd: HookdProcess, *args: str) -> str:
    out = subprocess.run(
        [HOOKD, *args],
        env=nix_env(HOOKD_CONFIG=str(hookd.config_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def problems_of(hookd: HookdProcess) -> list[dict[str, Any]]:
    return list(hookd.status()["problems"])


def nix_delete(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix-store", "--delete", path], capture_output=True, text=True, timeout=60, check=False
    )


def spool_via_hook(hookd: HookdProcess, out: str) -> None:
    """Run the real hook while the daemon is down: it spools the request."""
    proc = subprocess.run(
        [HOOKD_HOOK, "--socket", str(hookd.socket), "--spool", str(hookd.spool)],
        env=nix_env(OUT_PATHS=out),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "spooled to" in proc.stderr, proc.stderr
