"""`hookd provision` against the Attic-compatible test server (tests/attic_server.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from hookd.attic import routes
from hookd.attic.claims import CLAIM_NAMESPACE
from hookd.attic.client import AtticClient
from hookd.duration import parse_duration
from hookd.errors import ConfigError
from hookd.provision import command, spec
from hookd.provision.admin import AtticAdmin, CacheState
from hookd.provision.claims import (
    caches_claim,
    patterns_overlap,
    permission_for,
)
from hookd.provision.output import PullSettings, render_json_config, write_nix_config
from hookd.provision.spec import TokenSpec, parse_retention, shadowed_grants
from tests.attic_server import FLAGS, AtticTestServer

WRITES = ("POST", "PATCH", "DELETE")
HASH = "xcp9cav49dmsjbwdjlmkjxj10gkpx553"


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ATTIC_"):
            monkeypatch.delenv(name)


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        yield server


class Recorder:
    """Every request hookd provision sends, with its JSON body (the server records no bodies)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def writes(self) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] in WRITES]


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    original = AtticClient._call

    async def spy(
        self: AtticClient, method: str, base: str, path: str, **kw: Any
    ) -> Any:  # every request goes through AtticClient._call
        if path.startswith(routes.cache_config("")):
            recorder.calls.append((method, path.rsplit("/", 1)[-1], kw.get("json_body")))
        return await original(self, method, base, path, **kw)

    monkeypatch.setattr(AtticClient, "_call", spy)
    return recorder


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def text(self) -> str:
        return self.out + self.err


def run(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    *args: str,
    secrets: tuple[str, ...] = (),
) -> Result:
    code = command.main(["--config", str(config), *args])
    captured = capsys.readouterr()
    result = Result(code, captured.out, captured.err)
    human = result.err if "--json" in args else result.text
    for secret in secrets:
        assert secret not in human, "a secret reached the human output"
    assert "eyJ" not in human, "something shaped like a JWT reached the human output"
    return result


def write_config(tmp_path: Path, text: str, name: str = "attic.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def admin_env(
    monkeypatch: pytest.MonkeyPatch, srv: AtticTestServer, token: str | None = None
) -> str:
    token = token or srv.root_token(sub="admin")
    monkeypatch.setenv("ATTIC_ADMIN_TOKEN", token)
    monkeypatch.setenv("ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64", srv.hs256_secret_b64)
    return token


def write_count(srv: AtticTestServer) -> int:
    return sum(srv.count(method=m) for m in WRITES)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BASIC = """\
server_url: {url}
caches:
  - name: team
    public: false
    priority: 30
    retention_period: 30d
    upstream_cache_key_names: [cache.nixos.org-1, team-upstream-1]
  - name: pub
    public: true
    retention_period: never
tokens:
  - name: ci
    caches: [team]
    permissions: write
    validity: 365d
"""


# -- convergence -----------------------------------------------------------------------------


def test_first_run_creates_and_configures_then_second_run_is_a_no_op(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rec: Recorder,
) -> None:
    admin = admin_env(monkeypatch, srv)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    out_dir = tmp_path / "tokens"

    first = run(capsys, config, "--output-dir", str(out_dir), secrets=(admin,))
    assert first.code == 0, first.err
    team, pub = srv.cache("team"), srv.cache("pub")
    assert (team.is_public, team.priority, team.retention_period) == (False, 30, 30 * 86400)
    assert team.upstream_cache_key_names == ["cache.nixos.org-1", "team-upstream-1"]
    assert team.public_key.startswith("team:")
    assert (pub.is_public, pub.priority, pub.retention_period) == (True, 41, 0)
    # create carries all five fields; retention only exists through PATCH (docs/attic-api.md §3.2)
    assert rec.writes() == [
        (
            "POST",
            "team",
            {
                "keypair": "Generate",
                "is_public": False,
                "priority": 30,
                "upstream_cache_key_names": ["cache.nixos.org-1", "team-upstream-1"],
                "store_dir": "/nix/store",
            },
        ),
        ("PATCH", "team", {"retention_period": {"Period": 2592000}}),
        (
            "POST",
            "pub",
            {
                "keypair": "Generate",
                "is_public": True,
                "priority": 41,
                "upstream_cache_key_names": ["cache.nixos.org-1"],
                "store_dir": "/nix/store",
            },
        ),
        ("PATCH", "pub", {"retention_period": {"Period": 0}}),
    ]
    assert "2 created, 0 updated, 0 destroyed" in first.out
    token_file = out_dir / "ci.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    assert str(token_file) in first.out

    srv.clear_records()
    rec.calls.clear()
    key_before = srv.cache("team").public_key
    second = run(capsys, config, "--output-dir", str(out_dir), secrets=(admin,))
    assert second.code == 0, second.err
    assert write_count(srv) == 0 and rec.writes() == []
    assert srv.count(method="GET") == 2
    assert "No changes: 0 created, 0 updated, 0 destroyed, 2 unchanged" in second.out
    assert srv.cache("team").public_key == key_before  # keypair: generate only at create time


