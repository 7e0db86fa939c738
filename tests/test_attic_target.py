"""AtticTarget against the Attic-compatible test server, with paths built by real Nix."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import structlog

from hookd import __version__
from hookd.config import ServerConfig, UploadConfig
from hookd.errors import (
    AuthError,
    CorruptUploadError,
    ParkedError,
    PermanentError,
    PushError,
    TransientError,
)
from hookd.models import PathInfo, PushReport
from hookd.nix import Nix
from hookd.targets.attic import (
    AtticTarget,
    ServerUnreachableError,
    encode_nar_info,
    parse_retry_after,
    upload_order,
)
from hookd.tokens import TokenStore
from tests.attic_server import AtticTestServer
from tests.conftest import write_token

T = TypeVar("T")

needs_nix = pytest.mark.skipif(shutil.which("nix-build") is None, reason="needs real Nix")
pytestmark = [pytest.mark.nix, needs_nix]

UPLOAD = UploadConfig(
    concurrency=4, min_backoff=0.01, max_backoff=2.0, retry_attempts=4, request_timeout=30.0
)

MK_NIX = Path(__file__).resolve().parent / "data" / "mk.nix"
GRAPH_NIX = r"""
{ nonce, nrefs ? 100, bigSize ? 65536 }:
let
  mk = name: extra: script: import MK_NIX nonce name script extra;
  outs = builtins.genList (i: "o${toString i}") nrefs;
in rec {
  b = mk "b" {} "echo b > $out";
  c = mk "c" {} "mkdir $out; echo c > $out/f; echo $out > $out/self";   # self-reference
  a = mk "a" { inherit b c; } "echo $b $c > $out";                      # a -> b, c
  d = mk "d" { inherit a; } "echo $a > $out";                           # d -> a
  big = mk "big" {} "yes hookd | head -c ${toString bigSize} > $out";
  usesbig = mk "usesbig" { inherit big; } "echo $big > $out";
  upstream = mk "upstream" {} "echo from-upstream > $out";
  usesup = mk "usesup" { inherit upstream; } "echo $upstream > $out";
  # Multi-output: dev -> out -> lib.
  multi = mk "multi" { outputs = [ "out" "lib" "dev" ]; }
    "echo lib > $lib; echo $lib > $out; echo $out $lib > $dev";
  # One build, many outputs; "out" refers to every other output (JSON >= 4 KiB: preamble).
  many = mk "many" { outputs = [ "out" ] ++ outs; } ''
    for o in ${builtins.concatStringsSep " " outs}; do eval "echo \$o > \''${$o}"; done
    for o in ${builtins.concatStringsSep " " outs}; do eval "echo \''${$o}" >> $out; done
  '';
}
"""


# -- helpers ---------------------------------------------------------------------------------


class Graph:
    """Builds GRAPH_NIX with a nonce unique to one test, so every test gets fresh paths."""

    def __init__(self, workdir: Path) -> None:
        self.file = workdir / "graph.nix"
        self.file.write_text(GRAPH_NIX.replace("MK_NIX", str(MK_NIX)))
        self.nonce = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        self.nix = Nix()

    def build(self, *attrs: str) -> dict[str, str]:
        argv = ["nix-build", str(self.file), "--no-out-link", "--argstr", "nonce", self.nonce]
        for attr in attrs:
            argv += ["-A", attr]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
        return dict(zip(attrs, out.stdout.split(), strict=True))

    def closure(self, *attrs: str) -> list[PathInfo]:
        return self.nix.path_info(list(self.build(*attrs).values()), recursive=True)


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    return Graph(tmp_path)


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False, upstream=["cache.nixos.org-1"])
        yield server


class Recorder(httpx.AsyncBaseTransport):
    """Real HTTP transport that remembers each request's headers and the PUT concurrency."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, httpx.URL, httpx.Headers]] = []
        self.inflight = 0
        self.max_inflight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url, httpx.Headers(request.headers)))
        put = request.method == "PUT"
        if put:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            if put:
                self.inflight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()

    def puts(self) -> list[httpx.Headers]:
        return [h for m, _, h in self.sent if m == "PUT"]


