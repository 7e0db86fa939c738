"""A real nginx in front of a test server, configured as deployments configure it.

Debian's nginx (``scripts/setup.sh`` installs it) runs in the foreground (``daemon off``) with a
configuration generated into a private directory: its own pid file, logs and temp paths, one
loopback port. The proxy settings are those of the NixOS nginx module with
``recommendedProxySettings`` (HTTP/1.1 to the upstream, forwarded headers, 60 s timeouts) and of
the deployments in the seeds (``clientMaxBodySize``), plus ``proxy_request_buffering off`` so
uploads stream to atticd instead of being spooled to disk first. Everything else keeps nginx's
defaults — notably ``large_client_header_buffers 4 8k``, the header limit hookd must stay under.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


needs_nginx = pytest.mark.skipif(
    nginx_binary() is None,
    reason="needs nginx for the reverse-proxy tests: run scripts/setup.sh "
    "(installs Debian's `nginx`), or `apt-get install nginx`",
)

NGINX_DEFAULT_BODY_LIMIT = "1m"  # nginx's own default client_max_body_size
NIXOS_DEFAULT_BODY_LIMIT = "10m"  # services.nginx.clientMaxBodySize's default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """``with Nginx(tmp_path, upstream_port) as proxy: proxy.url`` — stopped on exit."""

    def __init__(
        self,
        workdir: Path,
        upstream_port: int,
        *,
        client_max_body_size: str = NIXOS_DEFAULT_BODY_LIMIT,
        proxy_read_timeout: str = "60s",
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (scripts/setup.sh installs it)")
        self.binary = binary
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.upstream_port = upstream_port
        self.client_max_body_size = client_max_body_size
        self.proxy_read_timeout = proxy_read_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    def config(self) -> str:
        d = self.dir
        # As root the master would hand requests to `nobody` workers, which cannot enter the
        # private temp directories; as anyone else nginx ignores `user` and runs as itself.
        user = "user root root;" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"  {kind}_temp_path {d / (kind + '_temp')};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {d / "nginx.pid"};
error_log {self.error_log} info;
events {{ worker_connections 128; }}
http {{
  access_log {self.access_log};
{temp}
  client_max_body_size {self.client_max_body_size};
  server {{
    listen 127.0.0.1:{self.port};
    server_name attic.test;
    location / {{
      proxy_pass http://127.0.0.1:{self.upstream_port};
      # recommendedProxySettings of the NixOS nginx module
      proxy_redirect off;
      proxy_connect_timeout 60s;
      proxy_send_timeout 60s;
      proxy_read_timeout {self.proxy_read_timeout};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Server $host;
      # uploads stream through instead of being spooled to the proxy's disk first
      proxy_request_buffering off;
    }}
  }}
}}
"""

    def start(self, timeout: float = 120) -> Nginx:
        for _ in range(5):  # another process may take the port between probing and binding
            self.port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self.config())
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.dir), "-c", str(conf), "-e", str(self.error_log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(self.dir / "stderr.log", "ab"),
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.05)  # polling for readiness with a deadline
            if self.proc.poll() is None:
                self.stop()
                raise AssertionError(f"nginx did not listen within {timeout} s:\n{self.log()}")
            if "Address already in use" not in self.log():
                raise AssertionError(f"nginx exited ({self.proc.returncode}):\n{self.log()}")
        raise AssertionError(f"nginx found no free port:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        parts = []
        for f in (self.dir / "stderr.log", self.error_log):
            if f.exists():
                parts.append(f.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def requests(self, status: int | None = None, path_prefix: str = "") -> list[str]:
        """Access-log lines (combined format), optionally only those with ``status``."""
        if not self.access_log.exists():
            return []
        lines = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            try:
                request, rest = line.split('"', 2)[1], line.split('"', 2)[2]
            except IndexError:
                continue
            parts = request.split()
            if len(parts) < 2 or not parts[1].startswith(path_prefix):
                continue
            if status is not None and rest.split()[:1] != [str(status)]:
                continue
            lines.append(line)
        return lines

    def logged(
        self, count: int, *, status: int | None = None, path_prefix: str = "", timeout: float = 60
    ) -> list[str]:
        """The matching access-log lines once there are at least ``count`` of them. nginx logs a
        request after its response went out, so a client can be a step ahead of the log."""
        deadline = time.monotonic() + timeout
        while len(lines := self.requests(status, path_prefix)) < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling the log with a deadline
        return lines

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
