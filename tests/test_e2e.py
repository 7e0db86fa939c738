"""End to end on real Nix: builds → post-build hook → queue → store target → substitution."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.attic_server import AtticTestServer
from tests.conftest import (
    HOOKD,
    HOOKD_HOOK,
    HookdProcess,
    NixDaemon,
    instantiate,
    needs_nix,
    nix_build,
    nix_env,
    nonce,
    outputs_of,
    path_info,
    requisites,
    substitute,
    until,
    write_token,
)

pytestmark = [needs_nix, pytest.mark.nix]

GRAPH_ATTRS = ["d", "multi.out", "multi.dev", "multi.lib"]


def built_paths(stdout: str) -> list[str]:
    return [line for line in stdout.split() if line.startswith("/nix/store/")]


def assert_substitutes(hookd: HookdProcess, paths: list[str], tmp_path: Path) -> None:
    """Real Nix fetches every path from the cache into a clean store, signature checked."""
    clean = tmp_path / "clean-store"
    proc = substitute(
        paths, store_dir=clean, substituter=hookd.cache_url, public_key=hookd.public_key()
    )
    assert proc.returncode == 0, proc.stderr
    here = path_info(paths)
    there = path_info(paths, store=str(clean))
    assert set(there) == set(paths)
    for p in paths:
        assert there[p]["narHash"] == here[p]["narHash"]
        assert any(
            s.startswith(hookd.public_key().split(":")[0] + ":")
            for s in there[p].get("signatures", [])
        )
    # and a key that did not sign them is refused
    wrong = substitute(
        paths[:1],
        store_dir=tmp_path / "other-store",
        substituter=hookd.cache_url,
        public_key="someone-else-1:FeCt8u2RhKXGzHnwHmqVl6fX9qKziCt1yCz0L9IUfhY=",
    )
    assert wrong.returncode != 0
    assert "not signed by any of the keys" in wrong.stderr


def test_single_user_build_hook_push_substitute(hookd: HookdProcess, tmp_path: Path) -> None:
    hookd.start()
    proc = nix_build(GRAPH_ATTRS, nonce_value=nonce(), hook=hookd.hook_script)
    outs = built_paths(proc.stdout)
    assert len(outs) == 4
    reply = hookd.client.wait(timeout=120)
    assert reply["ok"] and reply["drained"], reply
    closure = sorted(requisites(outs))
    assert len(closure) == 7  # d, a, b, c + multi's out, dev, lib
    assert hookd.cached(closure) == set(closure)
    assert_substitutes(hookd, closure, tmp_path)
    status = hookd.status()
    (target,) = status["targets"]
    assert target["failed"] == 0 and target["parked"] == 0 and target["pending"] == 0
    assert status["default_cache"]["public_key"] == hookd.public_key()
    events = hookd.log_events()
    pushes = [e for e in events if e.get("event") == "push"]
    assert {e["path"] for e in pushes} == set(closure)
    for e in pushes:
        assert {"path", "target", "bytes", "ms", "result"} <= set(e)


def test_private_nix_daemon_hook_from_nix_conf(hookd: HookdProcess, tmp_path: Path) -> None:
    hookd.start()
    daemon = NixDaemon(tmp_path, hookd.hook_script)
    try:
        proc = nix_build(GRAPH_ATTRS, nonce_value=nonce(), env=daemon.client_env())
    finally:
        daemon.stop()
    # Nix 2.8 relays "running post-build-hook" from the daemon to the client; 2.26 does not
    # (docs/nix-versions.md): the proof that the daemon's hook ran is the pushed closure below.
    outs = built_paths(proc.stdout)
    assert hookd.client.wait(timeout=120)["drained"]
    closure = sorted(requisites(outs))
    assert hookd.cached(closure) == set(closure)
    assert_substitutes(hookd, closure, tmp_path)


def test_sources_and_drvs_are_not_pushed(hookd: HookdProcess) -> None:
    hookd.start()
    proc = nix_build(["src", "b"], nonce_value=nonce(), hook=hookd.hook_script)
    src, b = built_paths(proc.stdout)
    assert hookd.client.wait(timeout=60)["drained"]
    assert hookd.cached([src, b]) == {b}
    skips = [e for e in hookd.log_events() if e.get("event") == "skip"]
    assert any(e["path"] == src and "source" in e["reason"] for e in skips)


HOOK_BOUND = 2.0  # hookd/hook.py: the whole hook, from its exec
# Seen from outside, a hook's time also holds its fork/exec and interpreter start-up, which on
# a 2-core machine at load 10-20 take seconds of waiting for a CPU. The slack only separates
# "bounded" from "blocked on the daemon" (which runs into the 30 s subprocess timeout); the
# hook's own timing is measured in bench/hook_cost.py and bench/burst.py.
LOAD_SLACK = 10.0


def run_hook(
    env: dict[str, str], socket_path: Path, spool: Path, timeout: float = 30
) -> tuple[int, float, str]:
    start = time.monotonic()
    proc = subprocess.run(
        [HOOKD_HOOK, "--socket", str(socket_path), "--spool", str(spool)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, time.monotonic() - start, proc.stderr


def test_daemon_down_builds_succeed_and_paths_land_later(hookd: HookdProcess) -> None:
    n = nonce()
    proc = nix_build(GRAPH_ATTRS, nonce_value=n, hook=hookd.hook_script)  # no daemon running
    assert proc.returncode == 0
    assert (
        proc.stderr.count("daemon not reachable") == 5
    )  # one line per built derivation (multi is one)
    spooled = sorted(hookd.spool.glob("*.json"))
    assert len(spooled) == 5
    outs = built_paths(proc.stdout)
    hookd.start()
    assert hookd.client.wait(timeout=120)["drained"]
    closure = sorted(requisites(outs))
    assert hookd.cached(closure) == set(closure)
    assert not list(hookd.spool.glob("*.json"))  # deleted only after import


def test_hook_returns_within_2s_when_daemon_hangs(tmp_path: Path) -> None:
    """A socket that accepts but never answers (hung daemon): the hook gives up, spools, exits 0."""
    import socket as socketlib

    sock_path = tmp_path / "hung.sock"
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(100)
    drv = instantiate("b", nonce())
    env = nix_env(DRV_PATH=drv, OUT_PATHS="")
    try:
        rc, elapsed, err = run_hook(env, sock_path, tmp_path / "spool")
    finally:
        server.close()
    assert rc == 0
    # Bounded, not blocked on the hung daemon (that would take the 30 s subprocess timeout).
    # The hook bounds itself to 2 s from its exec; the slack covers process creation under
    # load. The hook's own timing is measured in bench/hook_cost.py, not asserted here.
    assert elapsed < HOOK_BOUND + LOAD_SLACK, elapsed
    assert "spooled" in err
    (spooled,) = list((tmp_path / "spool").glob("*.json"))
    assert json.loads(spooled.read_text())["drv_path"] == drv


def test_hook_exits_0_on_missing_socket_and_unwritable_spool(tmp_path: Path) -> None:
    env = nix_env(DRV_PATH=instantiate("b", nonce()), OUT_PATHS="")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, elapsed, err = run_hook(env, tmp_path / "missing.sock", blocker / "spool")
    assert rc == 0 and elapsed < HOOK_BOUND + LOAD_SLACK
    assert "spool failed" in err and "hookd backfill" in err
    rc, _, err = run_hook(nix_env(), tmp_path / "missing.sock", tmp_path / "spool")
    assert rc == 0 and "nothing to queue" in err


def test_hook_imports_only_the_standard_library() -> None:
    code = (
        "import sys, runpy; before=set(sys.modules); import hookd.hook; "
        "import json; print(json.dumps(sorted(set(sys.modules)-before)))"
    )
    out = subprocess.run(
        [os.path.join(os.path.dirname(HOOKD), "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(out.stdout)
    third_party = {"httpx", "h11", "yaml", "structlog", "watchfiles", "jwt", "cryptography"}
    assert not {m.split(".")[0] for m in loaded} & third_party, loaded
    assert [m for m in loaded if m.startswith("hookd")] == ["hookd", "hookd.hook"]


def test_fifty_concurrent_hooks_lose_nothing(hookd: HookdProcess) -> None:
    hookd.start()
    n = nonce()
    proc = nix_build(["many"], nonce_value=n, args={"count": "50"})
    outs = built_paths(proc.stdout)
    assert len(outs) == 50
    drvs = [path_info([o])[o]["deriver"] for o in outs]

    def one(drv: str) -> tuple[int, float, str]:
        return run_hook(nix_env(DRV_PATH=drv, OUT_PATHS=""), hookd.socket, hookd.spool)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, drvs))
    # What matters: every hook exits 0, bounded (not blocked on the daemon), and no path is
    # lost. Whether a hook got its acknowledgement or spooled depends on the machine's load,
    # and spooling is correct behaviour then: spool counts and per-hook times belong to the
    # burst benchmark (bench/burst.py).
    assert all(rc == 0 for rc, _, _ in results), results
    assert all(elapsed < HOOK_BOUND + LOAD_SLACK for _, elapsed, _ in results), [
        e for _, e, _ in results
    ]
    unexpected = [e for _, _, e in results if e and "spooled" not in e]
    assert not unexpected, unexpected  # silent, or the one line that says it spooled
    until(lambda: hookd.cached(outs) == set(outs), hookd, timeout=120)  # spool imported too
    assert hookd.client.wait(timeout=120)["drained"]
    assert not list(hookd.spool.glob("*.json"))


def test_kill9_during_push_loses_no_acknowledged_path(tmp_path: Path) -> None:
    # The push goes to the Attic test server, which holds every upload after the fourth: the
    # kill then provably lands mid-push (some paths done, one upload in flight, the rest queued)
    # however fast or loaded the machine is.
    with AtticTestServer() as srv:
        srv.create_cache("team")
        token = write_token(tmp_path / "secrets" / "prod.token", srv.root_token())
        hookd = HookdProcess(
            tmp_path,
            {
                "servers": {"prod": {"endpoint": srv.url, "token_file": str(token)}},
                "targets": [{"server": "prod", "cache": "team"}],
                "upload": {"batch_size": 2},
            },
        )
        srv.faults.upload_hold_after = 4
        hookd.start()
        n = nonce()
        proc = nix_build(["many"], nonce_value=n, args={"count": "40"})
        outs = built_paths(proc.stdout)
        acked = []
        for out in outs:
            reply = hookd.client.call({"op": "enqueue", "out_paths": [out], "source": "test"})
            assert reply["ok"]
            acked.append(out)
        # generous deadline: a poll returns as soon as a path is done and an upload is held
        until(
            lambda: srv.faults.uploads_held >= 1 and hookd.status()["targets"][0]["done"] > 0,
            hookd,
            timeout=120,
        )
        (t,) = hookd.status()["targets"]
        assert 0 < t["done"] < len(outs), t  # held uploads never finish: never all done
        hookd.kill9()
        srv.faults.upload_release.set()
        hookd.start()
        assert hookd.client.wait(timeout=300)["drained"]
        stored = srv.objects("team")
        assert {Path(p).name.split("-", 1)[0] for p in acked} <= set(stored)
        assert srv.errors == []
        hookd.stop()


def test_bad_requests_get_error_replies_and_daemon_keeps_serving(hookd: HookdProcess) -> None:
    hookd.start()
    good = "/nix/store/" + "a" * 32 + "-x"
    cases = {
        b'{"v":1,"op":"enqueue","out_paths":["relative/path"]}\n': "bad-path",
        b'{"v":1,"op":"enqueue","out_paths":["/tmp/x"]}\n': "outside-store",
        b'{"v":1,"op":"enqueue","out_paths":["/nix/store/../etc/passwd"]}\n': "bad-path",
        b'{"v":1,"op":"enqueue","out_paths":["/nix/store/'
        + b"a" * 32
        + b'-x\\u0000y"]}\n': "bad-path",
        b'{"v":1,"op":"enqueue","out_paths":["/nix/store/eeee-not-a-hash"]}\n': "bad-store-path",
        b'{"v":1,"op":"enqueue","out_paths":["' + good.encode() + b'/sub"]}\n': "bad-path",
        b"not json\n": "bad-json",
        b'{"v":1,"op":"explode"}\n': "bad-op",
        b'{"v":2,"op":"ping"}\n': "bad-version",
        b'["a list"]\n': "bad-request",
        b'{"v":1,"op":"enqueue","drv_path":"/nix/store/' + b"a" * 32 + b'-x"}\n': "bad-drv",
    }
    for payload, code in cases.items():
        reply = hookd.client.raw(payload)
        assert reply == {"v": 1, "ok": False, "error": code, "message": reply.get("message")}, (
            payload,
            reply,
        )
        assert reply["message"]
    big = b'{"v":1,"op":"enqueue","out_paths":["' + b"x" * (1024 * 1024 + 10) + b'"]}\n'
    assert hookd.client.raw(big)["error"] == "too-large"
    assert hookd.client.call({"op": "ping"})["ok"]
    logged = [e for e in hookd.log_events() if e.get("event") == "socket.bad_request"]
    assert len(logged) == len(cases) + 1
    assert hookd.proc is not None and hookd.proc.poll() is None


# The venv's interpreter lives under /root (pyenv), which uid 65534 cannot read.
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    not os.path.exists(SYSTEM_PYTHON) or os.geteuid() != 0,
    reason="needs root and /usr/bin/python3 to act as another uid",
)
def test_unlisted_peer_uid_is_refused(tmp_path: Path) -> None:
    import tempfile

    public = Path(tempfile.mkdtemp(prefix="hookd-peer-"))
    public.chmod(0o755)  # nobody must reach the socket file itself
    hookd = HookdProcess(tmp_path, {"socket": str(public / "hookd.sock")})
    hookd.socket = public / "hookd.sock"
    hookd.client.path = hookd.socket
    hookd.start()
    os.chmod(hookd.socket, 0o666)  # get past the file mode so SO_PEERCRED is what decides
    # The daemon may answer "forbidden" and close before the request is sent: tolerate EPIPE.
    code = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
try:
    s.sendall(b'{"v":1,"op":"ping"}\\n')
except BrokenPipeError:
    pass
print(s.recv(4096).decode())
"""
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", code, str(hookd.socket)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["ok"] is False and reply["error"] == "forbidden"
    assert "65534" in reply["message"]
    assert hookd.client.call({"op": "ping"})["ok"]  # root still served
    hookd.stop()


