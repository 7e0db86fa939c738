"""docs/migrating.md: every configuration marked `<!-- eval: KIND NAME -->` is evaluated.

Nix snippets are evaluated in the real NixOS and home-manager module systems
(tests/nix/cases/migrating.nix; trees as in tests/test_nix_modules.py) and must pass hookd's
assertions; the "before" configurations of nix-attic-infra are evaluated against hookd's modules,
since they are meant to work unchanged. attic-provision's YAML goes through `hookd provision`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.attic_server import FLAGS, AtticTestServer
from tests.conftest import HOOKD
from tests.test_nix_modules import (
    NIX_DIR,
    NIX_INSTANTIATE,
    REPO,
    SOURCES,
    evaluate_expr,
    hookd_parses,
    load_yaml,
    needs_trees,
    nix_path,
)

DOC = REPO / "docs" / "migrating.md"
MARKER = re.compile(r"<!-- eval: (\S+) (\S+) -->\n```(\w+)\n(.*?)\n```", re.S)
NIX_KINDS = {
    "nixos-flake",
    "nixos",
    "nixos-with-attic-client",
    "nixos-plain",
    "home-manager",
    "home-manager-sops",
}


def snippets() -> list[tuple[str, str, str]]:
    """(kind, name, text) of each marked block, in the page's order."""
    found = [(kind, name, text) for kind, name, _, text in MARKER.findall(DOC.read_text())]
    assert found, "no <!-- eval: --> blocks in docs/migrating.md"
    return found


