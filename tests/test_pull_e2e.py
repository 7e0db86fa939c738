"""A host configured only with hookd's modules pushes to a cache and substitutes from it.

The NixOS module is evaluated in the real module system (trees as in tests/test_nix_modules.py)
with the Attic test server's URL, cache key and a token file; then, for real:
- hookd's daemon runs with the YAML the module rendered (systemd's parts stood in for: the
  state directory and socket, and the LoadCredential copy of the token, which is the file itself);
- a real Nix build goes through the post-build hook and the daemon pushes the closure;
- the module's own netrc script assembles the netrc from the token file;
- real Nix substitutes the closure into a clean store with the substituters, trusted keys and
  netrc-file the module put into nix.conf (and fails without the netrc: the cache is private).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.attic_server import AtticTestServer
from tests.conftest import (
    HookdProcess,
    needs_nix,
    nix_build,
    nonce,
    path_info,
    requisites,
    write_token,
)
from tests.test_nix_modules import evaluate_expr, needs_trees, nix_path

pytestmark = [needs_nix, needs_trees, pytest.mark.nix]

# Keys of the rendered YAML that systemd provides on NixOS (directories, the socket, the group).
SYSTEMD_KEYS = {"socket", "state_dir", "spool_dir", "allowed_groups"}
CREDENTIALS = "/run/credentials/hookd.service/"


def evaluate_host(tmp_path: Path, host: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a NixOS host whose services.attic-post-build-hook is `host` (JSON) and return
    hookd's YAML, the nix.conf settings and the netrc script."""
    (tmp_path / "host.json").write_text(json.dumps(host))
    case = tmp_path / "case.nix"
    case.write_text(
        """e:
let
  ev = e.nixos {
    modules = [
      e.flakeModules.nixos
      { services.attic-post-build-hook = builtins.fromJSON (builtins.readFile ./host.json); }
    ];
  };
  c = ev.config;
  files = [ "nix/modules/nixos.nix" "nix/modules/pull-nixos.nix" "nix/modules/compat-attic-infra.nix" ];
in
{
  failed = e.lib.concatMap (e.failedFrom ev) files;
  yaml = c.environment.etc."hookd/config.yaml".source.text or null;
  nixConf = c.environment.etc."nix/nix.conf".source.text;
  inherit (c.nix.settings) substituters trusted-public-keys netrc-file;
  netrcScript = c.services.attic-post-build-hook.pull.netrcScript.text;
  netrcUnitExec = c.systemd.services.hookd-netrc.serviceConfig.ExecStart;
}
"""
    )
    result: dict[str, Any] = evaluate_expr(f"import ({nix_path(case)})", "the host")
    return result


