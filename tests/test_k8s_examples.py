"""examples/k8s/ agrees with hookd and with the image the flake builds (nix/oci-image.nix).

No cluster runs here: these check what would otherwise fail only after `kubectl apply` — the
config hookd would refuse, a volume one container writes and the other never sees, a hook path
the image does not have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hookd.config import parse_config
from tests.conftest import ROOT

K8S = ROOT / "examples" / "k8s"
IMAGE_NIX = (ROOT / "nix" / "oci-image.nix").read_text()
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)


def load(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((K8S / name).read_text()) if d}


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def test_builder_pod_shares_store_socket_and_spool_and_its_config_is_valid() -> None:
    docs = load("hookd-builder.yaml")
    cm, sts = docs["ConfigMap"], docs["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    daemon, hookd = containers["nix-daemon"], containers["hookd"]
    config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]), source="config.yaml")
    socket_dir, state = str(Path(config.socket).parent), str(config.state_dir)
    # the hook (run by nix-daemon) reaches hookd: same socket dir, same spool, same store
    for path in ("/nix", socket_dir, state):
        assert mounts(daemon)[path] == mounts(hookd)[path], path
    assert config.spool_dir == config.state_dir / "spool"
    # the hook named in nix.conf is the one the image ships, with the same defaults
    hook = re.search(r"^post-build-hook = (\S+)$", cm["data"]["nix.conf"], re.M)
    assert hook and hook[1] == "/bin/hookd-post-build-hook"
    assert 'writeShellScriptBin "hookd-post-build-hook"' in IMAGE_NIX
    assert f"HOOKD_SOCKET:-{config.socket}" in IMAGE_NIX
    assert f"HOOKD_SPOOL_DIR:-{config.spool_dir}" in IMAGE_NIX
    # hookd reads the store through the daemon and its config from the mounted ConfigMap
    env = {e["name"]: e["value"] for e in hookd["env"]}
    assert env["NIX_REMOTE"] == "daemon"
    assert hookd["args"][hookd["args"].index("--config") + 1].startswith(
        next(p for p, n in mounts(hookd).items() if n == "hookd-config")
    )
    # the token file lives in the Secret the provision Job publishes
    (server,) = config.servers.values()
    assert server.token_file is not None
    secret_mount = next(p for p, n in mounts(hookd).items() if n == "attic-tokens")
    assert server.token_file.parent == Path(secret_mount)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["attic-tokens"]["secret"]["secretName"] == "attic-tokens"
    provision = load("provision-job.yaml")["ConfigMap"]["data"]["attic.yaml"]
    token_names = [t["name"] for t in yaml.safe_load(provision)["tokens"]]
    assert server.token_file.name.removesuffix(".token") in token_names
    # the store and the queue survive the pod; the socket dir is not on disk
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert {"nix", "hookd-state"} <= claims and "emptyDir" in volumes["hookd-run"]
    # hookd gets SIGTERM's grace: longer than its own upload.stop_timeout
    assert pod["terminationGracePeriodSeconds"] > config.upload.stop_timeout


def test_examples_use_the_image_the_flake_builds() -> None:
    assert VERSION is not None
    tag = f"hookd:{VERSION[1]}"
    assert 'name = "hookd"' in IMAGE_NIX and "tag ? hookd.version" in IMAGE_NIX
    for name in ("hookd-builder.yaml", "provision-job.yaml"):
        images = re.findall(r"^\s*image: (\S+)", (K8S / name).read_text(), re.M)
        ours = [i for i in images if "hookd" in i]
        assert ours and all(i == tag for i in ours), (name, images)