def test_changed_yaml_yields_exactly_the_patches_it_implies(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rec: Recorder,
) -> None:
    admin = admin_env(monkeypatch, srv)
    srv.create_cache("team", priority=30, retention_period=30 * 86400)
    srv.create_cache("pub", public=True, retention_period=0)
    config = write_config(
        tmp_path,
        f"""\
server_url: {srv.url}
caches:
  - name: team
    public: true
    priority: 10
    retention_period: 90d
    upstream_cache_key_names: [cache.nixos.org-1, nix-community.cachix.org-1]
  - name: pub
    public: true
    retention_period: never
""",
    )
    dry = run(capsys, config, "--dry-run", secrets=(admin,))
    assert dry.code == 0, dry.err
    assert "~ update cache team: public false → true" in dry.out
    assert "~ update cache team: priority 30 → 10" in dry.out
    assert "~ update cache team: retention_period 30d → 90d" in dry.out
    assert (
        "~ update cache team: upstream_cache_key_names [cache.nixos.org-1] → "
        "[cache.nixos.org-1, nix-community.cachix.org-1]" in dry.out
    )
    assert "= cache pub unchanged" in dry.out
    assert rec.writes() == []

    result = run(capsys, config, secrets=(admin,))
    assert result.code == 0, result.err
    assert rec.writes() == [
        (
            "PATCH",
            "team",
            {
                "is_public": True,
                "priority": 10,
                "upstream_cache_key_names": ["cache.nixos.org-1", "nix-community.cachix.org-1"],
                "retention_period": {"Period": 90 * 86400},
            },
        )
    ]
    team = srv.cache("team")
    assert (team.is_public, team.priority, team.retention_period) == (True, 10, 90 * 86400)
    assert "0 created, 1 updated, 0 destroyed, 1 unchanged" in result.out


def test_patch_without_retention_needs_no_cq_issue_144(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rec: Recorder,
) -> None:
    admin = admin_env(monkeypatch, srv, srv.make_token({"team": {"r": 1, "cr": 1}}, sub="admin"))
    srv.create_cache("team", retention_period=7 * 86400)
    config = write_config(
        tmp_path,
        f"server_url: {srv.url}\ncaches:\n  - {{name: team, priority: 5, retention_period: 7d}}\n",
    )
    result = run(capsys, config, secrets=(admin,))
    assert result.code == 0, result.err
    assert rec.writes() == [("PATCH", "team", {"priority": 5})]
    assert srv.cache("team").priority == 5