def test_every_block_is_marked_and_known() -> None:
    text = DOC.read_text()
    marked = snippets()
    names = [name for _, name, _ in marked]
    assert len(names) == len(set(names))
    assert {kind for kind, _, _ in marked} <= NIX_KINDS | {"provision-yaml"}
    # Only queued-build-hook's "before" is not evaluated (its module comes from its own flake).
    fences = re.findall(r"```(nix|yaml)\n", text)
    assert len(fences) == len(marked) + 1
    # the seed's quick start, verbatim
    assert (
        'services.attic-post-build-hook = {\n            enable = true;\n            cacheName = "my-team-cache";\n            user = "builder";'
        in text
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if NIX_INSTANTIATE is None or not (SOURCES / "nixpkgs/lib/default.nix").is_file():
        pytest.skip("needs nix-instantiate and the module trees (see tests/test_nix_modules.py)")
    d = tmp_path_factory.mktemp("migrating")
    (d / "caches.json").write_text(
        json.dumps(
            {
                "substituters": ["http://attic-server.infrastructure.svc.cluster.local/my-project"],
                "trusted-public-keys": ["my-project:1aL6vcQ7mKF0oEXlHsV330qXTMfafsN2radupW8OSMM="],
            }
        )
    )
    listing = []
    for kind, name, text in snippets():
        if kind not in NIX_KINDS:
            continue
        path = d / f"{name}.nix"
        path.write_text(text if kind == "nixos-flake" else f"nix-attic-infra:\n{text}\n")
        listing.append({"kind": kind, "name": name, "file": str(path)})
    (d / "snippets.json").write_text(json.dumps(listing))
    expr = (
        f"e: import ({nix_path(NIX_DIR / 'cases' / 'migrating.nix')}) e "
        f"(builtins.fromJSON (builtins.readFile ({nix_path(d / 'snippets.json')})))"
    )
    return evaluate_expr(expr, "the migration snippets")


def nix_conf(text: str) -> dict[str, str]:
    return dict(
        line.split(" = ", 1) for line in text.splitlines() if " = " in line and line[0] != "#"
    )


@pytest.mark.modules
@needs_trees
class TestMigrating:
    def test_every_configuration_passes(self, evaluated: Any) -> None:
        views: list[tuple[str, dict[str, Any]]] = []
        for name, result in evaluated.items():
            if "failed" in result:
                views.append((name, result))
            else:  # a flake: one view per nixosConfiguration
                views += [(f"{name}.{host}", v) for host, v in result.items()]
        assert len(views) == sum(1 for kind, _, _ in snippets() if kind in NIX_KINDS)
        for name, view in views:
            assert view["failed"] == [], name

    def test_quick_start(self, evaluated: Any, mp: pytest.MonkeyPatch) -> None:
        host = evaluated["quick-start"]["myhost"]
        data = load_yaml(host["yaml"])
        assert data["targets"] == [{"server": "default", "cache": "my-team-cache"}]
        assert data["attic_config"] == "/home/builder/.config/attic/config.toml"
        assert host["postBuildHook"].endswith("-hookd-post-build-hook")
        after = evaluated["quick-start-after"]
        assert (
            "https://cache.example.com/my-team-cache" in nix_conf(after["nixConf"])["substituters"]
        )
        hookd_parses(after["yaml"], mp)

    def test_attic_infra_options(self, evaluated: Any, mp: pytest.MonkeyPatch) -> None:
        data = load_yaml(evaluated["attic-infra-options"]["yaml"])
        assert data["servers"]["attic"]["endpoint"] == "https://cache.example.com"
        assert data["log"] == {"level": "debug"}
        hookd_parses(evaluated["attic-infra-options"]["yaml"], mp)
        client = nix_conf(evaluated["attic-client"]["nixConf"])
        assert client["substituters"].split()[0] == "https://cache.example.com/main"
        assert client["netrc-file"] == "/run/hookd-pull/netrc"

    def test_home_manager(self, evaluated: Any, mp: pytest.MonkeyPatch) -> None:
        assert evaluated["attic-client-hm"]["atticToml"]["servers"]["my-server"] == {
            "endpoint": "https://cache.example.com",
            "token-file": "/home/user/.config/sops/attic-token",
        }
        sops = evaluated["attic-client-sops"]["atticToml"]["servers"]["prod"]
        assert sops["token-file"] == "/home/user/.config/sops/attic-token"
        after = evaluated["attic-client-hm-after"]
        assert nix_conf(after["nixConf"])["substituters"] == "https://cache.example.com/main"
        assert load_yaml(after["yaml"])["targets"] == [{"server": "my-server", "cache": "main"}]
        hookd_parses(after["yaml"], mp)

    def test_watch_store(self, evaluated: Any, mp: pytest.MonkeyPatch) -> None:
        assert evaluated["watch-store"]["yaml"] is None  # hookd not enabled: attic pushes
        after = evaluated["watch-store-after"]
        assert load_yaml(after["yaml"])["targets"] == [{"server": "prod", "cache": "main"}]
        hookd_parses(after["yaml"], mp)

    def test_queued_build_hook_and_nix_copy(self, evaluated: Any, mp: pytest.MonkeyPatch) -> None:
        hookd_parses(evaluated["queued-build-hook-after"]["yaml"], mp)
        before = evaluated["nix-copy"]
        assert before["postBuildHook"].endswith("-upload-to-cache") and before["yaml"] is None
        after = load_yaml(evaluated["nix-copy-after"]["yaml"])
        assert after["targets"] == [
            {"store": "s3://example-nix-cache", "secret_key_file": "/run/secrets/nix-cache-key"}
        ]
        hookd_parses(evaluated["nix-copy-after"]["yaml"], mp)

    def test_substituters_by_hand(self, evaluated: Any) -> None:
        before = nix_conf(evaluated["substituters-by-hand"]["nixConf"])
        after = nix_conf(evaluated["substituters-after"]["nixConf"])
        assert before["substituters"] == after["substituters"]
        assert before["trusted-public-keys"] == after["trusted-public-keys"]
        assert "netrc-file" not in before and after["netrc-file"] == "/run/hookd-pull/netrc"

    def test_provision_nix_config(self, evaluated: Any) -> None:
        conf = nix_conf(evaluated["provision-nix-config"]["nixConf"])
        assert conf["substituters"].split()[0] == (
            "http://attic-server.infrastructure.svc.cluster.local/my-project?priority=30"
        )
        assert "my-project:" in conf["trusted-public-keys"]
        assert conf["netrc-file"] == "/run/hookd-pull/netrc"


@pytest.fixture
def mp(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return monkeypatch


def test_attic_provision_yaml(tmp_path: Path) -> None:
    """attic-provision's own example, unchanged, in a dry run against the Attic test server
    (server_url overridden by ATTIC_SERVER_URL, as attic-provision allows)."""
    [(_, _, text)] = [s for s in snippets() if s[0] == "provision-yaml"]
    config = tmp_path / "attic.yaml"
    config.write_text(text + "\n")
    with AtticTestServer(algorithm="HS256") as srv:
        admin = srv.make_token({"*": FLAGS}, sub="admin")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTIC_", "HOOKD_"))}
        # the signing secret too: tokens are minted with it (Attic has no token endpoint), and
        # a dry run checks it like every other input
        env.update(
            ATTIC_SERVER_URL=srv.url,
            ATTIC_ADMIN_TOKEN=admin,
            ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64=srv.hs256_secret_b64,
        )
        proc = subprocess.run(
            [HOOKD, "provision", "--config", str(config), "--dry-run"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert "my-project" in proc.stdout + proc.stderr
    assert admin not in proc.stdout + proc.stderr
