"""`hookd check`'s pull side (hookd/pullcheck.py) against the Attic test server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hookd.attic.client import AtticClient
from hookd.attic.redact import Redactor
from hookd.models import attic_target_id
from hookd.pullcheck import PullReport, check_pull
from hookd.queue import Queue
from tests.attic_server import AtticTestServer, Keypair
from tests.conftest import HOOKD, needs_nix, nix_env, write_token

PATH = "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.12"
DEP = "sbxfr3zygxb1hw6bkhpfwn8gfhk9hsjn-glibc-2.40"


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False)
        server.create_cache("open", public=True)
        for cache in ("team", "open"):
            server.add_object(cache, PATH, b"a NAR", references=[DEP])
        yield server


def check(
    srv: AtticTestServer,
    cache: str,
    token: str | None,
    *,
    key: str | None = None,
    pushed: str | None = PATH,
) -> PullReport:
    async def go() -> PullReport:
        client = AtticClient(
            srv.url, name="prod", token=lambda: token, redactor=Redactor([token] if token else [])
        )
        try:
            return await check_pull(
                client,
                cache,
                configured_key=key,
                key_setting="targets[0].public_key",
                pushed=pushed,
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_good_case_serves_cache_info_and_a_signed_narinfo(srv: AtticTestServer) -> None:
    token = srv.make_token({"team": {"r": 1}})
    report = check(srv, "team", token, key=srv.public_key("team"))
    assert report.problems == []
    text = "\n".join(report.notes)
    assert "serves nix-cache-info" in text
    assert "public key matches targets[0].public_key" in text
    assert f"serves the narinfo of {PATH}, signed by {srv.public_key('team')}" in text


def test_private_cache_without_credentials_is_a_problem(srv: AtticTestServer) -> None:
    report = check(srv, "team", None, key=srv.public_key("team"))
    assert len(report.problems) == 1, report
    assert "cache team on server prod refuses the pull credentials" in report.problems[0]
    assert "netrc" in report.problems[0]
    # a public cache needs no credentials
    assert check(srv, "open", None, key=srv.public_key("open")).problems == []


def test_key_mismatch_names_the_served_key(srv: AtticTestServer) -> None:
    other = Keypair.generate("team").public_key  # same name, another key: only the bytes differ
    report = check(srv, "team", srv.make_token({"team": {"r": 1}}), key=other)
    assert report.problems, report
    mismatch = report.problems[0]
    assert f"signs with public key {srv.public_key('team')}" in mismatch
    assert f"targets[0].public_key is {other}" in mismatch
    # the narinfo's signature does not verify with the configured key either
    assert any("does not verify" in p for p in report.problems[1:]), report


def test_without_a_configured_key_the_served_one_verifies_the_narinfo(
    srv: AtticTestServer,
) -> None:
    report = check(srv, "team", srv.make_token({"team": {"r": 1}}))
    assert report.problems == []
    assert any("set targets[0].public_key" in n for n in report.notes)
    assert any(f"signed by {srv.public_key('team')}" in n for n in report.notes)


def test_nothing_pushed_yet_and_a_vanished_path(srv: AtticTestServer) -> None:
    token = srv.make_token({"team": {"r": 1}})
    report = check(srv, "team", token, pushed=None)
    assert report.problems == [] and any("nothing was pushed" in n for n in report.notes)
    gone = "/nix/store/00000000000000000000000000000000-gone"
    report = check(srv, "team", token, pushed=gone)
    assert len(report.problems) == 1 and "does not serve the narinfo" in report.problems[0]


@needs_nix
def test_hookd_check_runs_the_pull_side_per_target(srv: AtticTestServer, tmp_path: Path) -> None:
    """`hookd check` picks the path the queue recorded as pushed and fails on a key mismatch."""
    state = tmp_path / "state"
    queue = Queue(state / "queue.sqlite").open()
    try:
        asyncio.run(queue.record_pushed(attic_target_id("prod", "team"), [PATH]))
    finally:
        queue.close()
    token = write_token(
        tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}, validity=30 * 86400)
    )
    settings = {
        "state_dir": str(state),
        "socket": str(tmp_path / "hookd.sock"),
        "servers": {"prod": {"endpoint": srv.url, "token_file": str(token)}},
        "targets": [{"server": "prod", "cache": "team", "public_key": srv.public_key("team")}],
    }
    config = tmp_path / "hookd.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = nix_env(HOOKD_CONFIG=str(config))
    ok = subprocess.run([HOOKD, "check"], env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"pull attic:prod/team: cache team on server prod: serves the narinfo of {PATH}" in (
        ok.stdout
    )
    settings["targets"] = [
        {"server": "prod", "cache": "team", "public_key": Keypair.generate("team").public_key}
    ]
    config.write_text(yaml.safe_dump(settings))
    bad = subprocess.run([HOOKD, "check"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"problem: cache team on server prod signs with public key {srv.public_key('team')}" in (
        bad.stdout
    )


@needs_nix
def test_hookd_check_with_a_netrc_uses_its_credentials(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    """`--netrc FILE`: the pull side is checked with what Nix clients would send."""
    token = write_token(
        tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}, validity=30 * 86400)
    )
    settings = {
        "state_dir": str(tmp_path / "state"),
        "socket": str(tmp_path / "hookd.sock"),
        "servers": {"prod": {"endpoint": srv.url, "token_file": str(token)}},
        "targets": [{"server": "prod", "cache": "team"}],
    }
    config = tmp_path / "hookd.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = nix_env(HOOKD_CONFIG=str(config))
    netrc = tmp_path / "netrc"
    pull = srv.make_token({"team": {"r": 1}}, validity=30 * 86400)
    netrc.write_text(f"machine 127.0.0.1 login pull password {pull}\n")
    argv = [HOOKD, "check", "--netrc", str(netrc)]
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pull attic:prod/team: cache team on server prod: nothing was pushed" in ok.stdout
    assert pull not in ok.stdout + ok.stderr
    netrc.write_text("machine elsewhere.example login pull password x\n")
    bad = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"{netrc} has no entry for this server's host" in bad.stdout
    assert "refuses the pull credentials for nix-cache-info" in bad.stdout
