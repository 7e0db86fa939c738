"""The pull side and nix-attic-infra compatibility, evaluated in the real module systems.

tests/nix/cases/pull.nix evaluates hosts in the real NixOS, nix-darwin and home-manager module
systems (see tests/test_nix_modules.py for the trees and the fake package set): the rendered
nix.conf, the netrc units, hookd's YAML (fed to hookd's own parser), and the assertions that
print the fix. The netrc script itself runs for real in tests/test_pull_e2e.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.test_nix_modules import evaluate as evaluate_case
from tests.test_nix_modules import (
    hookd_parses,
    load_yaml,
    needs_trees,
    unit_sections,
)

pytestmark = [pytest.mark.modules, needs_trees]

KEY = "main:1aL6vcQ7mKF0oEXlHsV330qXTMfafsN2radupW8OSMM="
PROVISION_KEY = "team:VGhpcyBpcyBub3QgYSByZWFsIGtleSwganVzdCBhIHRlc3Q="
NIXOS_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


@pytest.fixture(scope="module")
def pull() -> Any:
    return evaluate_case("pull")


def nix_conf(text: str) -> dict[str, str]:
    """nix.conf as {key: value}; every key once (Nix itself would take the last)."""
    conf: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(" = ")
        assert sep, line
        assert key not in conf, f"{key} twice in nix.conf"
        conf[key] = value.strip()
    return conf


def netrc_entries(script: str) -> list[tuple[str, str]]:
    """The (host, token file) pairs the netrc script writes, from its `entry HOST FILE` lines."""
    calls = [shlex.split(line) for line in script.splitlines() if line.startswith("entry ")]
    return [(host, file) for _, host, file in calls]


class TestNixOS:
    def test_pull_only_host(self, pull: Any) -> None:
        h = pull["nixos"]["pullOnly"]
        assert h["failed"] == [] and h["warnings"] == []
        assert not h["hasDaemon"] and h["yaml"] is None  # no daemon on a pull-only host
        conf = nix_conf(h["nixConf"])
        # priority per cache, pull.priority for the caches from `hookd provision --nix-config`;
        # NixOS keeps cache.nixos.org
        assert conf["substituters"].split() == [
            "https://cache.example.com/main?priority=30",
            "https://attic.example.org/team?priority=45",
            "https://cache.nixos.org/",
        ]
        assert set(conf["trusted-public-keys"].split()) == {KEY, PROVISION_KEY, NIXOS_KEY}
        assert conf["netrc-file"] == "/run/hookd-pull/netrc"
        assert "post-build-hook" not in conf
        # the netrc: written at run time by a root oneshot, before nix-daemon, rewritten when the
        # token file changes; the store only holds the script, which names the file, not a token
        assert netrc_entries(h["netrcScriptText"]) == [
            ("cache.example.com", "/run/secrets/attic-pull-token")
        ]
        unit = unit_sections(h["netrcUnit"])
        assert unit["Service"]["ExecStart"] == [h["netrcScript"]]
        assert unit["Service"]["Type"] == ["oneshot"] and unit["Service"]["UMask"] == ["0077"]
        assert "User" not in unit["Service"]  # root: the netrc is root-only
        assert unit["Unit"]["Before"] == ["nix-daemon.service"]
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]
        path = unit_sections(h["netrcPathUnit"])
        assert path["Path"]["PathChanged"] == ["/run/secrets/attic-pull-token"]
        assert path["Path"]["Unit"] == ["hookd-netrc-rotated.service"]
        rotated = unit_sections(h["rotatedUnit"])
        assert rotated["Service"]["ExecStart"] == [h["netrcScript"]]

    def test_one_token_pushes_and_pulls(self, pull: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        h = pull["nixos"]["pushAndPull"]
        assert h["failed"] == [] and h["hasDaemon"]
        conf = nix_conf(h["nixConf"])
        assert conf["substituters"].split()[0] == "https://cache.example.com/main"
        assert conf["netrc-file"] == "/run/hookd-pull/netrc"
        assert conf["post-build-hook"].startswith("/nix/store/")
        # the server's token file is the netrc entry for its host: the token is written once
        assert netrc_entries(h["netrcScriptText"]) == [
            ("cache.example.com", "/run/secrets/attic-token")
        ]
        cfg = hookd_parses(h["yaml"], monkeypatch)
        assert [t.cache for t in cfg.targets] == ["main"]  # type: ignore[union-attr]

    def test_public_caches_need_no_netrc(self, pull: Any) -> None:
        h = pull["nixos"]["publicOnly"]
        assert h["failed"] == []
        conf = nix_conf(h["nixConf"])
        assert conf["substituters"].split() == [
            "https://attic.example.org/team",
            "https://cache.nixos.org/",
        ]
        assert "netrc-file" not in conf
        assert h["netrcUnit"] is None and h["netrcPathUnit"] is None

    def test_mistakes_fail_with_the_fix(self, pull: Any) -> None:
        bad = pull["nixos"]["bad"]
        [nothing] = bad["nothing"]
        assert "no cache to pull from" in nothing and "hookd provision --nix-config" in nothing
        store, relative = bad["storeToken"]
        assert "cache.example.com" in store and "outside the Nix store" in store
        assert 'netrcFile = "relative/netrc"' in relative
        [server] = bad["cacheServer"]
        assert 'enabled on "atticd"' in server and "serverHostnames" in server
        assert "services.attic-post-build-hook.enable = false;" in server
        [own] = bad["ownServerList"]
        assert 'enabled on "builder"' in own
        [token] = bad["tokenWithoutEndpoint"]
        assert 'tokenFile = "/run/secrets/attic-token"; };' in token
        [hook] = bad["clientPostBuildHook"]
        assert (
            'services.attic-post-build-hook = { enable = true; cacheName = "main"; '
            'servers.attic-cache = { endpoint = "https://cache.example.com"; '
            'tokenFile = "/run/secrets/attic-client-token"; }; };'
        ) in hook


class TestAtticInfra:
    def test_quick_start_runs_as_the_attic_login_account(
        self, pull: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """nix-attic-infra's quick start, verbatim: hookd runs as `builder` and pushes with its
        `attic login` (~builder/.config/attic/config.toml) to the default server."""
        h = pull["nixos"]["quickStart"]
        assert h["failed"] == []
        [warning] = h["warnings"]
        assert 'user = "builder" is not declared' in warning
        assert h["daemonUser"] == "builder" and "hookd" in h["groups"]
        assert h["protectHome"] == "read-only"  # the config lives below /home
        data = load_yaml(h["yaml"])
        assert data["attic_config"] == "/home/builder/.config/attic/config.toml"
        assert data["targets"] == [{"server": "default", "cache": "my-team-cache"}]
        # What hookd makes of it, with the file `attic login` writes.
        login = tmp_path / "config.toml"
        login.write_text(
            'default-server = "team"\n\n[servers.team]\n'
            'endpoint = "https://attic.example.org/"\ntoken = "not-a-real-token"\n'
        )
        cfg = hookd_parses(h["yaml"].replace(data["attic_config"], str(login)), monkeypatch)
        [target] = cfg.targets
        assert (target.server, target.cache) == ("default", "my-team-cache")  # type: ignore[union-attr]
        assert cfg.servers["default"].endpoint.startswith("https://attic.example.org")

    def test_darwin_quick_start(self, pull: Any) -> None:
        h = pull["darwinAtticLogin"]
        assert h["failed"] == [] and h["userName"] == "builder"
        data = load_yaml(h["yaml"])
        assert data["attic_config"] == "/Users/builder/.config/attic/config.toml"
        assert data["targets"] == [{"server": "default", "cache": "my-team-cache"}]

    def test_both_module_names_are_one_module(self, pull: Any) -> None:
        h = pull["nixos"]["bothNames"]
        assert h["failed"] == [] and h["hasDaemon"]

    def test_its_other_hook_options_work(self, pull: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        h = pull["nixos"]["legacyOptions"]
        assert h["failed"] == []
        data = load_yaml(h["yaml"])
        assert data["servers"] == {
            "attic": {
                "endpoint": "https://cache.example.com",
                "token_file": "/run/credentials/hookd.service/attic-attic",
            }
        }
        assert data["targets"] == [{"server": "attic", "cache": "main"}]
        assert data["log"] == {"level": "debug"}  # verbose
        assert hookd_parses(h["yaml"], monkeypatch).log_level == "debug"
        assert h["daemonUser"] == "hookd"

    def test_nixos_attic_client_is_the_pull_side(self, pull: Any) -> None:
        h = pull["nixos"]["atticClient"]
        assert h["failed"] == [] and not h["hasDaemon"]
        conf = nix_conf(h["nixConf"])
        assert conf["substituters"].split()[0] == "https://cache.example.com/main"
        assert KEY in conf["trusted-public-keys"].split()
        assert conf["netrc-file"] == "/run/hookd-pull/netrc"
        assert netrc_entries(h["netrcScriptText"]) == [
            ("cache.example.com", "/run/secrets/attic-client-token")
        ]

    def test_home_manager_snippet_feeds_attic_and_hookd(
        self, pull: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """nix-attic-infra's programs.attic-client.servers: written to home-manager's own
        programs.attic-client.settings (attic's config.toml), and hookd's servers come from it."""
        h = pull["home"]["seedClient"]
        assert h["failed"] == [] and h["warnings"] == []
        assert h["atticToml"] == {
            "servers": {
                "my-server": {
                    "endpoint": "https://cache.example.com",
                    "token-file": "/home/user/.config/sops/attic-token",
                }
            }
        }
        data = load_yaml(h["yaml"])
        assert data["servers"] == {
            "my-server": {
                "endpoint": "https://cache.example.com",
                "token_file": "/home/user/.config/sops/attic-token",
            }
        }
        assert data["targets"] == [{"server": "my-server", "cache": "main"}]
        hookd_parses(h["yaml"], monkeypatch)
        d = pull["home"]["seedClientDarwin"]
        assert d["failed"] == [] and sorted(d["atticToml"]["servers"]) == [
            "development",
            "production",
        ]

    def test_home_manager_cache_name_alone_uses_attic_login(self, pull: Any) -> None:
        h = pull["home"]["atticLogin"]
        assert h["failed"] == []
        data = load_yaml(h["yaml"])
        assert data["attic_config"] == "/home/alice/.config/attic/config.toml"
        assert data["targets"] == [{"server": "default", "cache": "main"}]

    def test_watch_store_users_get_their_targets(
        self, pull: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        h = pull["home"]["watchStore"]
        assert h["failed"] == []
        data = load_yaml(h["yaml"])
        assert data["targets"] == [
            {"server": "prod", "cache": "main"},
            {"server": "prod", "cache": "nightly"},  # "cache" alone: the default server
        ]
        assert data["servers"]["prod"]["token_file"] == "/home/alice/.config/attic/prod-token"
        # attic watch-store's units stay defined but no longer start: hookd pushes instead
        assert h["watchStoreUnits"] == {
            "attic-watch-store--prod-main": [],
            "attic-watch-store--nightly": [],
        }
        [warning] = h["warnings"]
        assert "legacy" in warning and "token-file" in warning
        hookd_parses(h["yaml"], monkeypatch)


class TestDarwinAndHomeManager:
    def test_darwin(self, pull: Any) -> None:
        h = pull["darwin"]
        assert h["failed"] == [] and h["warnings"] == []
        conf = nix_conf(h["nixConf"])
        assert conf["substituters"].split()[:2] == [
            "https://cache.example.com/main?priority=30",
            "https://attic.example.org/team?priority=45",
        ]
        assert conf["netrc-file"] == "/var/run/hookd-pull/netrc"
        d = h["netrcDaemon"]
        assert d["RunAtLoad"] and d["WatchPaths"] == ["/var/run/secrets/attic-pull-token"]
        assert d["UserName"] is None  # root
        assert "<key>WatchPaths</key>" in h["netrcPlist"]
        assert "-hookd-netrc" in h["activation"]

    def test_home_manager_linux(self, pull: Any) -> None:
        h = pull["home"]["linux"]
        assert h["failed"] == []
        conf = nix_conf(h["nixConf"])
        assert conf["netrc-file"] == "/home/alice/.local/state/hookd/netrc"
        assert set(conf["trusted-public-keys"].split()) == {KEY, PROVISION_KEY}
        token = "/home/alice/.config/sops-nix/secrets/attic-token"
        assert h["userPath"]["Path"] == {"PathChanged": [token], "Unit": "hookd-netrc.service"}
        assert h["userService"]["Service"]["Type"] == "oneshot"
        assert "-hookd-netrc" in h["activation"]

    def test_home_manager_darwin(self, pull: Any) -> None:
        h = pull["home"]["darwin"]
        assert h["failed"] == []
        assert nix_conf(h["nixConf"])["netrc-file"] == "/Users/alice/.local/state/hookd/netrc"
        assert h["agent"]["WatchPaths"] == ["/Users/alice/.config/sops-nix/secrets/attic-token"]
        assert h["agent"]["RunAtLoad"]

    def test_home_manager_needs_nix_package(self, pull: Any) -> None:
        [message] = pull["home"]["noNixPackage"]
        assert "nix.package = pkgs.nix;" in message
