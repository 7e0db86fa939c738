"""Where the daemon's CPU goes while it pushes a closure of tiny paths (issue 14).

    .venv/bin/python -m bench.profile --paths 10000 --tool cprofile   # deterministic, pure Python
    .venv/bin/python -m bench.profile --paths 10000 --tool py-spy     # sampling (pip install py-spy)
    .venv/bin/python -m bench.profile --hookd bench/out/baseline-<commit>/venv/bin/hookd ...

One fresh push (fresh server, fresh daemon) of a ``--paths`` closure of ~0.5 KiB NARs to the
Attic-compatible test server on loopback, the daemon run under the profiler. Writes into
``bench/out/profile-<stamp>/``: ``daemon.prof`` + ``cprofile.txt`` (pstats, by own time and by
cumulative time), or ``py-spy.txt`` (collapsed stacks, for flamegraph tools) and ``py-spy-summary.txt`` (own and inclusive share per function, and per area: HTTP client, logging,
queue/SQLite, JSON, NAR, asyncio). Run as root (it builds into the root Nix store).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.scale import PAD

# Areas of the daemon's work, matched against a frame's file path or function (first match).
AREAS = [
    ("failed imports (importlib scanning sys.path)", ("importlib._bootstrap", "(importlib/")),
    ("HTTP client (httpx/httpcore/h11/anyio)", ("(httpx/", "(httpcore/", "(h11/", "(anyio/")),
    ("retry wrapper (tenacity)", ("(tenacity/",)),
    ("logging (structlog/logging)", ("(structlog/", "(logging/", "hookd/logs.py")),
    ("queue / SQLite (hookd/queue.py)", ("hookd/queue.py", "(sqlite3/")),
    ("JSON", ("(json/",)),
    ("NAR / nix subprocesses (hookd/nar.py, hookd/nix.py)", ("hookd/nar.py", "hookd/nix.py")),
    (
        "Attic client's own code (hookd/targets/attic.py, hookd/attic/)",
        ("attic.py", "hookd/attic/"),
    ),
    ("pusher / daemon", ("hookd/pusher.py", "hookd/daemon")),
    ("asyncio event loop and sockets", ("(asyncio/", "(selectors.py", "(socket.py", "(ssl.py")),
]
LIBRARIES = 7  # the first seven areas win over hookd's own frames that called them


def area_index(frame: str) -> int | None:
    for i, (_, keys) in enumerate(AREAS):
        if any(k in frame for k in keys):
            return i
    return None


def summarise_collapsed(text: str, top: int = 30) -> str:
    """Own and inclusive shares per function and per area from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        # the sample's area: the first library area (AREAS[:LIBRARIES]) any of its frames is in,
        # so a request's time is the HTTP client's even though the pusher called it; else the
        # area of the frame nearest the leaf (hookd's own code, or the event loop itself)
        idx = [area_index(f) for f in frames]
        hit = min((i for i in idx if i is not None and i < LIBRARIES), default=None)
        if hit is None:
            hit = next((i for i in reversed(idx) if i is not None), None)
        areas[AREAS[hit][0] if hit is not None else "other"] += n
    out = io.StringIO()
    w = out.write
    w(f"{total} samples (threads holding the GIL)\n\nby area (most specific first):\n")
    for name, n in areas.most_common():
        w(f"  {100 * n / total:5.1f}%  {name}\n")
    w(f"\nown time, top {top}:\n")
    for f, n in own.most_common(top):
        w(f"  {100 * n / total:5.1f}%  {f}\n")
    w(f"\ninclusive time, top {top}:\n")
    for f, n in incl.most_common(top):
        w(f"  {100 * n / total:5.1f}%  {f}\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    ap.add_argument("--paths", type=int, default=10_000, help="closure size (default 10000)")
    ap.add_argument("--tool", choices=["cprofile", "py-spy"], default="cprofile")
    ap.add_argument("--hookd", default=str(h.HOOKD), help="the hookd executable (its venv runs)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--keep-store", action="store_true")
    ap.add_argument("--summarise", metavar="RAW", help="only summarise an existing py-spy.txt")
    args = ap.parse_args(argv)
    if args.summarise:
        print(summarise_collapsed(Path(args.summarise).read_text()))
        return 0
    if os.geteuid() != 0:
        ap.error("run as root: the bench builds into the single-user root Nix store")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = h.ROOT / "bench" / "out" / f"profile-{stamp}"
    out.mkdir(parents=True)
    h.GC_ROOTS = out / "gcroots"
    nonce = f"profile-{stamp}-{uuid.uuid4().hex[:6]}"
    hookd = Path(args.hookd)
    python = hookd.parent / "python"
    h.log(f"profile: building a {args.paths}-path closure of ~0.5 KiB NARs")
    root = h.build(nonce, "scaleRoot", max_jobs=2, files=args.paths - 1, pad=PAD)[0]
    paths = h.requisites([root])
    attic = h.Attic(out)
    d = h.Daemon(out / "daemon", attic.daemon_settings())
    spy: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {}
    try:
        # -P: not the current directory first on sys.path (the checkout's hookd), the venv's
        d.command = [str(hookd), *d.command[1:]]
        if args.tool == "cprofile":
            d.command = [
                str(python),
                "-P",
                "-m",
                "cProfile",
                "-o",
                str(out / "daemon.prof"),
                "-m",
                "hookd.cli",
                "daemon",
                "--config",
                str(d.config_path),
            ]
        d.start()
        if args.tool == "py-spy":
            exe = shutil.which("py-spy", path=str(h.VENV_BIN)) or shutil.which("py-spy")
            if not exe:
                raise SystemExit("py-spy missing: .venv/bin/pip install py-spy")
            spy = subprocess.Popen(
                [
                    *(exe, "record", "--pid", str(d.pid), "--rate", str(args.rate)),
                    # --gil: only the thread running Python counts (idle pool threads do not)
                    *("--gil", "--format", "raw", "--output", str(out / "py-spy.txt")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(out / "py-spy.log", "wb"),  # the child owns it
            )
            # py-spy attaches within milliseconds; a push of thousands of paths takes seconds
        attic.clear()
        cpu0 = d.cpu()
        t0 = time.perf_counter()
        d.client.enqueue([root])
        d.wait_drained(3600)
        result["seconds"] = time.perf_counter() - t0
        cpu1 = d.cpu()
        result["daemon_cpu_s"] = cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]
        result["on_server"] = attic.objects()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(120)
        d.stop()
        attic.close()
        if not args.keep_store:
            h.release_roots()
            h.delete_paths(paths)
    n = len(paths)
    head = (
        f"{n} paths pushed in {result['seconds']:.2f} s ({n / result['seconds']:.0f} paths/s), "
        f"daemon CPU {result['daemon_cpu_s']:.2f} s = {1000 * result['daemon_cpu_s'] / n:.2f} ms "
        f"per path (under the profiler), {result['on_server']} on the server; hookd: {hookd}\n"
    )
    if args.tool == "cprofile":
        buf = io.StringIO()
        st = pstats.Stats(str(out / "daemon.prof"), stream=buf)
        st.sort_stats("tottime").print_stats(30)
        st.sort_stats("cumulative").print_stats(40)
        (out / "cprofile.txt").write_text(head + buf.getvalue())
        report = out / "cprofile.txt"
    else:
        raw = (out / "py-spy.txt").read_text()
        (out / "py-spy-summary.txt").write_text(head + summarise_collapsed(raw))
        report = out / "py-spy-summary.txt"
    print(head + f"report: {report.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