def test_corrupt_spool_file_moved_aside_and_live_import(hookd: HookdProcess) -> None:
    hookd.spool.mkdir(parents=True)
    (hookd.spool / "1-1.json").write_text("{broken")
    hookd.start()
    corrupt = hookd.spool / "corrupt" / "1-1.json"
    assert corrupt.exists()
    assert any(e.get("event") == "spool.corrupt" for e in hookd.log_events())
    # a valid spool file written while the daemon runs is imported by the watcher
    out = built_paths(nix_build(["b"], nonce_value=nonce()).stdout)[0]
    tmp = hookd.spool / ".x.tmp"
    tmp.write_text(json.dumps({"v": 1, "op": "enqueue", "out_paths": [out]}))
    tmp.rename(hookd.spool / "2-2.json")
    deadline = time.monotonic() + 120  # a poll: returns as soon as the condition holds
    while out not in hookd.cached([out]) and time.monotonic() < deadline:
        hookd.client.wait(timeout=1)
    assert hookd.cached([out]) == {out}


def test_queued_paths_are_pinned_against_gc_until_pushed(tmp_path: Path) -> None:
    # An unreachable HTTP store keeps the path queued (transient failures, retried).
    hookd = HookdProcess(tmp_path, {"targets": [{"store": "http://127.0.0.1:9/cache"}]})
    hookd.start()
    out = built_paths(nix_build(["b"], nonce_value=nonce()).stdout)[0]
    assert hookd.client.call({"op": "enqueue", "out_paths": [out]})["ok"]
    deadline = time.monotonic() + 120  # a poll: returns as soon as the condition holds
    while not hookd.status()["gc_roots"] and time.monotonic() < deadline:
        hookd.client.wait(timeout=0.5)
    assert hookd.status()["gc_roots"] == 1
    gc = subprocess.run(["nix-store", "--delete", out], capture_output=True, text=True, check=False)
    assert gc.returncode != 0 and "still alive" in gc.stderr
    deadline = time.monotonic() + 60
    while not hookd.status()["targets"][0]["last_error"] and time.monotonic() < deadline:
        hookd.client.wait(timeout=0.5)
    (t,) = hookd.status()["targets"]
    assert t["pending"] == 1 and "unreachable" in t["last_error"]
    hookd.client.call({"op": "drop", "paths": [out]})
    deadline = time.monotonic() + 120  # a poll: returns as soon as the condition holds
    while hookd.status()["gc_roots"] and time.monotonic() < deadline:
        hookd.client.wait(timeout=0.5)
    # Released: deletable now, or as soon as a `nix copy` still in flight exits (newer Nix counts
    # a running process's command line as a runtime root).
    deadline = time.monotonic() + 60
    while True:
        gc = subprocess.run(
            ["nix-store", "--delete", out], capture_output=True, text=True, check=False
        )
        if gc.returncode == 0 or time.monotonic() > deadline:
            break
        hookd.client.wait(timeout=0.5)
    assert gc.returncode == 0, gc.stderr
    hookd.stop()


