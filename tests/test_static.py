"""The code stays formatted, lint-clean and `mypy --strict`-clean (pyproject.toml configures both)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.skipif(
    not (BIN / "ruff").exists(), reason="ruff missing: scripts/setup.sh installs the test extra"
)
def test_ruff_lint_and_format() -> None:
    lint = run(str(BIN / "ruff"), "check", "hookd", "tests", "bench")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(str(BIN / "ruff"), "format", "--check", "hookd", "tests", "bench")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.skipif(
    not (BIN / "mypy").exists(), reason="mypy missing: scripts/setup.sh installs the test extra"
)
def test_mypy_strict_on_the_package() -> None:
    proc = run(str(BIN / "mypy"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(
    not (BIN / "mypy").exists(), reason="mypy missing: scripts/setup.sh installs the test extra"
)
def test_mypy_strict_for_macos() -> None:
    # The nix-darwin and home-manager modules run the daemon on macOS: Linux-only APIs
    # (socket.SO_PEERCRED, os.sched_*, …) must not be used unguarded.
    proc = run(str(BIN / "mypy"), "--strict", "--platform", "darwin", "hookd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
