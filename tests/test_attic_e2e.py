"""The daemon against the Attic-compatible server, on real Nix: what a user sees in each case."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

pytestmark = [needs_nix, pytest.mark.nix]

UPLOAD = "/_api/v1/upload-path"


def outs_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stdout.split() if line.startswith("/nix/store/")]


def target_status(hookd: HookdProcess, target_id: str) -> dict[str, Any]:
    return next(t for t in hookd.status()["targets"] if t["id"] == target_id)


def problems(hookd: HookdProcess) -> list[dict[str, Any]]:
    return list(hookd.status()["problems"])


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False, upstream=["cache.nixos.org-1"])
        yield server


def attic_daemon(
    tmp_path: Path,
    servers: dict[str, tuple[AtticTestServer, str]],
    caches: dict[str, str] | None = None,
    **extra: Any,
) -> HookdProcess:
    settings: dict[str, Any] = {"servers": {}, "targets": []}
    for name, (server, token) in servers.items():
        tf = write_token(tmp_path / f"{name}.token", token)
        settings["servers"][name] = {"endpoint": server.url, "token_file": str(tf)}
        settings["targets"].append({"server": name, "cache": (caches or {}).get(name, "team")})
    settings.update(extra)
    return HookdProcess(tmp_path, settings)


def test_build_hook_daemon_attic_then_nix_substitutes(srv: AtticTestServer, tmp_path: Path) -> None:
    token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="ci", validity=3600)
    hookd = attic_daemon(tmp_path, {"prod": (srv, token)})
    hookd.start()
    n = nonce()
    outs = outs_of(
        nix_build(
            ["d", "multi.out", "multi.dev", "multi.lib"], nonce_value=n, hook=hookd.hook_script
        )
    )
    assert hookd.client.wait(timeout=120)["drained"]
    closure = sorted(requisites(outs))
    stored = srv.objects("team")
    assert {Path(p).name.split("-", 1)[0] for p in closure} <= set(stored)
    # real Nix substitutes every pushed path from the server, signatures checked, with a netrc
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 password {token}\n")
    argv = [
        "nix-store",
        "--store",
        str(tmp_path / "clean"),
        "-r",
        *closure,
        "--option",
        "substituters",
        srv.url + "team",
        "--option",
        "trusted-public-keys",
        srv.public_key("team"),
        "--option",
        "netrc-file",
        str(netrc),
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    there = path_info(closure, store=str(tmp_path / "clean"))
    here = path_info(closure)
    assert all(there[p]["narHash"] == here[p]["narHash"] for p in closure)
    # a second push of the same closure makes no upload and no HTTP request at all
    before_uploads = srv.count(method="PUT", path_prefix=UPLOAD)
    before_all = srv.count()
    for p in closure:
        hookd.client.call({"op": "drop", "paths": [p]})
    assert hookd.client.call({"op": "enqueue", "out_paths": outs})["ok"]
    assert hookd.client.wait(timeout=60)["drained"]
    assert srv.count(method="PUT", path_prefix=UPLOAD) == before_uploads
    assert srv.count() == before_all
    token_text = token
    assert token_text not in hookd.log()
    status = subprocess.run(
        [HOOKD, "status", "--json"],
        env=nix_env(HOOKD_CONFIG=str(hookd.config_path)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert token_text not in status.stdout
    hookd.stop()


def test_upstream_signed_paths_are_not_uploaded(srv: AtticTestServer, tmp_path: Path) -> None:
    hookd = attic_daemon(tmp_path, {"prod": (srv, srv.make_token({"team": {"r": 1, "w": 1}}))})
    hookd.start()
    (b,) = outs_of(nix_build(["b"], nonce_value=nonce()))
    key, pub = tmp_path / "up.sec", tmp_path / "up.pub"
    subprocess.run(
        ["nix-store", "--generate-binary-cache-key", "cache.nixos.org-1", str(key), str(pub)],
        check=True,
    )
    subprocess.run(["nix", "store", "sign", "--key-file", str(key), b], check=True)
    assert hookd.client.call({"op": "enqueue", "out_paths": [b]})["ok"]
    assert hookd.client.wait(timeout=60)["drained"]
    assert Path(b).name.split("-", 1)[0] not in srv.objects("team")
    assert srv.count(method="PUT", path_prefix=UPLOAD) == 0
    assert target_status(hookd, "attic:prod/team")["done"] == 1
    hookd.stop()


@pytest.mark.parametrize(
    ("caches", "public", "expect"),
    [
        ({}, False, "401"),  # a valid token with no grant on this cache: anonymous on a private one
        ({}, True, "push"),  # the same on a public cache: pull is granted, push is 403
        ({"team": {"r": 1}}, False, "push"),  # pull-only: 403, names the push permission
    ],
)
def test_auth_failures_park_with_a_message_and_token_rotation_resumes(
    srv: AtticTestServer, tmp_path: Path, caches: dict[str, Any], public: bool, expect: str
) -> None:
    srv.cache("team").is_public = public
    bad = srv.make_token(caches or {"other": {"r": 1, "w": 1}}, sub="bad")
    hookd = attic_daemon(tmp_path, {"prod": (srv, bad)})
    hookd.start()
    (b,) = outs_of(nix_build(["b"], nonce_value=nonce()))
    assert hookd.client.call({"op": "enqueue", "out_paths": [b]})["ok"]
    parked = until(lambda: [p for p in problems(hookd) if p["state"] == "parked"], hookd)
    reason = parked[0]["reason"]
    assert expect in reason.lower() or expect in reason, reason
    assert bad not in json.dumps(hookd.status()) and bad not in hookd.log()
    # no hot loop: while parked, the server sees (almost) nothing
    seen = srv.count()
    hookd.client.wait(timeout=2)
    assert srv.count() - seen <= 2
    # rotate the token file: the daemon resumes without a restart
    write_token(tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}, sub="good"))
    until(lambda: target_status(hookd, "attic:prod/team")["done"] == 1, hookd)
    assert Path(b).name.split("-", 1)[0] in srv.objects("team")
    hookd.stop()


def test_missing_cache_parks_with_the_fix_then_retry_pushes(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    token = srv.make_token({"*": {"r": 1, "w": 1}})
    hookd = attic_daemon(tmp_path, {"prod": (srv, token)}, caches={"prod": "nosuch"})
    hookd.start()
    (b,) = outs_of(nix_build(["b"], nonce_value=nonce()))
    hookd.client.call({"op": "enqueue", "out_paths": [b]})
    parked = until(lambda: [p for p in problems(hookd) if p["state"] == "parked"], hookd)
    reason = parked[0]["reason"]
    assert (
        "nosuch" in reason
        and "prod" in reason
        and ("attic cache create" in reason or "provision" in reason)
    ), reason
    srv.create_cache("nosuch")
    env = nix_env(HOOKD_CONFIG=str(hookd.config_path))
    out = subprocess.run(
        [HOOKD, "retry", "--all"], env=env, capture_output=True, text=True, check=True
    )
    assert "retrying 1" in out.stdout
    until(lambda: target_status(hookd, "attic:prod/nosuch")["done"] == 1, hookd)
    hookd.stop()


def test_proxy_body_limit_fails_that_path_with_advice_others_pushed(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    hookd = attic_daemon(tmp_path, {"prod": (srv, srv.make_token({"team": {"r": 1, "w": 1}}))})
    hookd.start()
    n = nonce()
    (big,) = outs_of(nix_build(["big"], nonce_value=n, args={"bigMiB": "1"}))
    (b,) = outs_of(nix_build(["b"], nonce_value=n))
    srv.faults.max_body_size = 64 * 1024
    hookd.client.call({"op": "enqueue", "out_paths": [big, b]})
    failed = until(lambda: [p for p in problems(hookd) if p["state"] == "failed"], hookd)
    assert failed[0]["path"] == big
    assert "client_max_body_size" in failed[0]["reason"], failed[0]["reason"]
    until(lambda: target_status(hookd, "attic:prod/team")["done"] == 1, hookd)
    assert Path(b).name.split("-", 1)[0] in srv.objects("team")
    hookd.stop()


def test_random_5xx_and_resets_end_with_every_path_pushed(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    srv.faults.seed = 7
    srv.faults.fail_rate = 0.3
    srv.faults.reset_rate = 0.1
    hookd = attic_daemon(
        tmp_path,
        {"prod": (srv, srv.make_token({"team": {"r": 1, "w": 1}}))},
        upload={"min_backoff": 0.05, "max_backoff": 0.5, "breaker_cooldown": 0.2},
    )
    hookd.start()
    outs = outs_of(nix_build(["many"], nonce_value=nonce(), args={"count": "30"}))
    hookd.client.call({"op": "enqueue", "out_paths": outs})
    until(lambda: target_status(hookd, "attic:prod/team")["done"] == 30, hookd, timeout=180)
    assert {Path(p).name.split("-", 1)[0] for p in outs} <= set(srv.objects("team"))
    assert srv.count(status=500) > 0  # faults really happened
    hookd.stop()


def test_two_servers_one_down_the_other_keeps_pushing(tmp_path: Path) -> None:
    with AtticTestServer() as up, AtticTestServer() as down:
        up.create_cache("team")
        down.create_cache("team")
        down.set_down(True)
        hookd = attic_daemon(
            tmp_path,
            {
                "up": (up, up.make_token({"team": {"r": 1, "w": 1}})),
                "down": (down, down.make_token({"team": {"r": 1, "w": 1}})),
            },
        )
        hookd.start()
        outs = outs_of(nix_build(["many"], nonce_value=nonce(), args={"count": "5"}))
        hookd.client.call({"op": "enqueue", "out_paths": outs})
        until(lambda: target_status(hookd, "attic:up/team")["done"] == 5, hookd)
        dead = until(
            lambda: (t := target_status(hookd, "attic:down/team"))["last_error"] and t, hookd
        )
        assert dead["pending"] == 5 and dead["done"] == 0
        assert str(down.port) in dead["last_error"] or "127.0.0.1" in dead["last_error"], dead[
            "last_error"
        ]
        down.set_down(False)  # the queued paths land on their own once the server is back
        until(lambda: target_status(hookd, "attic:down/team")["done"] == 5, hookd, timeout=120)
        hookd.stop()


def test_check_command_reports_tokens_and_targets(srv: AtticTestServer, tmp_path: Path) -> None:
    # a token that expires within 7 days counts as a problem for `check`: rotation is overdue
    month = 30 * 86400
    hookd = attic_daemon(
        tmp_path, {"prod": (srv, srv.make_token({"team": {"r": 1, "w": 1}}, validity=month))}
    )
    env = nix_env(HOOKD_CONFIG=str(hookd.config_path))
    ok = subprocess.run([HOOKD, "check"], env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "attic prod/team: ok" in ok.stdout
    os.chmod(tmp_path / "prod.token", 0o644)
    bad = subprocess.run([HOOKD, "check"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "chmod" in bad.stdout, bad.stdout
    write_token(tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}, validity=3600))
    soon = subprocess.run([HOOKD, "check"], env=env, capture_output=True, text=True, check=False)
    assert soon.returncode == 1 and "expires" in soon.stdout


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` alive at the time; processes and threads may end while they
    are listed (their /proc entries vanish: FileNotFoundError, ProcessLookupError), which just
    means they are not there."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:  # the process ended
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def test_token_never_in_argv_or_environment_of_daemon_or_children(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="secret-check")
    hookd = attic_daemon(tmp_path, {"prod": (srv, token)})
    # The server holds the upload before reading its body: the streaming `nix-store --dump`
    # child stays alive (blocked on a full pipe) until the scan below has seen it, however fast
    # or loaded the machine is.
    srv.faults.upload_hold_after = 0
    hookd.start()
    assert hookd.proc is not None
    n = nonce()
    (big,) = outs_of(nix_build(["big"], nonce_value=n, args={"bigMiB": "64"}))
    hookd.client.call({"op": "enqueue", "out_paths": [big]})
    seen: dict[int, bytes] = {}

    def children_seen() -> bool:
        assert hookd.proc is not None
        for pid in [hookd.proc.pid, *_descendants(hookd.proc.pid)]:
            try:
                seen[pid] = (
                    Path(f"/proc/{pid}/cmdline").read_bytes()
                    + Path(f"/proc/{pid}/environ").read_bytes()
                )
            except OSError:
                continue
        return any(b"nix-store" in v for v in seen.values())

    deadline = time.monotonic() + 300
    while not children_seen():  # a tight scan of /proc while the 64 MiB upload is held
        assert time.monotonic() < deadline, "never saw the upload's nix-store --dump child"
    srv.faults.upload_release.set()
    secret = token.encode()
    for pid, blob in seen.items():
        assert secret not in blob, f"token found in argv/environ of pid {pid}"
    until(lambda: target_status(hookd, "attic:prod/team")["done"] == 1, hookd, timeout=120)
    assert token not in hookd.log()
    hookd.stop()