def run_netrc_script(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "hookd-netrc"
    script.write_text(text)
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def substitute_with(
    store: Path, paths: list[str], settings: dict[str, Any], netrc: bool
) -> subprocess.CompletedProcess[str]:
    argv = ["nix-store", "--store", str(store), "-r", *paths]
    options = {
        "substituters": " ".join(settings["substituters"]),
        "trusted-public-keys": " ".join(settings["trusted-public-keys"]),
        "require-sigs": "true",
        "narinfo-cache-negative-ttl": "0",
        "narinfo-cache-positive-ttl": "0",
        "download-attempts": "1",
    }
    if netrc:
        options["netrc-file"] = settings["netrc-file"]
    for key, value in options.items():
        argv += ["--option", key, value]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def test_module_configured_host_pushes_and_substitutes(tmp_path: Path) -> None:
    with AtticTestServer(algorithm="HS256") as srv:
        srv.create_cache("team", public=False, upstream=[])
        token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="builder")
        token_file = write_token(tmp_path / "secrets" / "attic-token", token)
        netrc_file = tmp_path / "run" / "hookd-pull" / "netrc"
        host = {
            "enable": True,
            "cacheName": "team",
            "servers": {"lab": {"endpoint": srv.url, "tokenFile": str(token_file)}},
            "pull": {
                "enable": True,
                "caches": {"team": {"url": srv.url + "team", "publicKey": srv.public_key("team")}},
                "netrcFile": str(netrc_file),
            },
        }
        ev = evaluate_host(tmp_path, host)
        assert ev["failed"] == []
        # nothing secret was evaluated: the token is in no generated file
        assert token not in json.dumps(ev)
        conf = ev["nixConf"]
        mine = [s for s in ev["substituters"] if s.startswith(srv.url)]
        assert mine == [srv.url + "team"]
        assert f"netrc-file = {netrc_file}\n" in conf
        assert srv.public_key("team") in conf and srv.url + "team" in conf
        pull = {
            "substituters": mine,
            "trusted-public-keys": ev["trusted-public-keys"],
            "netrc-file": ev["netrc-file"],
        }

        # The daemon, with the module's YAML.
        rendered = yaml.safe_load(ev["yaml"])
        settings = {k: v for k, v in rendered.items() if k not in SYSTEMD_KEYS}
        server = settings["servers"]["lab"]
        assert server["token_file"] == CREDENTIALS + "attic-lab"
        server["token_file"] = str(token_file)  # what LoadCredential hands the service
        assert settings["targets"] == [{"server": "lab", "cache": "team"}]
        (tmp_path / "daemon").mkdir()
        hookd = HookdProcess(tmp_path / "daemon", settings)
        hookd.start()

        # A real build through the post-build hook; the daemon pushes its closure.
        n = nonce()
        proc = nix_build(["d"], nonce_value=n, hook=hookd.hook_script)
        outs = [line for line in proc.stdout.split() if line.startswith("/nix/store/")]
        assert hookd.client.wait(timeout=120)["drained"]
        closure = sorted(requisites(outs))
        stored = srv.objects("team")
        assert {Path(p).name.split("-", 1)[0] for p in closure} <= set(stored)
        assert token not in hookd.log()
        hookd.stop()

        # The private cache refuses anonymous pulls...
        anonymous = substitute_with(tmp_path / "clean-anon", closure, pull, netrc=False)
        assert anonymous.returncode != 0

        # ...and the module's own netrc script gives Nix the credentials.
        made = run_netrc_script(tmp_path, ev["netrcScript"])
        assert made.returncode == 0, made.stderr
        assert token not in made.stderr
        assert stat.S_IMODE(netrc_file.stat().st_mode) == 0o600
        assert netrc_file.read_text() == f"machine 127.0.0.1\nlogin bearer\npassword {token}\n"

        clean = tmp_path / "clean"
        got = substitute_with(clean, closure, pull, netrc=True)
        assert got.returncode == 0, got.stderr
        there = path_info(closure, store=str(clean))
        here = path_info(closure)
        assert all(there[p]["narHash"] == here[p]["narHash"] for p in closure)

        # Rotation: the script (run by hookd-netrc.path on a change) writes the new token.
        new = srv.make_token({"team": {"r": 1}}, sub="builder-2")
        write_token(token_file, new)
        assert run_netrc_script(tmp_path, ev["netrcScript"]).returncode == 0
        assert netrc_file.read_text().endswith(f"password {new}\n")


def test_netrc_script_keeps_going_without_a_token(tmp_path: Path) -> None:
    """A missing or empty token file: the other hosts' entries are still written, the script
    exits 1 naming the file, and no token is printed."""
    good = write_token(tmp_path / "good", "tok-good")
    empty = write_token(tmp_path / "empty", "  \n")
    netrc_file = tmp_path / "netrc"
    ev = evaluate_host(
        tmp_path,
        {
            "pull": {
                "enable": True,
                "caches": {"x": {"url": "https://a.example/x"}},
                "netrc": {
                    "a.example": str(good),
                    "b.example": str(tmp_path / "missing"),
                    "c.example": str(empty),
                },
                "netrcFile": str(netrc_file),
            }
        },
    )
    assert ev["failed"] == []
    made = run_netrc_script(tmp_path, ev["netrcScript"])
    assert made.returncode == 1
    assert f"{tmp_path / 'missing'} for b.example is missing" in made.stderr
    assert f"{empty} for c.example is empty" in made.stderr
    assert "tok-good" not in made.stderr
    assert netrc_file.read_text() == "machine a.example\nlogin bearer\npassword tok-good\n"
    assert [p.name for p in tmp_path.iterdir() if ".tmp." in p.name] == []