def test_fields_left_out_are_not_managed(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_env(monkeypatch, srv)
    srv.create_cache("team", public=True, priority=7, upstream=(), retention_period=60)
    config = write_config(tmp_path, f"server_url: {srv.url}\ncaches:\n  - name: team\n")
    result = run(capsys, config)
    assert result.code == 0, result.err
    assert write_count(srv) == 0
    assert "= cache team unchanged" in result.out


def test_state_absent_destroys_and_only_then(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rec: Recorder,
) -> None:
    admin_env(monkeypatch, srv)
    srv.create_cache("old")
    srv.create_cache("kept")
    config = write_config(
        tmp_path,
        f"server_url: {srv.url}\ncaches:\n  - {{name: old, state: absent}}\n"
        "  - {name: never-existed, state: absent}\n",
    )
    dry = run(capsys, config, "--dry-run")
    assert "- destroy cache old" in dry.out and "= cache never-existed absent" in dry.out
    assert srv.caches() == ["kept", "old"]

    result = run(capsys, config)
    assert result.code == 0, result.err
    assert rec.writes() == [("DELETE", "old", None)]
    assert srv.caches() == ["kept"]  # caches not in the YAML are never touched
    assert "1 destroyed" in result.out

    srv.clear_records()
    again = run(capsys, config)
    assert again.code == 0 and write_count(srv) == 0
    assert "No changes" in again.out


def test_create_race_cache_already_exists_is_converged(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rec: Recorder,
) -> None:
    """Someone creates the cache between our GET and our POST: treat it as present, PATCH it."""
    admin_env(monkeypatch, srv)
    config = write_config(
        tmp_path, f"server_url: {srv.url}\ncaches:\n  - {{name: team, priority: 9}}\n"
    )
    original_get = AtticAdmin.get
    calls = {"n": 0}

    def racy_get(self: AtticAdmin, cache: str) -> CacheState | None:
        calls["n"] += 1
        state = original_get(self, cache)
        if calls["n"] == 1:
            srv.create_cache("team", priority=41)
            return None
        return state

    monkeypatch.setattr(AtticAdmin, "get", racy_get)
    result = run(capsys, config)
    assert result.code == 0, result.err
    assert srv.count(method="POST", status=400) == 1
    assert rec.writes()[-1] == ("PATCH", "team", {"priority": 9})
    assert srv.cache("team").priority == 9
    assert "created concurrently" in result.out


def test_keypair_keep_never_creates(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_env(monkeypatch, srv)
    config = write_config(
        tmp_path, f"server_url: {srv.url}\ncaches:\n  - {{name: team, keypair: keep}}\n"
    )
    result = run(capsys, config)
    assert result.code == 1
    assert "keypair: keep" in result.err and write_count(srv) == 0
    srv.create_cache("team")
    assert run(capsys, config).code == 0 and write_count(srv) == 0


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "RS256"])
def test_minted_token_is_accepted_for_exactly_what_it_grants(
    algorithm: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with AtticTestServer(algorithm=algorithm) as server:
        admin = server.root_token(sub="admin")
        monkeypatch.setenv("ATTIC_ADMIN_TOKEN", admin)
        if algorithm == "RS256":
            assert server.rs256_secret_b64 is not None
            monkeypatch.setenv("ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64", server.rs256_secret_b64)
        else:
            secret_file = tmp_path / "secret"
            secret_file.write_text(server.hs256_secret_b64 + "\n")
        server.create_cache("other")
        config = write_config(tmp_path, BASIC.format(url=server.url))
        args = ["--output-dir", str(tmp_path / "out")]
        if algorithm == "HS256":
            args += ["--secret-file", str(secret_file)]
        result = run(capsys, config, *args, secrets=(admin,))
        assert result.code == 0, result.err
        token = (tmp_path / "out" / "ci.token").read_text().strip()

        header = jwt.get_unverified_header(token)
        assert header == {"alg": algorithm, "typ": "JWT"}
        claims = claims_of(token)
        assert list(claims) == ["sub", "exp", "nbf", CLAIM_NAMESPACE]  # no iat, like make-token
        assert claims["sub"] == "ci" and claims["exp"] - claims["nbf"] == 365 * 86400
        assert claims[CLAIM_NAMESPACE] == {"caches": {"team": {"r": 1, "w": 1}}}

        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
            push = c.post(
                "_api/v1/get-missing-paths", json={"cache": "team", "store_path_hashes": [HASH]}
            )
            assert push.status_code == 200 and push.json() == {"missing_paths": [HASH]}
            assert c.get("_api/v1/cache-config/team").status_code == 200
            destroy = c.delete("_api/v1/cache-config/team")
            assert (destroy.status_code, destroy.json()["error"]) == (403, "AccessError")
            configure = c.patch("_api/v1/cache-config/team", json={"priority": 1})
            assert configure.status_code == 403
            elsewhere = c.post(
                "_api/v1/get-missing-paths", json={"cache": "other", "store_path_hashes": [HASH]}
            )
            assert elsewhere.status_code in (401, 403)
            assert c.get("_api/v1/cache-config/other").status_code in (401, 403)
        assert "team" in server.caches()


def test_token_patterns_specific_first_one_entry_each_issue_133(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`*: read` plus `team-*: write`: team-x must get push (make-token order would lose it)."""
    admin_env(monkeypatch, srv)
    for name in ("team-x", "misc"):
        srv.create_cache(name)
    config = write_config(
        tmp_path,
        f"""\
server_url: {srv.url}
tokens:
  - name: dev
    sub: alice
    caches:
      "*": read
      team-*: [push]
      misc: [configure_cache]
    validity: 1d
""",
    )
    result = run(capsys, config, "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    token = doc["tokens"]["dev"]["token"]
    assert list(claims_of(token)[CLAIM_NAMESPACE]["caches"].items()) == [
        ("misc", {"r": 1, "cr": 1}),
        ("team-*", {"r": 1, "w": 1}),
        ("*", {"r": 1}),
    ]
    assert claims_of(token)["sub"] == "alice"
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}) as c:
        body = {"store_path_hashes": [HASH]}
        assert (
            c.post("_api/v1/get-missing-paths", json={"cache": "team-x", **body}).status_code == 200
        )
        assert (
            c.post("_api/v1/get-missing-paths", json={"cache": "misc", **body}).status_code == 403
        )
        assert c.get("_api/v1/cache-config/misc").status_code == 200
        assert c.patch("_api/v1/cache-config/misc", json={"priority": 3}).status_code == 200


def test_netrc_lines_replace_their_own_and_keep_the_rest(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine github.com login me password hunter2\n")
    netrc.chmod(0o644)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    for _ in range(2):
        result = run(capsys, config, "--netrc", str(netrc), secrets=(admin,))
        assert result.code == 0, result.err
    lines = netrc.read_text().splitlines()
    assert lines[0] == "machine github.com login me password hunter2"
    assert len(lines) == 2
    words = lines[1].split()
    assert words[:5] == ["machine", "127.0.0.1", "login", "ci", "password"]
    assert claims_of(words[5])["sub"] == "ci"
    assert stat.S_IMODE(netrc.stat().st_mode) == 0o600
    # Nix reads netrc through curl: Basic auth with the token as the password works
    with httpx.Client(base_url=srv.url, auth=("ci", words[5])) as c:
        assert c.get("_api/v1/cache-config/team").status_code == 200


def test_json_output_is_the_only_place_tokens_appear(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    result = run(capsys, config, "--json", secrets=(admin,))
    assert result.code == 0, result.err
    doc = json.loads(result.out)  # stdout is pure JSON; the human report went to stderr
    assert doc["dry_run"] is False
    assert [c["kind"] for c in doc["changes"]] == ["create", "update", "create", "update"]
    assert doc["changes"][1] == {
        "kind": "update",
        "cache": "team",
        "field": "retention_period",
        "old": "global",
        "new": "30d",
    }
    ci = doc["tokens"]["ci"]
    assert ci["caches"] == {"team": {"r": 1, "w": 1}} and ci["token"].startswith("eyJ")
    assert ci["expires_at"] - ci["not_before"] == 365 * 86400
    assert "+ created cache team" in result.err
    assert ci["token"] not in result.err and admin not in result.out


def test_dry_run_prints_the_plan_and_writes_nothing(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    srv.create_cache("pub", public=False)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    out_dir = tmp_path / "out"
    result = run(capsys, config, "--dry-run", "--output-dir", str(out_dir), secrets=(admin,))
    assert result.code == 0, result.err
    base = srv.url.rstrip("/")
    assert result.out.splitlines() == [
        "+ create cache team (public=false, priority=30, upstream_cache_key_names=[cache.nixos.org-1, "
        "team-upstream-1], store_dir=/nix/store, keypair=generate)",
        "~ update cache team: retention_period global → 30d",
        "~ update cache pub: public false → true",
        "~ update cache pub: retention_period global → never",
        "* mint token ci (valid 365d): team: pull push",
        "Plan: 1 to create, 1 to update, 0 to destroy, 0 unchanged; 1 token(s) to mint. "
        "Dry run: nothing was changed.",
        # the pull side as it will be: the new cache's key exists only once it is created
        f"cache team (private: pulling needs a token in netrc): substituter {base}/team "
        "public key (not known yet: the cache is created by this run)",
        f"cache pub (public): substituter {base}/pub public key {srv.cache('pub').public_key}",
    ]
    assert write_count(srv) == 0
    assert not out_dir.exists()
    assert srv.caches() == ["pub"] and srv.cache("pub").is_public is False

    json_dry = run(capsys, config, "--dry-run", "--json")
    doc = json.loads(json_dry.out)
    assert doc["dry_run"] is True and "token" not in doc["tokens"]["ci"]
    assert write_count(srv) == 0


def test_env_overrides_the_file(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stale = tmp_path / "stale-token"
    stale.write_text("not-the-token\n")
    config = write_config(
        tmp_path,
        f"server_url: http://127.0.0.1:{free_port()}/\nadmin_token_file: stale-token\n"
        "caches:\n  - {name: team}\n",
    )
    admin = srv.root_token()
    monkeypatch.setenv("ATTIC_SERVER_URL", srv.url)
    monkeypatch.setenv("ATTIC_ADMIN_TOKEN", admin)
    result = run(capsys, config, secrets=(admin,))
    assert result.code == 0, result.err
    assert srv.caches() == ["team"]


def test_admin_token_file_relative_to_the_config(
    srv: AtticTestServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = srv.root_token()
    (tmp_path / "admin.token").write_text(admin + "\n")
    config = write_config(
        tmp_path, f"server_url: {srv.url}\nadmin_token_file: admin.token\ncaches:\n  - name: team\n"
    )
    result = run(capsys, config, secrets=(admin,))
    assert result.code == 0, result.err
    assert srv.caches() == ["team"]


# -- bad inputs: one clear error, nothing changed --------------------------------------------


def assert_one_error(result: Result, code: int, *needles: str) -> None:
    assert result.code == code, result.text
    assert result.err.count("error:") == 1, result.err
    assert result.out == ""
    for needle in needles:
        assert needle in result.err, result.err


@pytest.mark.parametrize(
    ("snippet", "needles"),
    [
        (
            "caches:\n  - {name: team, pubic: true}\n",
            ("unknown key 'pubic'", "did you mean 'public'"),
        ),
        ("cache:\n  - {name: team}\n", ("unknown key 'cache'", "did you mean 'caches'")),
        ("caches:\n  - {name: team, retention_period: 30 days}\n", ("invalid duration '30 days'",)),
        ("caches:\n  - {name: team, retention_period: 30}\n", ("invalid retention_period 30",)),
        (
            "tokens:\n  - {name: ci, caches: [team], permissions: write, validity: 1x}\n",
            ("validity: invalid duration '1x'",),
        ),
        (
            "tokens:\n  - {name: ci, caches: [team], permissions: [push, nuke], validity: 1d}\n",
            ("unknown permission 'nuke'",),
        ),
        ("caches:\n  - {name: -bad}\n", ("invalid cache name '-bad'",)),
        (
            "caches:\n  - {name: team}\n  - {name: team}\n",
            ("cache 'team' is declared more than once",),
        ),
        ("caches:\n  - {name: team, priority: 1, priority: 2}\n", ("duplicate key 'priority'",)),
        ("caches:\n  - {name: team, state: gone}\n", ("state: expected present or absent",)),
    ],
)
def test_bad_config_is_one_error_and_changes_nothing(
    snippet: str,
    needles: tuple[str, ...],
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    config = write_config(tmp_path, f"server_url: {srv.url}\n{snippet}")
    result = run(capsys, config, "--output-dir", str(tmp_path / "out"), secrets=(admin,))
    assert_one_error(result, 2, *needles)
    assert srv.requests == [] and not (tmp_path / "out").exists()


def test_admin_token_without_cc_is_refused_before_any_change(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = {f: 1 for f in FLAGS if f != "cc"}
    admin = admin_env(monkeypatch, srv, srv.make_token({"*": flags}, sub="admin"))
    srv.create_cache("pub")  # would be PATCHed (public), which this token may do
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    result = run(capsys, config, "--output-dir", str(tmp_path / "out"), secrets=(admin,))
    assert_one_error(
        result,
        1,
        "cache 'team' (create, update) needs create_cache (cc)",
        "the first matching pattern '*' grants",
        "nothing was changed",
    )
    assert write_count(srv) == 0 and not (tmp_path / "out").exists()
    assert srv.cache("pub").is_public is False


def test_retention_change_without_cq_says_so(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv, srv.make_token({"team": {"r": 1, "cr": 1}}, sub="admin"))
    srv.create_cache("team")
    config = write_config(
        tmp_path,
        f"server_url: {srv.url}\ncaches:\n  - {{name: team, priority: 1, retention_period: 7d}}\n",
    )
    result = run(capsys, config, secrets=(admin,))
    assert_one_error(result, 1, "configure_retention (cq)", "retention_period")
    assert write_count(srv) == 0 and srv.cache("team").priority == 41


def test_server_refusal_of_an_unreadable_token_is_reported(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An admin token that is not a JWT cannot be checked locally; the server's 401 decides."""
    monkeypatch.setenv("ATTIC_ADMIN_TOKEN", "opaque-admin-token-value")
    config = write_config(tmp_path, f"server_url: {srv.url}\ncaches:\n  - name: team\n")
    result = run(capsys, config, secrets=("opaque-admin-token-value",))
    assert result.code == 1
    assert (
        "401 Unauthorized" in result.err
        and "warning: the admin token is not a readable JWT" in result.err
    )
    assert write_count(srv) == 0


def test_expired_admin_token(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(
        monkeypatch, srv, srv.make_token({"*": list(FLAGS)}, exp=1_000_000_000, nbf=0)
    )
    config = write_config(tmp_path, f"server_url: {srv.url}\ncaches:\n  - name: team\n")
    result = run(capsys, config, secrets=(admin,))
    assert_one_error(result, 1, "expired at 2001-09-09T01:46:40Z")
    assert srv.requests == []


def test_signing_secret_of_another_server_is_refused(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    wrong = base64.b64encode(b"x" * 32).decode()
    monkeypatch.setenv("ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64", wrong)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    result = run(capsys, config, "--json", secrets=(admin, wrong))
    assert_one_error(result, 2, "did not sign the admin token")
    assert srv.requests == []


def test_unreachable_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setenv("ATTIC_ADMIN_TOKEN", "x" * 40)
    config = write_config(tmp_path, f"server_url: {url}\ncaches:\n  - name: team\n")
    result = run(capsys, config, secrets=("x" * 40,))
    assert result.code == 1
    assert f"error: cannot reach Attic server at {url}: connection refused" in result.err
    assert result.err.count("error:") == 1 and result.out == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "say where they go"),
        (["--output-dir", "d", "--json"], "not allowed with argument"),
    ],
)
def test_usage_errors(
    args: list[str],
    needle: str,
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_env(monkeypatch, srv)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    result = run(capsys, config, *args)
    assert result.code == 2 and needle in result.err
    assert srv.requests == []


def test_no_signing_secret(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ATTIC_ADMIN_TOKEN", srv.root_token())
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    result = run(capsys, config, "--json")
    assert_one_error(result, 2, "no signing secret")
    assert srv.requests == []
    assert run(capsys, config, "--no-tokens").code == 0  # caches only: no secret needed
    assert srv.caches() == ["pub", "team"]


# -- units -----------------------------------------------------------------------------------


def grants(**flags: str) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((p.replace("STAR", "*"), frozenset(f.split())) for p, f in flags.items())


def test_caches_claim_orders_and_merges() -> None:
    claim = caches_claim(
        (
            ("*", frozenset({"r"})),
            ("starlite-*", frozenset({"w"})),
            ("starlite-x", frozenset({"cr"})),
            ("*", frozenset({"d"})),
        )
    )
    assert list(claim.items()) == [
        ("starlite-x", {"r": 1, "w": 1, "d": 1, "cr": 1}),
        ("starlite-*", {"r": 1, "w": 1, "d": 1}),
        ("*", {"r": 1, "d": 1}),
    ]
    # whatever name Attic looks up, first-match gives the union of the matching grants
    assert permission_for(claim, "starlite-y") == ("starlite-*", {"r", "w", "d"})
    assert permission_for(claim, "other") == ("*", {"r", "d"})


def test_overlapping_patterns_warn() -> None:
    spec = TokenSpec("t", "t", (("a*", frozenset({"w"})), ("*b", frozenset({"cd"}))), 60)
    assert patterns_overlap("a*", "*b") and not patterns_overlap("a*", "b*")
    assert patterns_overlap("a*c", "*b*") and not patterns_overlap("x*y", "x*z")
    [warning] = shadowed_grants(spec)
    assert "'a*' and '*b'" in warning and "destroy_cache" in warning
    nested = TokenSpec("t", "t", (("*", frozenset({"r"})), ("a*", frozenset({"w"}))), 60)
    assert shadowed_grants(nested) == []


def test_durations_and_retention() -> None:
    assert parse_duration("90d", "x") == 90 * 86400
    assert parse_duration("1d12h", "x") == 36 * 3600
    assert parse_duration("2w", "x") == 14 * 86400 and parse_duration("1y", "x") == 365 * 86400
    assert parse_retention("never", "x") == 0 and parse_retention("global", "x") == "global"
    for bad in ("", "7", "7x", "-1d", "d", "1.5d", 7, None):
        with pytest.raises(ConfigError):
            parse_duration(bad, "x")
    with pytest.raises(ConfigError, match="too long"):
        parse_retention("100000d", "x")


# -- the documentation and the Kubernetes example stay true ------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _doc_block(text: str, after: str, fence: str) -> str:
    start = text.index(fence, text.index(after)) + len(fence)
    return text[start : text.index("```", start)]


def test_docs_example_and_its_dry_run_output(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = (ROOT / "docs" / "provisioning.md").read_text()
    config = write_config(tmp_path, _doc_block(doc, "## The YAML file", "```yaml\n"))
    console = _doc_block(doc, "## What a run does", "```console\n")
    expected = console.split("--dry-run\n", 1)[1].split("\n\n", 1)[0].splitlines()
    srv.create_cache("team")
    srv.create_cache("legacy")
    srv.create_cache("scratch")
    admin = admin_env(monkeypatch, srv)
    monkeypatch.setenv("ATTIC_SERVER_URL", srv.url)
    result = run(capsys, config, "--dry-run", secrets=(admin,))
    assert result.code == 0, result.err
    # the doc's server and keys are examples: compare the pull lines up to the key's value
    got = result.out.replace(srv.url, "https://attic.example.com/")
    assert _no_key_values(got.splitlines()) == _no_key_values(expected)


def _no_key_values(lines: list[str]) -> list[str]:
    return [re.sub(r"(public key [\w+-]+):\S+", r"\1:…", line) for line in lines]


def test_kubernetes_example_is_consistent() -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "k8s" / "provision-job.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    config_map, job = kinds["ConfigMap"], kinds["Job"]
    cfg = spec.parse_config(
        yaml.safe_load(config_map["data"]["attic.yaml"]),
        source="attic.yaml",
        env={"ATTIC_ADMIN_TOKEN": "x"},
    )
    assert [c.name for c in cfg.caches] and [t.name for t in cfg.tokens]
    pod = job["spec"]["template"]["spec"]
    [step] = pod["initContainers"]
    assert step["command"][:4] == ["hookd", "provision", "--config", "/config/attic.yaml"]
    out_dir = step["command"][step["command"].index("--output-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in step["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/config"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "emptyDir" in volumes[mounts[out_dir]]
    assert step["envFrom"][0]["secretRef"]["name"] == "attic-provision"
    [publish] = pod["containers"]
    assert any(m["mountPath"] == out_dir for m in publish["volumeMounts"])


# -- attic-provision compatibility (issue 11) -------------------------------------------------

# attic-provision's own example ("Config Format" in its README), verbatim: its server_url and
# admin_token are placeholders, replaced through the environment variables that tool documents.
ATTIC_PROVISION_EXAMPLE = """\
server_url: "http://attic-server.infrastructure.svc.cluster.local"
admin_token: "admin-token-from-secret"

caches:
  - name: "my-project"
    public: false
    retention_period: "30d"

tokens:
  - name: "project-builder"
    cache: "my-project"
    read: true
    write: true
"""


def attic_provision_script() -> Path:
    script = Path(sys.executable).parent / "attic-provision"
    if not script.exists():
        pytest.skip("the attic-provision console script is not installed: run scripts/setup.sh")
    return script


def test_attic_provision_reads_its_own_example_and_prints_netrc_lines(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, ATTIC_PROVISION_EXAMPLE)
    admin = srv.root_token(sub="admin")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ATTIC_")},
        "ATTIC_SERVER_URL": srv.url,
        "ATTIC_ADMIN_TOKEN": admin,
        "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64": srv.hs256_secret_b64,
    }
    proc = subprocess.run(
        [str(attic_provision_script()), "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cache = srv.cache("my-project")
    assert (cache.is_public, cache.retention_period) == (False, 30 * 86400)
    # stdout: exactly the netrc lines, as attic-provision printed them
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    words = lines[0].split()
    assert words[:5] == ["machine", "127.0.0.1", "login", "project-builder", "password"]
    token = words[5]
    claims = claims_of(token)
    assert claims[CLAIM_NAMESPACE]["caches"] == {"my-project": {"r": 1, "w": 1}}
    assert claims["exp"] - claims["nbf"] == 365 * 86400  # the documented default validity
    with httpx.Client(base_url=srv.url, auth=("project-builder", token)) as c:
        assert c.get("_api/v1/cache-config/my-project").status_code == 200
    # stderr: the warnings (tokens on stdout, inline admin_token), and never a secret
    assert "tokens are printed on stdout" in proc.stderr
    assert "admin_token is written in the file" in proc.stderr
    assert token not in proc.stderr and admin not in proc.stderr + proc.stdout
    assert "admin-token-from-secret" not in proc.stderr + proc.stdout


def test_attic_provision_dry_run_prints_no_token(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    monkeypatch.setenv("ATTIC_SERVER_URL", srv.url)
    config = write_config(tmp_path, ATTIC_PROVISION_EXAMPLE)
    code = command.main(["--config", str(config), "--dry-run"], prog="attic-provision")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == ""  # the plan is human output: stderr, like everything but tokens
    assert "+ create cache my-project" in captured.err
    assert "* mint token project-builder (valid 365d): my-project: pull push" in captured.err
    assert admin not in captured.err and write_count(srv) == 0


def test_hookd_provision_keeps_refusing_to_print_tokens(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_env(monkeypatch, srv)
    monkeypatch.setenv("ATTIC_SERVER_URL", srv.url)
    config = write_config(tmp_path, ATTIC_PROVISION_EXAMPLE)
    result = run(capsys, config)
    assert result.code == 2 and "--output-dir DIR, --netrc FILE or --json" in result.err
    assert write_count(srv) == 0


def test_without_a_signing_secret_the_error_explains_attics_missing_token_endpoint(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ATTIC_ADMIN_TOKEN", srv.root_token(sub="admin"))
    monkeypatch.setenv("ATTIC_SERVER_URL", srv.url)
    config = write_config(tmp_path, ATTIC_PROVISION_EXAMPLE)
    code = command.main(["--config", str(config)], prog="attic-provision")
    err = capsys.readouterr().err
    assert code == 2
    assert "POST /api/v1/tokens" in err and "--secret-file" in err
    assert write_count(srv) == 0 and srv.count(method="GET") == 0  # refused before any request


@pytest.mark.parametrize(
    ("token", "claim"),
    [
        ("{name: r, cache: team, read: true}", {"team": {"r": 1}}),
        ("{name: w, cache: team, write: true}", {"team": {"r": 1, "w": 1}}),
        ("{name: p, cache: 'team-*', read: true, write: false}", {"team-*": {"r": 1}}),
    ],
)
def test_attic_provision_token_form(token: str, claim: dict[str, dict[str, int]]) -> None:
    cfg = spec.parse_config(
        yaml.safe_load(f"server_url: http://a/\ntokens:\n  - {token}\n"), source="t.yaml"
    )
    assert cfg.tokens[0].caches_claim() == claim


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("{name: x, cache: team, read: false, write: false}", "set read: true and/or write: true"),
        ("{name: x, cache: team, read: yes please}", "read: expected true or false"),
        ("{name: x, read: true}", "'cache' is missing"),
        (
            "{name: x, cache: team, read: true, permissions: write}",
            "'permissions' cannot be combined with attic-provision's cache/read/write",
        ),
        ("{name: x, caches: [team], cache: team, write: true}", "'caches' cannot be combined"),
    ],
)
def test_attic_provision_token_form_errors(token: str, message: str) -> None:
    raw = yaml.safe_load(f"server_url: http://a/\ntokens:\n  - {token}\n")
    with pytest.raises(ConfigError) as err:
        spec.parse_config(raw, source="t.yaml")
    assert message in str(err.value)


# -- the pull side: substituters and public keys (issue 11) -----------------------------------


def test_nix_config_writes_substituters_and_keys_as_json_and_nix(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, srv)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    as_json, as_nix = tmp_path / "out" / "caches.json", tmp_path / "out" / "caches.nix"
    result = run(
        capsys,
        config,
        "--no-tokens",
        "--nix-config",
        str(as_json),
        "--nix-config",
        str(as_nix),
        secrets=(admin,),
    )
    assert result.code == 0, result.err
    base = srv.url.rstrip("/")
    keys = [srv.cache("team").public_key, srv.cache("pub").public_key]
    expected = {"substituters": [f"{base}/team", f"{base}/pub"], "trusted-public-keys": keys}
    assert json.loads(as_json.read_text()) == expected
    assert stat.S_IMODE(as_json.stat().st_mode) == 0o644
    # both caches were created by this run: their keys were read back and printed
    assert f"substituter {base}/team public key {keys[0]}" in result.out
    assert f"cache pub (public): substituter {base}/pub public key {keys[1]}" in result.out
    nix_instantiate = shutil.which("nix-instantiate")
    if nix_instantiate is None:
        pytest.skip("nix-instantiate not found: scripts/setup.sh installs Nix")
    proc = subprocess.run(
        [nix_instantiate, "--eval", "--strict", "--json", str(as_nix)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected  # the .nix file is the same attrset


def test_nix_config_with_an_unknown_suffix_is_refused_before_any_request(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_env(monkeypatch, srv)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    result = run(capsys, config, "--no-tokens", "--nix-config", str(tmp_path / "caches.conf"))
    assert result.code == 2 and "must end in .json or .nix" in result.err
    assert srv.count(method="GET") == 0 and write_count(srv) == 0


def test_dry_run_writes_no_nix_config(
    srv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_env(monkeypatch, srv)
    config = write_config(tmp_path, BASIC.format(url=srv.url))
    target = tmp_path / "caches.json"
    result = run(capsys, config, "--dry-run", "--no-tokens", "--nix-config", str(target))
    assert result.code == 0, result.err
    assert not target.exists()


# -- one duration syntax, one parser ----------------------------------------------------------


def test_backfill_since_reads_the_same_durations_as_provision() -> None:
    from hookd.cli import _parse_since

    for text in ("1y", "2w", "1d12h", "90m"):
        age = time.time() - _parse_since(text)
        assert abs(age - parse_duration(text, "x")) < 60, text
    with pytest.raises(ConfigError):
        _parse_since("3 fortnights")


def test_provision_is_a_subcommand_of_hookds_parser() -> None:
    from hookd.cli import get_parser

    args = get_parser().parse_args(["provision", "--config", "a.yaml", "--dry-run", "--json"])
    assert (args.command, args.config, args.dry_run, args.json) == (
        "provision",
        Path("a.yaml"),
        True,
        True,
    )


def test_nix_config_strings_are_escaped(tmp_path: Path) -> None:
    """Whatever a URL or key holds, the .nix file evaluates to the same values as the JSON."""
    nix_instantiate = shutil.which("nix-instantiate")
    if nix_instantiate is None:
        pytest.skip("nix-instantiate not found: scripts/setup.sh installs Nix")
    caches = [
        PullSettings("a", 'http://h/a"b${x}\\c$', "a:k${y}=", public=True),
        PullSettings("b", "http://h/b", None, public=False),  # no key: substituter only
    ]
    path = tmp_path / "caches.nix"
    write_nix_config(path, caches, "t.yaml")
    proc = subprocess.run(
        [nix_instantiate, "--eval", "--strict", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "substituters": ['http://h/a"b${x}\\c$', "http://h/b"],
        "trusted-public-keys": ["a:k${y}="],
    }


def test_the_modules_fixture_is_what_provision_writes() -> None:
    """tests/nix/data/provision-nix-config.json feeds the pull modules' tests (pull.nixConfigFile):
    it must stay exactly what `--nix-config FILE.json` writes."""
    fixture = json.loads(
        (ROOT / "tests" / "nix" / "data" / "provision-nix-config.json").read_text()
    )
    caches = [
        PullSettings(url.rsplit("/", 1)[1], url, key, public=False)
        for url, key in zip(fixture["substituters"], fixture["trusted-public-keys"], strict=True)
    ]
    assert json.loads(render_json_config(caches)) == fixture