def make_target(
    srv: AtticTestServer,
    token_file: Path | None,
    cache: str = "team",
    *,
    upload: UploadConfig = UPLOAD,
    transport: httpx.AsyncBaseTransport | None = None,
    allowed_origins: tuple[str, ...] = (),
) -> AtticTarget:
    server = ServerConfig("prod", srv.url, token_file, allowed_origins=allowed_origins)
    tokens = TokenStore({"prod": server})
    return AtticTarget(server, cache, nix=Nix(), upload=upload, tokens=tokens, transport=transport)


def run(target: AtticTarget, fn: Callable[[AtticTarget], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await fn(target)
        finally:
            await target.close()

    return asyncio.run(main())


def push(target: AtticTarget, closure: list[PathInfo]) -> PushReport:
    return run(target, lambda t: t.push(closure))


def push_error(target: AtticTarget, closure: list[PathInfo]) -> PushError:
    with pytest.raises(PushError) as e:
        push(target, closure)
    return e.value


def hashes(infos: list[PathInfo]) -> set[str]:
    return {p.hash_part for p in infos}


def substitute(
    tmp: Path, paths: list[str], srv: AtticTestServer, public_key: str, token: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    store = tmp / f"store-{uuid.uuid4().hex[:6]}"
    netrc = tmp / f"netrc-{uuid.uuid4().hex[:6]}"
    netrc.write_text(f"machine 127.0.0.1 login hookd password {token}\n")
    netrc.chmod(0o600)
    argv = [
        "nix-store", "--store", str(store), "-r", *paths,
        "--option", "substituters", srv.url + "team",
        "--option", "trusted-public-keys", public_key,
        "--option", "require-sigs", "true",
        "--option", "netrc-file", str(netrc),
        "--option", "narinfo-cache-negative-ttl", "0",
        "--option", "narinfo-cache-positive-ttl", "0",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return proc, store


# -- the happy path --------------------------------------------------------------------------


def test_push_closure_order_substitution_and_dedup(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="ci")
    tf = write_token(tmp_path / "token", token)
    closure = graph.closure("d", "usesbig", "multi.dev")
    assert len(closure) == 4 + 2 + 3
    rec = Recorder()
    srv.faults.slow_body_delay = 0.05  # keep uploads in flight long enough to overlap

    with structlog.testing.capture_logs() as logs:
        report = push(make_target(srv, tf, transport=rec), closure)

    every = {p.path for p in closure}
    assert set(report.uploaded) == every
    assert not report.failed and not report.present and not report.upstream
    assert report.bytes_sent == sum(p.nar_size for p in closure)
    objects = srv.objects("team")
    assert set(objects) == hashes(closure)

    # The server verified each NAR against nar_hash/nar_size; the metadata is exact.
    by_hash = {p.hash_part: p for p in closure}
    for h, obj in objects.items():
        info = by_hash[h]
        assert obj.store_path == info.path
        assert obj.nar_hash == info.nar_hash_hex and obj.nar_size == info.nar_size
        assert list(obj.references) == [os.path.basename(r) for r in info.references]
        assert obj.deriver == os.path.basename(info.deriver or "")
        assert obj.created_by == "ci"
    c = next(p for p in closure if p.name == "c")
    assert os.path.basename(c.path) in objects[c.hash_part].references  # self-reference kept
    dump = subprocess.run(["nix-store", "--dump", c.path], capture_output=True, check=True)
    assert srv.nar_bytes("team", c.hash_part) == dump.stdout

    # References were uploaded before the paths that refer to them.
    order = [h for cache, h, _ in srv.uploads if cache == "team"]
    position = {h: i for i, h in enumerate(order)}
    for p in closure:
        for r in p.references:
            if r != p.path:
                assert position[PathInfo(r, b"", 0).hash_part] < position[p.hash_part], (r, p.path)

    # Uploads ran in parallel (the bound is checked with 100 paths in the preamble test).
    assert 2 <= rec.max_inflight <= UPLOAD.concurrency
    # Streaming: a fixed Content-Length, never chunked; User-Agent and bearer token sent.
    for headers in rec.puts():
        assert "transfer-encoding" not in headers
        assert int(headers["content-length"]) > 0
        assert headers["user-agent"] == f"hookd/{__version__}"
        assert headers["authorization"] == f"Bearer {token}"

    # One log line per upload with path, target, bytes, ms and result.
    uploads = [e for e in logs if e["event"] == "attic.upload"]
    assert {e["path"] for e in uploads} == every
    for e in uploads:
        assert e["target"] == "attic:prod/team" and e["result"] == "uploaded"
        assert isinstance(e["bytes"], int) and isinstance(e["ms"], int)

    # Real Nix substitutes every pushed path into a clean store, checking signatures...
    paths = sorted(every)
    proc, store = substitute(tmp_path, paths, srv, srv.public_key("team"), token)
    assert proc.returncode == 0, proc.stderr
    for p in paths:
        assert (store / p.lstrip("/")).exists()
    # ...and refuses them under a key that did not sign them.
    other = AtticTestServer()
    wrong = other.create_cache("team").public_key
    proc, _ = substitute(tmp_path, [c.path], srv, wrong, token)
    assert proc.returncode != 0

    # A second push of the same closure uploads nothing.
    srv.clear_records()
    report = push(make_target(srv, tf), closure)
    assert set(report.present) == every and not report.uploaded
    assert srv.count(method="PUT", path_prefix="/_api/v1/upload-path") == 0
    assert srv.count(method="POST", path_prefix="/_api/v1/get-missing-paths") == 1


def test_nar_info_header_exact(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    closure = graph.closure("c")
    (c,) = closure
    rec = Recorder()
    push(make_target(srv, tf, transport=rec), closure)
    (headers,) = rec.puts()
    assert "x-attic-nar-info-preamble-size" not in headers
    assert int(headers["content-length"]) == c.nar_size
    meta = json.loads(headers["x-attic-nar-info"])
    assert meta == {
        "cache": "team",
        "store_path_hash": c.hash_part,
        "store_path": c.path,
        "references": [os.path.basename(c.path)],
        "system": None,
        "deriver": os.path.basename(c.deriver or ""),
        "sigs": [],
        "ca": None,
        "nar_hash": "sha256:" + c.nar_hash.hex(),
        "nar_size": c.nar_size,
    }
    assert list(meta) == [
        "cache", "store_path_hash", "store_path", "references", "system",
        "deriver", "sigs", "ca", "nar_hash", "nar_size",
    ]  # fmt: skip


def test_preamble_mode_real_upload(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    closure = graph.closure("many")
    top = next(p for p in closure if len(p.references) == 100)
    meta, preamble = encode_nar_info(top, "team")
    assert preamble and len(meta) >= 4096
    rec = Recorder()
    srv.faults.slow_body_delay = 0.01
    report = push(make_target(srv, tf, transport=rec), closure)
    assert not report.failed and top.path in report.uploaded
    assert rec.max_inflight == UPLOAD.concurrency  # never more, and the bound was reached
    assert [h for _, h, _ in srv.uploads][-1] == top.hash_part  # after all 100 references
    modes = {("x-attic-nar-info-preamble-size" in h, int(h["content-length"])) for h in rec.puts()}
    assert (True, len(meta) + top.nar_size) in modes
    for h in rec.puts():
        if "x-attic-nar-info-preamble-size" in h:
            assert "x-attic-nar-info" not in h
            assert int(h["x-attic-nar-info-preamble-size"]) == len(meta)
    obj = srv.objects("team")[top.hash_part]
    assert len(obj.references) == 100 and obj.nar_hash == top.nar_hash_hex


def test_preamble_decision_threshold() -> None:
    base = PathInfo(
        path="/nix/store/" + "a" * 32 + "-x",
        nar_hash=bytes(32),
        nar_size=1,
        references=tuple(f"/nix/store/{'b' * 32}-ref{i}" for i in range(3)),
    )
    small, pre = encode_nar_info(base, "team")
    assert not pre and len(small) < 4096
    pad = 4096 - len(encode_nar_info(dataclasses.replace(base, ca=""), "team")[0])
    exact = dataclasses.replace(base, ca="x" * pad)
    meta, pre = encode_nar_info(exact, "team")
    assert len(meta) == 4096 and pre
    meta, pre = encode_nar_info(dataclasses.replace(base, ca="x" * (pad - 1)), "team")
    assert len(meta) == 4095 and not pre
    many = dataclasses.replace(
        base, references=tuple(f"/nix/store/{'c' * 32}-r{i}" for i in range(100))
    )
    assert encode_nar_info(many, "team")[1]
    info = json.loads(encode_nar_info(many, "team")[0])
    assert info["references"][0] == f"{'c' * 32}-r0"  # basenames, not full paths


def test_upload_order_unit() -> None:
    def p(name: str, *refs: str) -> PathInfo:
        return PathInfo(f"/s/{name}", bytes(32), 1, tuple(f"/s/{r}" for r in refs))

    deps = upload_order([p("a", "b", "c", "a", "x"), p("b"), p("c", "c"), p("d", "a")])
    assert deps == {"/s/a": ["/s/b", "/s/c"], "/s/b": [], "/s/c": [], "/s/d": ["/s/a"]}
    # A cycle (impossible in a real store) must not deadlock: its edges are dropped.
    deps = upload_order([p("e", "f"), p("f", "e"), p("g", "e")])
    assert sorted([deps["/s/e"], deps["/s/f"]]) == [[], ["/s/e"]] or sorted(
        [deps["/s/e"], deps["/s/f"]]
    ) == [[], ["/s/f"]]
    assert deps["/s/g"] == ["/s/e"]


def test_upstream_signed_path_is_not_uploaded(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    built = graph.build("usesup", "upstream")
    sk, pk = tmp_path / "sk", tmp_path / "pk"
    subprocess.run(
        ["nix-store", "--generate-binary-cache-key", "cache.nixos.org-1", sk, pk], check=True
    )
    subprocess.run(["nix", "store", "sign", "--key-file", sk, built["upstream"]], check=True)
    closure = graph.nix.path_info([built["usesup"]], recursive=True)
    up = next(p for p in closure if p.path == built["upstream"])
    assert "cache.nixos.org-1" in up.signature_key_names

    report = push(make_target(srv, tf), closure)
    assert report.upstream == [up.path]
    assert report.uploaded == [built["usesup"]]
    assert up.hash_part not in srv.objects("team")

    ignoring = dataclasses.replace(UPLOAD, ignore_upstream=True)
    report = push(make_target(srv, tf, upload=ignoring), closure)
    assert report.uploaded == [up.path] and report.present == [built["usesup"]]
    assert srv.objects("team")[up.hash_part].sigs == up.signatures


def test_check_and_api_endpoint(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    assert run(make_target(srv, tf), lambda t: t.check()) == (
        "attic prod/team: ok (private, priority 41, upstream cache.nixos.org-1)"
    )
    # The server advertises an api_endpoint on another origin: the token does not follow it
    # unless the configuration lists that origin; the refusal names both origins.
    srv.api_endpoint = f"http://localhost:{srv.port}/"
    rec = Recorder()
    with structlog.testing.capture_logs() as logs:
        push(make_target(srv, tf, transport=rec), graph.closure("b"))
    hosts = [(m, url.host) for m, url, _ in rec.sent]
    assert hosts == [("GET", "127.0.0.1"), ("POST", "127.0.0.1"), ("PUT", "127.0.0.1")]
    refused = [e for e in logs if e["event"] == "attic.api_endpoint_refused"]
    assert refused and refused[0]["endpoint_origin"] == f"http://127.0.0.1:{srv.port}"
    assert refused[0]["api_endpoint_origin"] == f"http://localhost:{srv.port}"
    assert "allowed_origins" in refused[0]["reason"]
    # Opted in: every later call goes there.
    rec = Recorder()
    allowed = (f"http://localhost:{srv.port}",)
    push(make_target(srv, tf, transport=rec, allowed_origins=allowed), graph.closure("c"))
    hosts = [(m, url.host) for m, url, _ in rec.sent]
    assert hosts == [("GET", "127.0.0.1"), ("POST", "localhost"), ("PUT", "localhost")]
    assert all(h.get("Authorization") for _, _, h in rec.sent)


def test_store_dir_mismatch_is_parked(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    srv.create_cache("gnu", store_dir="/gnu/store")
    tf = write_token(tmp_path / "token", srv.make_token({"gnu": {"r": 1, "w": 1}}))
    err = push_error(make_target(srv, tf, "gnu"), graph.closure("b"))
    assert isinstance(err, ParkedError)
    assert "/gnu/store" in str(err) and "/nix/store" in str(err)
    assert srv.count(method="POST") == 0


# -- failure classes -------------------------------------------------------------------------


def test_401_without_token(srv: AtticTestServer, graph: Graph) -> None:
    err = push_error(make_target(srv, None), graph.closure("b"))
    assert isinstance(err, AuthError) and err.status == 401
    msg = str(err)
    assert "missing, expired, signed with another secret, or has no access" in msg
    assert "cache team on server prod" in msg
    assert "no token is configured for server prod" in msg


def test_401_wrong_secret(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    token = srv.make_token_raw(
        {
            "sub": "ci",
            "exp": int(time.time()) + 3600,
            "https://jwt.attic.rs/v1": {"caches": {"team": {"r": 1, "w": 1}}},
        },
        key=b"not the server's secret at all!!",
    )
    tf = write_token(tmp_path / "token", token)
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, AuthError) and err.status == 401
    assert "signed with another secret" in str(err).split("Here:")[1]
    assert token not in str(err) and token not in repr(err)


def test_401_expired(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    token = srv.make_token({"team": {"r": 1, "w": 1}}, exp=int(time.time()) - 60)
    tf = write_token(tmp_path / "token", token)
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, AuthError) and err.status == 401
    assert "expired at" in str(err).split("Here:")[1]


def test_401_no_access_to_cache(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"other-*": {"r": 1, "w": 1}}))
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, AuthError)
    assert "grants nothing on cache team (its cache patterns: other-*)" in str(err)


def test_403_pull_only_token(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1}}))
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, AuthError) and err.status == 403
    msg = str(err)
    assert "`w` (push)" in msg and "get-missing-paths" in msg
    assert "atticadm make-token" in msg and "--push team" in msg and "hookd provision" in msg
    assert srv.count(method="PUT") == 0


def test_403_push_only_token_on_cache_config(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"w": 1}}))
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, AuthError) and err.status == 403
    assert "`r` (pull)" in str(err) and "--pull team" in str(err)


