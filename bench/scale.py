"""Figure 7 — scale: per-path cost on closures of thousands of tiny paths, the baseline commit
(today's main) and the current tree side by side in one run.

- tiny: a closure of ``tiny_paths`` ~0.5 KiB NARs: daemon CPU per path and paths/s;
- mixed: fresh pushes of ``scale_small`` and ``scale_paths`` paths (mostly tiny, 0.5 % of them
  1 to 4 MiB blobs): wall time, paths/s, the scaling exponent between the two sizes, and the
  daemon's peak RSS for the large one.

The baseline is ``git archive <commit>`` unpacked under ``bench/out/baseline-<commit>/`` with a
venv of its own (``pip install`` of that tree: its declared dependencies, nothing more); it is
kept between runs. Every push is a fresh daemon (empty queue) and a fresh server; the variants
alternate round by round.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.push import push_once

BASELINE = "e43db4e"  # main when issue 14 was filed
PAD = 400  # bytes of text: a NAR of ~0.5 KiB


def baseline_install(commit: str) -> tuple[Path, str]:
    """(the baseline's `hookd` executable, the full commit id), built once and kept."""
    full = subprocess.run(
        ["git", "-C", str(h.ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    base = h.ROOT / "bench" / "out" / f"baseline-{full[:12]}"
    exe = base / "venv" / "bin" / "hookd"
    stamp = base / ".installed"
    if stamp.exists() and exe.exists():
        return exe, full
    shutil.rmtree(base, ignore_errors=True)
    src = base / "src"
    src.mkdir(parents=True)
    h.log(f"scale: installing the baseline {full[:12]} into {base}")
    archive = subprocess.run(
        ["git", "-C", str(h.ROOT), "archive", "--format=tar", full],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=120)
    venv.EnvBuilder(with_pip=True, symlinks=True).create(base / "venv")
    pip = subprocess.run(
        [str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=base,
    )
    if pip.returncode != 0:
        raise h.BenchError(f"baseline install failed:\n{pip.stderr[-2000:]}")
    stamp.write_text(full + "\n")
    return exe, full


def warm(paths: list[str]) -> None:
    """Read every file of ``paths`` once (one process: `nix-store --dump` per path would spawn
    10,000 of them)."""
    for p in paths:
        for f in [Path(p)] if not Path(p).is_dir() else sorted(Path(p).rglob("*")):
            if f.is_file() and not f.is_symlink():
                with open(f, "rb") as fh:
                    while fh.read(1 << 20):
                        pass


def mixed_blobs(n: int) -> list[int]:
    """KiB sizes of the MiB-sized paths in an ``n``-path closure: 0.5 % of it, 1 to 4 MiB."""
    return [1024 * (1 + i % 4) for i in range(max(1, n // 200))]


def closure(ctx: Any, tag: str, n: int, blobs: list[int]) -> tuple[str, int, int]:
    """(root, paths, NAR bytes) of a fresh closure of ``n`` paths."""
    files = n - 1 - len(blobs)
    root = h.build(
        f"{ctx.nonce}-{tag}", "scaleRoot", max_jobs=2, files=files, pad=PAD, blobsKiB=blobs
    )[0]
    paths = h.requisites([root])
    ctx.created.extend(paths)
    if len(paths) != n:
        raise h.BenchError(f"scale: closure of {len(paths)} paths, expected {n}")
    nar = sum(h.nar_sizes(paths).values())
    warm(paths)  # the page cache, alike for both variants

    return root, len(paths), nar


def row(results: list[dict[str, Any]], paths: int) -> dict[str, Any]:
    sec = [r["seconds"] for r in results]
    cpu = [r["daemon_cpu_s"] for r in results]
    own = [r["daemon_own_cpu_s"] for r in results]
    return {
        "rounds": len(results),
        "seconds": h.summary(sec),
        "paths_per_s": paths / h.median(sec),
        "daemon_cpu_s": h.summary(cpu),
        "daemon_own_cpu_s": h.summary(own),
        "cpu_ms_per_path": h.median(cpu) * 1000 / paths,
        "own_cpu_ms_per_path": h.median(own) * 1000 / paths,
        "cpu_share_of_wall": h.median(cpu) / h.median(sec),
        "vmhwm_mb": max((r["daemon_vmhwm_kib"] or 0) for r in results) * 1024 / 1e6,
        "idle_vmhwm_mb": max((r["daemon_idle_vmhwm_kib"] or 0) for r in results) * 1024 / 1e6,
        "requests": results[0]["requests"],
        "request_breakdown": results[0]["request_breakdown"],
        "server_cpu_s": h.median([r["server_cpu_s"] for r in results]),
    }


def exponent(t_small: float, n_small: int, t_large: float, n_large: int) -> float | None:
    if t_small <= 0 or t_large <= 0 or n_small == n_large:
        return None
    return math.log(t_large / t_small) / math.log(n_large / n_small)


def run(ctx: Any) -> dict[str, Any]:
    base_exe, base_commit = baseline_install(ctx.baseline)
    variants = {"baseline": base_exe, "current": h.HOOKD}
    cases = {
        "tiny": (ctx.tiny_paths, [], ctx.scale_rounds),
        "small": (ctx.scale_small, mixed_blobs(ctx.scale_small), ctx.scale_rounds),
        "large": (ctx.scale_paths, mixed_blobs(ctx.scale_paths), ctx.scale_large_rounds),
    }
    out: dict[str, Any] = {
        "baseline_commit": base_commit,
        "baseline_command": f"bench/out/baseline-{base_commit[:12]}/venv/bin/hookd daemon",
        "current_command": ".venv/bin/hookd daemon",
        "cases": {},
    }
    for case, (n, blobs, rounds) in cases.items():
        h.log(f"scale: building a {n}-path closure ({len(blobs)} MiB-sized paths)")
        root, paths, nar = closure(ctx, case, n, blobs)
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for i in range(rounds):
            for name in h.rotated(list(variants), i):
                h.log(f"scale: {case} {n} paths, {name}, round {i + 1}/{rounds}")
                results[name].append(
                    push_once(ctx, f"scale-{case}-{name}-{i}", [root], paths, hookd=variants[name])
                )
        rows = {v: row(r, paths) for v, r in results.items()}
        out["cases"][case] = {
            "paths": paths,
            "nar_bytes": nar,
            "blobs_kib": blobs,
            "rows": rows,
            "cpu_ratio_current_to_baseline": h.ratio(
                rows["current"]["cpu_ms_per_path"], rows["baseline"]["cpu_ms_per_path"]
            ),
            "speedup_paths_per_s": h.ratio(
                rows["current"]["paths_per_s"], rows["baseline"]["paths_per_s"]
            ),
        }
    small, large = out["cases"]["small"], out["cases"]["large"]
    out["exponent"] = {
        v: {
            "wall": exponent(
                small["rows"][v]["seconds"]["median"],
                small["paths"],
                large["rows"][v]["seconds"]["median"],
                large["paths"],
            ),
            "cpu": exponent(
                small["rows"][v]["daemon_cpu_s"]["median"],
                small["paths"],
                large["rows"][v]["daemon_cpu_s"]["median"],
                large["paths"],
            ),
        }
        for v in variants
    }
    out["python"] = sys.version.split()[0]
    return out