def test_cli_push_wait_status_retry_drop(hookd: HookdProcess) -> None:
    hookd.start()
    out = built_paths(nix_build(["a"], nonce_value=nonce()).stdout)[0]
    env = nix_env(HOOKD_CONFIG=str(hookd.config_path))
    proc = subprocess.run(
        [HOOKD, "push", "--wait", "--timeout", "60", out],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 path(s) settled; 0 not pushed" in proc.stdout
    assert hookd.cached(sorted(requisites([out]))) == requisites([out])
    status = json.loads(
        subprocess.run(
            [HOOKD, "status", "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert status["targets"][0]["done"] >= 1
    proc = subprocess.run([HOOKD, "retry"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--all" in proc.stderr
    proc = subprocess.run(
        [HOOKD, "enqueue", "/tmp/not-in-store"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "outside the store" in proc.stderr
    proc = subprocess.run([HOOKD, "drop", out], env=env, capture_output=True, text=True, check=True)
    assert "dropped 1" in proc.stdout


def test_backfill_catches_paths_the_hook_missed(hookd: HookdProcess) -> None:
    hookd.start()
    since = time.time() - 1
    outs = built_paths(nix_build(["d"], nonce_value=nonce()).stdout)  # built without the hook
    reply = hookd.client.call({"op": "backfill", "since": since}, timeout=600)
    assert reply["ok"] and reply["queued"] >= 4
    assert hookd.client.wait(timeout=120)["drained"]
    closure = requisites(outs)
    assert hookd.cached(sorted(closure)) == closure


def test_sigterm_leaves_unfinished_work_queued(tmp_path: Path) -> None:
    hookd = HookdProcess(tmp_path, {"targets": [{"store": "http://127.0.0.1:9/cache"}]})
    hookd.start()
    out = built_paths(nix_build(["b"], nonce_value=nonce()).stdout)[0]
    assert hookd.client.call({"op": "enqueue", "out_paths": [out]})["ok"]
    start = time.monotonic()
    assert hookd.stop(signal.SIGTERM, timeout=120) == 0
    # Stopped without waiting for the unreachable target (its retries never end): stop_timeout
    # is 5 s, the rest is margin for a loaded machine.
    assert time.monotonic() - start < 60
    assert any(e.get("event") == "daemon.stopped" for e in hookd.log_events())
    # restart with a reachable target: the path is still queued and now lands
    import yaml

    cfg = yaml.safe_load(hookd.config_path.read_text())
    del cfg["targets"]
    hookd.config_path.write_text(yaml.safe_dump(cfg))
    hookd.start()
    hookd.client.call({"op": "enqueue", "out_paths": [out]})
    assert hookd.client.wait(timeout=60)["drained"]
    assert hookd.cached([out]) == {out}
    hookd.stop()


def test_outputs_resolved_from_drv_when_out_paths_empty(hookd: HookdProcess) -> None:
    hookd.start()
    n = nonce()
    nix_build(["multi.out"], nonce_value=n)
    drv = instantiate("multi", n)
    outs = outputs_of(drv)
    assert len(outs) == 3
    rc, _, err = run_hook(nix_env(DRV_PATH=drv, OUT_PATHS=""), hookd.socket, hookd.spool)
    # acknowledged, or spooled on a loaded machine (then imported): either way all three land
    assert rc == 0 and (err == "" or "spooled" in err), err
    until(lambda: hookd.cached(outs) == set(outs), hookd, timeout=60)


def test_cli_passes_provision_arguments_through(tmp_path: Path) -> None:
    proc = subprocess.run(
        [HOOKD, "provision", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "usage: hookd provision" in proc.stdout
    proc = subprocess.run(
        [HOOKD, "provision", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr


def test_configured_store_targets_sign_with_their_key(tmp_path: Path) -> None:
    """A binary-cache URL signs in the cache (`secret-key=`); a local store is signed locally first."""
    key, pub = tmp_path / "mirror.sec", tmp_path / "mirror.pub"
    subprocess.run(
        ["nix-store", "--generate-binary-cache-key", "mirror-1", str(key), str(pub)], check=True
    )
    mirror = tmp_path / "mirror"
    other = tmp_path / "other-store"
    hookd = HookdProcess(
        tmp_path,
        {
            "targets": [
                {"store": f"file://{mirror}?compression=none", "secret_key_file": str(key)},
                {"store": str(other), "secret_key_file": str(key)},
            ]
        },
    )
    hookd.start()
    outs = built_paths(nix_build(["d"], nonce_value=nonce(), hook=hookd.hook_script).stdout)
    assert hookd.client.wait(timeout=120)["drained"]
    closure = sorted(requisites(outs))
    status = {t["id"]: t for t in hookd.status()["targets"]}
    assert [t["done"] for t in status.values()] == [4, 4], status
    proc = substitute(
        closure,
        store_dir=tmp_path / "clean",
        substituter=f"file://{mirror}",
        public_key=pub.read_text().strip(),
    )
    assert proc.returncode == 0, proc.stderr
    copied = path_info(closure, store=str(other))
    assert set(copied) == set(closure)
    assert all(
        any(s.startswith("mirror-1:") for s in d.get("signatures", [])) for d in copied.values()
    )
    hookd.stop()


def test_daemon_keeps_its_acceptor_at_normal_priority(hookd: HookdProcess) -> None:
    # `nice: 10` applies to the nix processes doing the push work (tests/test_nix.py checks
    # that); the daemon itself stays at its parent's priority so hooks are acknowledged
    # promptly while builds load the machine.
    hookd.start()
    assert hookd.proc is not None
    fields = Path(f"/proc/{hookd.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(fields[16]) == os.getpriority(os.PRIO_PROCESS, 0)


def test_post_build_hook_environment_of_this_nix(tmp_path: Path) -> None:
    """What the hook receives, per Nix version: 2.8 sets OUT_PATHS empty (NixOS/nix#6446) and
    hookd resolves the outputs from DRV_PATH; later versions fill it. DRV_PATH is set on all."""
    record = tmp_path / "env"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$DRV_PATH" "$OUT_PATHS" >> {record}\n')
    hook.chmod(0o755)
    n = nonce()
    proc = nix_build(["multi"], nonce_value=n, hook=hook)
    drv = instantiate("multi", n)
    outs = outputs_of(drv)
    assert len(outs) == 3 and set(built_paths(proc.stdout)) <= set(outs)
    lines = [line.split("|") for line in record.read_text().splitlines()]
    assert [d for d, _ in lines] == [drv]
    out_paths = lines[0][1].split()
    version = subprocess.run(
        ["nix", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    if version.startswith("2.8."):
        assert out_paths == []
    else:
        assert sorted(out_paths) == sorted(outs)