def test_404_no_such_cache_is_parked(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"ghost": {"r": 1, "w": 1}}))
    err = push_error(make_target(srv, tf, "ghost"), graph.closure("b"))
    assert isinstance(err, ParkedError) and err.status == 404
    msg = str(err)
    assert "cache ghost does not exist on server prod" in msg
    assert "attic cache create prod:ghost" in msg and "hookd provision" in msg


def test_413_from_proxy_fails_that_path_only(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    closure = graph.closure("usesbig", "d")
    big = next(p for p in closure if p.name == "big")
    usesbig = next(p for p in closure if p.name == "usesbig")
    assert big.nar_size > 60_000
    srv.faults.max_body_size = 16 * 1024
    report = push(make_target(srv, tf), closure)
    err = report.failed[big.path]
    assert isinstance(err, PermanentError) and err.status == 413
    assert "client_max_body_size" in str(err) and f"{big.nar_size} bytes" in str(err)
    # nginx's own default (1m) and the NixOS module's (10m), and the setting to change.
    assert "is 1m" in str(err) and "sets 10m" in str(err)
    assert "services.nginx.clientMaxBodySize" in str(err)
    # Its dependent is not uploaded and fails with the same class, naming the reference.
    dep = report.failed[usesbig.path]
    assert type(dep) is PermanentError and big.path in str(dep)
    assert set(report.failed) == {big.path, usesbig.path}
    others = [p for p in closure if p not in (big, usesbig)]
    assert set(report.uploaded) == {p.path for p in others}
    assert set(srv.objects("team")) == hashes(others)
    assert srv.count(method="PUT", status=413) == 1  # permanent: not retried


def test_5xx_and_resets_are_retried(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    closure = graph.closure("d", "usesbig")
    srv.faults.seed = 1234
    srv.faults.fail_rate = 0.3
    srv.faults.reset_rate = 0.1
    upload = dataclasses.replace(UPLOAD, retry_attempts=12)
    report = push(make_target(srv, tf, upload=upload), closure)
    assert not report.failed
    assert set(srv.objects("team")) == hashes(closure)
    assert srv.count(status=500) > 0
    assert any(r.error_kind == "fault:reset" for r in srv.requests)


def test_429_retry_after_is_honoured(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    srv.faults.status_script = [(429, {"Retry-After": "1"}, b"")]
    report = push(make_target(srv, tf), graph.closure("b"))
    assert len(report.uploaded) == 1
    first, second = [r for r in srv.requests if "cache-config" in r.path][:2]
    assert first.status == 429 and second.status == 200
    # Timestamps the server took when it read each request's headers.
    stamp = lambda r: getattr(r, "monotonic", r.time)  # noqa: E731
    assert stamp(second) - stamp(first) >= 1.0


def test_429_retry_after_beyond_max_backoff_is_raised(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    srv.faults.status_script = [(429, {"Retry-After": "3600"}, b"")]
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, TransientError) and err.status == 429
    assert err.retry_after == 3600  # the pusher schedules the retry; nothing slept in-process
    assert srv.count() == 1


def test_transient_per_path_failure_after_retries(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    (b,) = graph.closure("b")
    missing = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"missing_paths": [b.hash_part]}).encode(),
    )
    unavailable = (503, {"Content-Type": "text/html"}, b"<html>503 Service Unavailable</html>")

    async def scenario(t: AtticTarget) -> PushReport:
        await t.check()
        srv.faults.status_script = [missing] + [unavailable] * UPLOAD.retry_attempts
        return await t.push([b])

    report = run(make_target(srv, tf), scenario)
    err = report.failed[b.path]
    assert isinstance(err, TransientError) and err.status == 503
    assert "HTTP 503: <html>503 Service Unavailable</html>" in str(err)
    assert srv.count(method="PUT") == UPLOAD.retry_attempts


def test_cache_config_cached_then_refetched_after_error(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))

    async def scenario(t: AtticTarget) -> None:
        await t.push(graph.closure("b"))
        await t.push(graph.closure("c"))
        assert srv.count(method="GET", path_prefix="/_api/v1/cache-config/") == 1
        srv.delete_cache("team")
        with pytest.raises(ParkedError):
            await t.push(graph.closure("a"))  # cached config: fails at get-missing-paths
        srv.create_cache("team")
        report = await t.push(graph.closure("a"))
        assert len(report.uploaded) == 3  # a, b, c
        assert srv.count(method="GET", path_prefix="/_api/v1/cache-config/") == 2

    run(make_target(srv, tf), scenario)


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    ra = parse_retry_after(future)
    assert ra is not None and 25 <= ra <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_server_down_raises_transient_then_recovers(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    closure = graph.closure("a")
    rec = Recorder()
    target = make_target(srv, tf, transport=rec)

    async def scenario(t: AtticTarget) -> PushReport:
        srv.set_down(True)
        with pytest.raises(TransientError) as e:
            await t.push(closure)
        assert isinstance(e.value, ServerUnreachableError)
        assert "cannot connect to server prod" in str(e.value)
        assert len(rec.sent) == UPLOAD.retry_attempts
        srv.set_down(False)
        return await t.push(closure)

    report = run(target, scenario)
    assert set(report.uploaded) == {p.path for p in closure}


def test_local_hash_mismatch_never_completes_the_body(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    built = graph.build("b", "big", "c")
    infos = {p.name: p for p in graph.nix.path_info(built.values())}
    wrong_hash = dataclasses.replace(infos["b"], nar_hash=bytes(32))
    too_small = dataclasses.replace(infos["big"], nar_size=infos["big"].nar_size - 100)
    too_big = dataclasses.replace(infos["c"], nar_size=infos["c"].nar_size + 100)
    report = push(make_target(srv, tf), [wrong_hash, too_small, too_big])
    assert set(report.failed) == {p.path for p in (wrong_hash, too_small, too_big)}
    for err in report.failed.values():
        assert isinstance(err, CorruptUploadError)
    assert "hashes to sha256:" in str(report.failed[wrong_hash.path])
    assert "larger than its recorded size" in str(report.failed[too_small.path])
    assert "produced" in str(report.failed[too_big.path])
    assert srv.objects("team") == {} and srv.uploads == []
    # The server saw each body cut short (it records an aborted request when it notices).
    deadline = time.monotonic() + 10
    while srv.count(method="PUT") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    puts = [r for r in srv.requests if r.method == "PUT"]
    assert len(puts) == 3  # a local mismatch is not retried
    for r in puts:
        assert r.status is None and r.error_kind == "client-gone"


def test_server_bad_nar_hash_retried_once(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    (b,) = graph.closure("b")
    bad = (
        400,
        {"Content-Type": "application/json"},
        json.dumps(
            {"code": 400, "error": "RequestError",
             "message": "General request error: Bad NAR Hash or Size"}
        ).encode(),
    )  # fmt: skip
    missing = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"missing_paths": [b.hash_part]}).encode(),
    )

    async def scenario(t: AtticTarget) -> tuple[PushReport, PushReport]:
        await t.check()  # cache-config is cached: the script below starts at get-missing-paths
        srv.faults.status_script = [missing, bad, bad]
        failed = await t.push([b])
        srv.faults.status_script = [missing, bad]
        await t.check()
        srv.faults.status_script = [missing, bad]
        ok = await t.push([b])
        return failed, ok

    failed, ok = run(make_target(srv, tf), scenario)
    err = failed.failed[b.path]
    assert isinstance(err, CorruptUploadError) and "Bad NAR Hash or Size" in str(err)
    assert ok.uploaded == [b.path]
    assert srv.count(method="PUT") == 2 + 2  # one retry each time
    assert b.hash_part in srv.objects("team")


