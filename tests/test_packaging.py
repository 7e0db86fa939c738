"""hookd installs into a clean venv with only its declared dependencies, and nothing it runs looks
for a module that is not there.

Third-party code often wraps an optional import in ``try: import x / except ImportError``; when
``x`` is something hookd needs, the failure is silent and can repeat on every call (httpcore's
``import sniffio`` ran about six times per request and scanned ``sys.path`` each time, issue 14).
So the probe below records every import that no finder could satisfy, first while importing all
of hookd's modules and the hook, then while an ``httpx.AsyncClient`` (hookd's HTTP client) makes
requests to a loopback server. Import-time misses must be known optional extras (listed with their
reason); a miss while requests run is always a failure: it is per-request cost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Optional extras that third-party code probes once at import time; none is hookd's business.
# (Standard-library modules of other platforms, such as `nt` or `winreg`, are ignored too.)
OPTIONAL = {
    "rich": "structlog: pretty tracebacks in the console renderer",
    "colorama": "structlog: Windows console colours",
    "better_exceptions": "structlog: alternative exception formatter",
    "greenlet": "structlog: greenlet-local context",
    "twisted": "structlog: Twisted integration",
    "trio": "httpcore: trio backend",
    "h2": "httpcore: HTTP/2 (httpx[http2])",
    "socksio": "httpcore: SOCKS proxies (httpx[socks])",
    "brotli": "httpx: brotli decoding",
    "brotlicffi": "httpx: brotli decoding",
    "zstandard": "httpx: zstd decoding",
    "click": "httpx: its command-line client",
    "bcrypt": "cryptography: bcrypt-protected SSH keys",
    "org": "a Jython probe (org.python.core)",
    "snappy": "prometheus_client: snappy compression of Pushgateway pushes (hookd never pushes)",
}

PROBE = r"""
import asyncio, http.server, importlib, json, pkgutil, sys, threading, traceback

phase = ["import"]
misses = []

class Recorder:
    # appended last to sys.meta_path: consulted only when no other finder found the module
    def find_spec(self, name, path=None, target=None):
        where = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                 if "importlib" not in f.filename and "<frozen" not in f.filename]
        misses.append({"name": name, "phase": phase[0], "where": where[-1:] })
        return None

sys.meta_path.append(Recorder())

import hookd
mods = []
for info in pkgutil.walk_packages(hookd.__path__, "hookd."):
    importlib.import_module(info.name)
    mods.append(info.name)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=srv.serve_forever, daemon=True).start()

async def requests():
    import httpx
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.server_port}") as client:
        (await client.get("/warm")).raise_for_status()  # first use may import lazily
        phase[0] = "requests"
        for _ in range(5):
            (await client.get("/x")).raise_for_status()

asyncio.run(requests())
srv.shutdown()
print(json.dumps({"modules": mods, "misses": misses, "stdlib": sorted(sys.stdlib_module_names)}))
"""

INDEX_DOWN = (
    "No matching distribution",
    "Could not find a version",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with hookd installed as a user would: a wheel built from this tree, its
    dependencies from the package index this machine is configured for (pip's own config)."""
    where = tmp_path_factory.mktemp("clean-venv") / "venv"
    # a copy of what the wheel is built from: pip builds in the source tree (build/, egg-info)
    src = where.parent / "src"
    shutil.copytree(ROOT / "hookd", src / "hookd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    venv.EnvBuilder(with_pip=True, symlinks=True).create(where)
    py = where / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-input", str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=where.parent,
    )
    if proc.returncode != 0:
        if any(s in proc.stderr for s in INDEX_DOWN):
            pytest.skip(
                "the package index is unreachable (pip's configured index; set PIP_INDEX_URL "
                f"or connect): {proc.stderr.strip().splitlines()[-1][:300]}"
            )
        pytest.fail(f"pip install of hookd failed:\n{proc.stderr[-3000:]}")
    return py


def test_declared_dependencies_are_consistent(clean_venv: Path) -> None:
    proc = subprocess.run(
        [str(clean_venv), "-m", "pip", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_import_surprises_in_a_clean_install(clean_venv: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(clean_venv), "-I", "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # not the repository: the installed package, not the source tree
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "hookd.hook" in result["modules"] and "hookd.cli" in result["modules"]
    assert any(m.startswith("hookd.daemon") for m in result["modules"])
    misses = result["misses"]
    per_request = [m for m in misses if m["phase"] == "requests"]
    assert not per_request, (
        "imports that fail on every HTTP request (declare the module in pyproject.toml and "
        f"nix/package.nix): {per_request}"
    )
    ignored = set(OPTIONAL) | set(result["stdlib"])
    unknown = [m for m in misses if m["name"].split(".")[0] not in ignored]
    assert not unknown, (
        "imports that failed while importing hookd and are not known optional extras: declare "
        f"what hookd needs, or list a true optional extra in OPTIONAL with its reason: {unknown}"
    )


def test_the_hook_imports_only_the_standard_library(clean_venv: Path, tmp_path: Path) -> None:
    """hookd/hook.py runs as `python3 -I -S`: nothing outside the standard library may load."""
    code = (
        "import sys, json; before = set(sys.modules); import hookd.hook; "
        "new = sorted(set(sys.modules) - before); "
        "print(json.dumps([m for m in new if m.split('.')[0] not in sys.stdlib_module_names "
        "and m.split('.')[0] != 'hookd']))"
    )
    proc = subprocess.run(
        [str(clean_venv), "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []


if sys.platform != "linux":  # pragma: no cover - the venv layout above is POSIX
    pytestmark = pytest.mark.skip(reason="POSIX venv layout")


def test_the_launcher_runs_the_hook_from_bytecode(clean_venv: Path, tmp_path: Path) -> None:
    """hookrun.py as pip installed it: `python -I -S hookrun.py` loads hook.py from the bytecode
    pip compiled (no compile per build) and behaves as the hook (nothing to queue: exit 0)."""
    site = subprocess.run(
        [str(clean_venv), "-I", "-c", "import hookd, os; print(os.path.dirname(hookd.__file__))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    launcher = Path(site) / "hookrun.py"
    assert launcher.is_file()
    proc = subprocess.run(
        [str(clean_venv), "-I", "-S", "-v", str(launcher)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DRV_PATH": "", "OUT_PATHS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to queue" in proc.stderr
    pyc = [line for line in proc.stderr.splitlines() if line.startswith("# code object from")]
    assert any("__pycache__/hook." in line for line in pyc), proc.stderr[-3000:]
    # and nothing from the package's __init__ (the launcher imports hook.py on its own)
    assert not any("__pycache__/__init__." in line and site in line for line in pyc)
