"""hookd pushing through a real nginx in front of the Attic test server, as deployed.

Real Nix builds with the real post-build hook, the real daemon, Debian's nginx configured as
the NixOS nginx module and the seeds' deployments configure it (see tests/nginx.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.attic_server import AtticTestServer
from tests.conftest import (
    HOOKD,
    HookdProcess,
    needs_nix,
    nix_build,
    nix_env,
    nonce,
    path_info,
    requisites,
    until,
    write_token,
)
from tests.nginx import NIXOS_DEFAULT_BODY_LIMIT, Nginx, needs_nginx

pytestmark = [needs_nix, needs_nginx, pytest.mark.nix]

UPLOAD = "/_api/v1/upload-path"
TARGET = "attic:prod/team"


def outs_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stdout.split() if line.startswith("/nix/store/")]


def hash_of(path: str) -> str:
    return Path(path).name.split("-", 1)[0]


def problems(hookd: HookdProcess, state: str) -> list[dict[str, Any]]:
    return [p for p in hookd.status()["problems"] if p["state"] == state]


def target_status(hookd: HookdProcess) -> dict[str, Any]:
    return next(t for t in hookd.status()["targets"] if t["id"] == TARGET)


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False)
        yield server
        assert not server.errors, server.errors


def daemon_behind(
    tmp_path: Path, srv: AtticTestServer, proxy: Nginx, **upload: Any
) -> HookdProcess:
    # as the seeds configure atticd behind a proxy: `api-endpoint = "https://${fqdn}/"` (without
    # it atticd advertises an endpoint built from the Host header, which nginx's recommended
    # `Host $host` strips of its port)
    srv.api_endpoint = proxy.url
    token = write_token(tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}))
    settings: dict[str, Any] = {
        "servers": {"prod": {"endpoint": proxy.url, "token_file": str(token)}},
        "targets": [{"server": "prod", "cache": "team"}],
    }
    if upload:
        settings["upload"] = upload
    return HookdProcess(tmp_path, settings).start()


def test_small_and_multi_mib_nars_push_through_nginx_and_nix_substitutes_them(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    # the seeds' setting: clientMaxBodySize = "1024m"
    with Nginx(tmp_path, srv.port, client_max_body_size="1024m") as proxy:
        hookd = daemon_behind(tmp_path, srv, proxy)
        built = nix_build(
            ["d", "multi.out", "big"],
            nonce_value=nonce(),
            hook=hookd.hook_script,
            args={"bigMiB": "24"},
        )
        outs = outs_of(built)
        assert hookd.client.wait(timeout=180)["drained"], hookd.log()[-3000:]
        closure = sorted(requisites(outs))
        assert {hash_of(p) for p in closure} <= set(srv.objects("team"))
        sizes = path_info(closure)
        big = next(p for p in closure if p.endswith("-big"))
        assert sizes[big]["narSize"] > 20 * 1024 * 1024  # well past both proxies' defaults
        # every upload went through nginx and was answered 200 by it
        puts = proxy.logged(len(closure), path_prefix=UPLOAD)
        assert len(puts) == len(closure), puts
        assert len(proxy.requests(status=200, path_prefix=UPLOAD)) == len(closure)
        # real Nix substitutes the closure through the same proxy, signatures checked
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 password {srv.make_token({'team': {'r': 1}})}\n")
        proc = subprocess.run(
            [
                "nix-store",
                "--store",
                str(tmp_path / "clean"),
                "-r",
                *closure,
                "--option",
                "substituters",
                proxy.url + "team",
                "--option",
                "trusted-public-keys",
                srv.public_key("team"),
                "--option",
                "netrc-file",
                str(netrc),
                "--option",
                "narinfo-cache-negative-ttl",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        there = path_info(closure, store=str(tmp_path / "clean"))
        assert all(there[p]["narHash"] == sizes[p]["narHash"] for p in closure)
        hookd.stop()


def test_nar_over_the_body_limit_fails_with_the_setting_to_change(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    # the NixOS nginx module's default limit (10m), which the seeds warn about
    with Nginx(tmp_path, srv.port, client_max_body_size=NIXOS_DEFAULT_BODY_LIMIT) as proxy:
        hookd = daemon_behind(tmp_path, srv, proxy)
        n = nonce()
        (big,) = outs_of(nix_build(["big"], nonce_value=n, args={"bigMiB": "12"}))
        (b,) = outs_of(nix_build(["b"], nonce_value=n))
        assert hookd.client.call({"op": "enqueue", "out_paths": [big, b]})["ok"]
        failed = until(lambda: problems(hookd, "failed"), hookd, timeout=120)
        assert [p["path"] for p in failed] == [big]
        reason = failed[0]["reason"]
        assert "413" in reason and "client_max_body_size" in reason, reason
        until(lambda: target_status(hookd)["done"] == 1, hookd)
        assert hash_of(b) in srv.objects("team")
        assert hash_of(big) not in srv.objects("team")
        # nginx refused it from Content-Length alone: the upstream never saw that upload
        assert proxy.logged(1, status=413, path_prefix=UPLOAD)
        assert srv.count(method="PUT", path_prefix=UPLOAD) == 1
        # `hookd status` shows the same advice to the operator
        out = subprocess.run(
            [HOOKD, "status"],
            env=nix_env(HOOKD_CONFIG=str(hookd.config_path)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "client_max_body_size" in out.stdout, out.stdout
        hookd.stop()


def test_proxy_read_timeout_is_retried_with_backoff_then_dead_lettered_and_retry_recovers(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    # atticd answers an upload 3 s after its last byte; nginx waits 1 s for an answer -> 504
    srv.faults.upload_response_delay = 3.0
    with Nginx(tmp_path, srv.port, proxy_read_timeout="1s") as proxy:
        hookd = daemon_behind(
            tmp_path, srv, proxy, retry_attempts=1, min_backoff=0.2, max_backoff=1
        )
        (b,) = outs_of(nix_build(["b"], nonce_value=nonce()))  # one path, no references
        assert hookd.client.call({"op": "enqueue", "out_paths": [b]})["ok"]
        failed = until(lambda: problems(hookd, "failed"), hookd, timeout=120)
        assert [p["path"] for p in failed] == [b]
        reason = failed[0]["reason"]
        assert "504" in reason and "proxy_read_timeout" in reason, reason
        assert "gave up after 3" in reason and f"hookd retry {b}" in reason, reason
        # bounded: the default upload.max_timeouts (3) rounds of retry_attempts (1) try each
        timeouts = proxy.logged(3, status=504, path_prefix=UPLOAD)
        assert len(timeouts) == 3, timeouts
        # …spaced by the backoff policy, not retried in a hot loop
        retries = [
            e for e in hookd.log_events() if e.get("event") == "push.retry" and "504" in e["error"]
        ]
        assert len(retries) == 2 and all(e["seconds"] > 0 for e in retries), retries
        assert hash_of(b) not in srv.objects("team")  # the upstream abandoned every try
        # nothing is lost: once the server is fast enough, `hookd retry` pushes it
        srv.faults.upload_response_delay = 0.0
        out = subprocess.run(
            [HOOKD, "retry", "--all"],
            env=nix_env(HOOKD_CONFIG=str(hookd.config_path)),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "retrying 1" in out.stdout
        until(lambda: target_status(hookd)["done"] == 1, hookd)
        assert hash_of(b) in srv.objects("team")
        hookd.stop()


def test_large_nar_info_goes_in_the_body_and_never_hits_nginx_header_limits(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    count = 300  # references enough for an X-Attic-Nar-Info of ~15 KiB, past nginx's 8k buffers
    (root,) = outs_of(nix_build(["manyRoot"], nonce_value=nonce(), args={"count": str(count)}))
    info = path_info([root])[root]
    refs = sorted(Path(r).name for r in info["references"])
    assert len(refs) == count
    with Nginx(tmp_path, srv.port) as proxy:
        # nginx's default large_client_header_buffers (4 8k) really refuse such a header
        header = json.dumps({"cache": "team", "store_path": root, "references": refs})
        assert len(header) > 8192
        r = httpx.put(
            proxy.url + UPLOAD.lstrip("/"),
            headers={"X-Attic-Nar-Info": header, "Content-Type": "application/octet-stream"},
            content=b"",
            timeout=30,
        )
        assert r.status_code == 400 and "Header" in r.text, (r.status_code, r.text[:300])
        assert len(proxy.logged(1, status=400)) == 1

        hookd = daemon_behind(tmp_path, srv, proxy)
        assert hookd.client.call({"op": "enqueue", "out_paths": [root]})["ok"]
        assert hookd.client.wait(timeout=180)["drained"], hookd.log()[-3000:]
        stored = srv.objects("team")
        assert hash_of(root) in stored
        assert sorted(stored[hash_of(root)].references) == refs  # the whole NAR info arrived
        # it travelled in the body: the upload's body is the NAR plus the JSON preamble
        (put,) = [
            r
            for r in srv.requests
            if r.method == "PUT" and r.status == 200 and r.body_bytes > info["narSize"]
        ]
        assert put.body_bytes - info["narSize"] > 8192
        assert len(proxy.requests(status=400)) == 1  # hookd's upload was not refused
        hookd.stop()