def test_other_4xx_is_permanent_with_server_message(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    srv.faults.status_script = [
        (422, {"Content-Type": "text/plain"}, b"Failed to deserialize the JSON body: x" * 20)
    ]
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, PermanentError) and err.status == 422
    assert "HTTP 422: Failed to deserialize" in str(err)
    assert len(str(err)) < 400  # the body is cut at 200 characters
    srv.faults.status_script = [
        (400, {"Content-Type": "application/json"},
         b'{"code":400,"error":"RequestError","message":"General request error: nope"}')
    ]  # fmt: skip
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, PermanentError) and "RequestError: General request error: nope" in str(
        err
    )


# -- tokens ----------------------------------------------------------------------------------


def test_token_rotation_takes_effect_without_restart(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}, sub="first"))
    expired = srv.make_token({"team": {"r": 1, "w": 1}}, sub="old", exp=int(time.time()) - 5)

    async def scenario(t: AtticTarget) -> None:
        await t.push(graph.closure("b"))
        assert {r.sub for r in srv.requests} == {"first"}
        srv.clear_records()
        write_token(tf, srv.make_token({"team": {"r": 1, "w": 1}}, sub="second"))
        await t.push(graph.closure("c"))
        assert {r.sub for r in srv.requests} == {"second"}
        # An expired token parks the target; a fresh file un-parks it, no restart.
        write_token(tf, expired)
        with pytest.raises(AuthError):
            await t.push(graph.closure("a"))
        srv.clear_records()
        write_token(tf, srv.make_token({"team": {"r": 1, "w": 1}}, sub="third"))
        report = await t.push(graph.closure("a"))
        assert report.uploaded and {r.sub for r in srv.requests} == {"third"}

    run(make_target(srv, tf), scenario)


def test_tokens_never_leak(srv: AtticTestServer, graph: Graph, tmp_path: Path) -> None:
    good = srv.make_token({"team": {"r": 1, "w": 1}})
    pull_only = srv.make_token({"team": {"r": 1}})
    forged = srv.make_token_raw(
        {"sub": "x", "https://jwt.attic.rs/v1": {"caches": {"team": {"r": 1, "w": 1}}}},
        key=b"another secret, long enough for PyJWT",
    )
    tokens = [good, pull_only, forged]
    tf = tmp_path / "token"
    shown: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for token in tokens:
            write_token(tf, token)
            target = make_target(srv, tf)
            shown += [repr(target), str(target), repr(target.tokens), repr(target.server)]
            try:
                report = push(target, graph.closure("d"))
                shown += [repr(report), str(report)]
            except PushError as e:
                shown += [str(e), repr(e), repr(e.args)]
        srv.faults.max_body_size = 16 * 1024
        write_token(tf, good)
        report = push(make_target(srv, tf), graph.closure("usesbig"))
        assert report.failed
        shown += [repr(report)] + [str(e) for e in report.failed.values()]
    assert len(logs) > 0
    text = "\n".join(shown) + "\n" + repr(logs)
    for token in tokens:
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature part


def test_token_file_problem_is_auth_error(
    srv: AtticTestServer, graph: Graph, tmp_path: Path
) -> None:
    tf = write_token(tmp_path / "token", srv.make_token({"team": {"r": 1, "w": 1}}))
    tf.chmod(0o644)
    err = push_error(make_target(srv, tf), graph.closure("b"))
    assert isinstance(err, AuthError) and "chmod 600" in str(err)
    assert srv.count() == 0


def test_typing_helpers_are_exported() -> None:
    # The Target protocol is satisfied structurally.
    from hookd.targets.base import Target

    def accepts(t: Target) -> str:
        return t.id

    server = ServerConfig("prod", "http://127.0.0.1:1/", None, "inline-secret")
    t = AtticTarget(server, "team", nix=Nix(), upload=UPLOAD, tokens=TokenStore({}))
    assert accepts(t) == "attic:prod/team" and t.server_key == "attic:prod"
    assert "inline-secret" not in repr(t)
    asyncio.run(t.close())
