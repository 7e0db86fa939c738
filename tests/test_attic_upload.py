"""The lean upload transport (hookd/attic/upload.py) over real HTTP to the Attic-compatible test
server: small NARs sent from memory on keep-alive connections, and every fault of the wire
classified like the httpx path's. No Nix is needed: the "store" is a directory of the test, the
cache is made for it, and the NARs are built by hookd/nar.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from hookd.attic.client import AtticClient
from hookd.attic.redact import Redactor
from hookd.attic.routes import encode_nar_info, upload_headers
from hookd.attic.tls import TlsConfig
from hookd.attic.upload import UploadTransport
from hookd.config import ServerConfig, UploadConfig
from hookd.errors import (
    BadAnswerError,
    DeadlineError,
    PushError,
    ServerUnreachableError,
    TlsConfigError,
    TransientError,
)
from hookd.models import PathInfo, nix32_encode
from hookd.nar import serialize
from hookd.nix import Nix
from hookd.targets.attic import AtticTarget
from hookd.tokens import TokenStore
from tests.attic_server import AtticTestServer
from tests.conftest import write_token

T = TypeVar("T")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.fixture
def srv(store: Path) -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False, upstream=[], store_dir=str(store))
        yield server
        assert server.errors == []


@pytest.fixture
def token(srv: AtticTestServer) -> str:
    return srv.make_token({"team": {"r": 1, "w": 1}})


def make_path(store: Path, name: str, size: int = 500) -> PathInfo:
    digest = hashlib.sha256(name.encode()).digest()
    path = store / f"{nix32_encode(digest[:20])}-{name}"
    path.write_bytes(hashlib.sha256(name.encode()).hexdigest().encode() * (size // 64 + 1))
    nar = serialize(str(path), limit=1 << 30)
    return PathInfo(path=str(path), nar_hash=hashlib.sha256(nar).digest(), nar_size=len(nar))


def client_for(srv: AtticTestServer, token: str, timeout: float = 30.0) -> AtticClient:
    return AtticClient(
        srv.url, name="prod", token=lambda: token, redactor=Redactor([token]),
        request_timeout=timeout,
    )  # fmt: skip


def lean(client: AtticClient) -> UploadTransport:
    transport = client._lean
    assert transport is not None, "the lean path is off (a proxy variable in the environment?)"
    return transport


async def upload(client: AtticClient, info: PathInfo) -> str:
    meta, preamble = encode_nar_info(info, "team")
    headers, _ = upload_headers(meta, preamble, info.nar_size)
    body = serialize(info.path, limit=1 << 30)
    result = await client.upload_path(headers, meta + body if preamble else body, info.nar_size)
    return result.kind


def run(client: AtticClient, fn: Callable[[AtticClient], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_small_uploads_share_one_keep_alive_connection(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    paths = [make_path(store, f"p{i}") for i in range(20)]
    client = client_for(srv, token)

    async def go(c: AtticClient) -> list[str]:
        return [await upload(c, p) for p in paths]

    assert run(client, go) == ["Uploaded"] * 20
    assert lean(client).opened == 1
    assert set(srv.objects("team")) == {p.hash_part for p in paths}
    puts = [r for r in srv.requests if r.method == "PUT"]
    assert len(puts) == 20 and all(r.status == 200 and r.auth == "bearer" for r in puts)


def test_concurrent_uploads_open_at_most_max_connections(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    paths = [make_path(store, f"c{i}") for i in range(30)]
    client = AtticClient(
        srv.url, name="prod", token=lambda: token, redactor=Redactor([token]), max_connections=3
    )
    srv.faults.slow_body_delay = 0.01  # keep requests in flight together

    async def go(c: AtticClient) -> list[str]:
        return list(await asyncio.gather(*(upload(c, p) for p in paths)))

    assert run(client, go) == ["Uploaded"] * 30
    assert lean(client).opened <= 3


def test_a_connection_the_server_closed_while_idle_is_replaced(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    a, b = make_path(store, "a"), make_path(store, "b")
    client = client_for(srv, token)

    async def go(c: AtticClient) -> list[str]:
        first = await upload(c, a)
        srv._close_connections()  # the server's keep-alive timeout, in effect
        return [first, await upload(c, b)]

    assert run(client, go) == ["Uploaded", "Uploaded"]
    assert lean(client).opened == 2
    assert set(srv.objects("team")) == {a.hash_part, b.hash_part}


def test_a_reset_before_the_answer_is_transient(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    p = make_path(store, "reset")
    client = client_for(srv, token)
    srv.faults.reset_puts = 1

    async def go(c: AtticClient) -> tuple[PushError, str]:
        with pytest.raises(PushError) as e:
            await upload(c, p)  # a fresh connection: nothing to retry transparently
        return e.value, await upload(c, p)

    err, kind = run(client, go)
    assert type(err) is TransientError and "upload-path" in str(err), err
    assert token not in str(err)
    assert kind == "Uploaded"


def test_a_cut_answer_is_transient(srv: AtticTestServer, store: Path, token: str) -> None:
    p = make_path(store, "cut")
    client = client_for(srv, token)
    srv.faults.cut_answers = 1

    async def go(c: AtticClient) -> tuple[PushError, str]:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value, await upload(c, p)

    err, kind = run(client, go)
    assert type(err) is TransientError and "RemoteProtocolError" in str(err), err
    assert kind == "Uploaded"
    assert lean(client).opened == 2  # the cut connection was not reused


def test_an_oversized_answer_is_not_read(srv: AtticTestServer, store: Path, token: str) -> None:
    size = 300 * 1024 * 1024
    p = make_path(store, "huge")
    client = client_for(srv, token)
    srv.faults.huge_answer = size

    async def go(c: AtticClient) -> PushError:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value

    err = run(client, go)
    assert isinstance(err, BadAnswerError) and "larger than" in str(err)
    wait_for(lambda: srv.faults.huge_done)
    assert srv.faults.huge_sent < 64 * 1024 * 1024  # the client hung up long before 300 MB


def test_an_error_answer_keeps_the_connection_and_is_classified(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    p = make_path(store, "e")
    client = client_for(srv, token)
    srv.faults.status_script = [(503, {"Retry-After": "7"}, b"busy " + token.encode())]

    async def go(c: AtticClient) -> tuple[PushError, str]:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value, await upload(c, p)

    err, kind = run(client, go)
    assert isinstance(err, TransientError) and err.status == 503 and err.retry_after == 7.0
    assert token not in str(err) and "busy" in str(err)
    assert kind == "Uploaded"
    assert lean(client).opened == 1


def test_a_server_that_is_down_is_unreachable(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    p = make_path(store, "down")
    client = client_for(srv, token)
    srv.set_down(True)

    async def go(c: AtticClient) -> PushError:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value

    err = run(client, go)
    srv.set_down(False)
    assert isinstance(err, ServerUnreachableError), err


def test_the_target_retries_a_reset_upload(
    srv: AtticTestServer, store: Path, token: str, tmp_path: Path
) -> None:
    paths = [make_path(store, f"t{i}") for i in range(5)]
    server = ServerConfig("prod", srv.url, write_token(tmp_path / "token", token))
    upload_config = UploadConfig(
        concurrency=2, min_backoff=0.01, max_backoff=0.05, retry_attempts=3, request_timeout=30.0
    )
    target = AtticTarget(
        server, "team", nix=Nix(), upload=upload_config, tokens=TokenStore({"prod": server}),
        store_dir=str(store),
    )  # fmt: skip
    srv.faults.reset_puts = 2

    async def go() -> None:
        try:
            report = await target.push(paths)
        finally:
            await target.close()
        assert sorted(report.uploaded) == sorted(p.path for p in paths) and not report.failed

    asyncio.run(go())
    assert set(srv.objects("team")) == {p.hash_part for p in paths}
    resets = [r for r in srv.requests if r.error_kind == "fault:reset"]
    assert len(resets) == 2


def test_a_failed_path_fails_its_referrers_without_trying_them(
    srv: AtticTestServer, store: Path, token: str, tmp_path: Path
) -> None:
    gone, other = make_path(store, "gone"), make_path(store, "other")
    user = make_path(store, "user")
    user = dataclasses.replace(user, references=(gone.path,))
    top = dataclasses.replace(make_path(store, "top"), references=(user.path, other.path))
    Path(gone.path).unlink()  # garbage-collected after path-info: a permanent failure
    server = ServerConfig("prod", srv.url, write_token(tmp_path / "token", token))
    target = AtticTarget(
        server, "team", nix=Nix(), upload=UploadConfig(concurrency=2, retry_attempts=1),
        tokens=TokenStore({"prod": server}), store_dir=str(store),
    )  # fmt: skip

    async def go() -> None:
        try:
            report = await target.push([top, user, other, gone])
        finally:
            await target.close()
        assert report.uploaded == [other.path]
        assert set(report.failed) == {gone.path, user.path, top.path}
        assert "no longer in the local store" in str(report.failed[gone.path])
        assert f"its reference {gone.path} failed" in str(report.failed[user.path])
        assert f"its reference {user.path} failed" in str(report.failed[top.path])

    asyncio.run(go())
    assert set(srv.objects("team")) == {other.hash_part}
    assert len([r for r in srv.requests if r.method == "PUT"]) == 1


def test_a_trickling_answer_hits_the_total_deadline(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    p = make_path(store, "trickle")
    client = client_for(srv, token, timeout=0.4)
    body = b'{"kind":"Uploaded","file_size":1,"frac_deduplicated":null}'
    srv.faults.trickle_delay = 0.1  # each read is far shorter than request_timeout
    # A valid answer, padded: without a total deadline it would arrive, after ~40 s.
    srv.faults.status_script = [(200, {"Content-Type": "application/json"}, body + b" " * 400)]

    async def go(c: AtticClient) -> PushError:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value

    err = run(client, go)
    assert isinstance(err, DeadlineError) and "total deadline" in str(err), err


def test_a_silent_server_hits_the_read_timeout(
    srv: AtticTestServer, store: Path, token: str
) -> None:
    p = make_path(store, "silent")
    client = client_for(srv, token, timeout=0.3)
    srv.faults.slow_body_delay = 2.0  # the answer starts after 2 s: past one read's timeout

    async def go(c: AtticClient) -> PushError:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value

    err = run(client, go)
    assert type(err) is TransientError and "ReadTimeout" in str(err), err


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (apt-get install openssl)")
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def wrap_tls(srv: AtticTestServer, cert: Path, key: Path, client_ca: Path | None = None) -> None:
    """Put ``srv`` behind TLS: its listening socket wrapped (before any connection), with a
    client certificate signed by ``client_ca`` required when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    httpd = srv._httpd
    assert httpd is not None
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)


@pytest.fixture
def tls_srv(srv: AtticTestServer, tmp_path: Path) -> Iterator[tuple[AtticTestServer, Path]]:
    """``srv`` behind TLS with a self-signed certificate; yields it and the certificate (the
    client's CA)."""
    cert, key = self_signed(tmp_path, "server")
    wrap_tls(srv, cert, key)
    yield srv, cert


def https_client(srv: AtticTestServer, token: str, ca_file: Path | None = None) -> AtticClient:
    endpoint = srv.url.replace("http://", "https://")
    return AtticClient(
        endpoint, name="prod", token=lambda: token, redactor=Redactor([token]),
        request_timeout=30, tls=TlsConfig("prod", endpoint, ca_file=ca_file),
    )  # fmt: skip


def test_uploads_over_tls_keep_their_connection(
    tls_srv: tuple[AtticTestServer, Path],
    store: Path,
    token: str,
) -> None:
    srv, cert = tls_srv
    paths = [make_path(store, f"tls{i}") for i in range(5)]
    client = https_client(srv, token, ca_file=cert)  # servers.NAME.ca_file: the client's context

    async def go(c: AtticClient) -> list[str]:
        return [await upload(c, p) for p in paths]

    assert run(client, go) == ["Uploaded"] * 5
    assert lean(client).opened == 1
    assert set(srv.objects("team")) == {p.hash_part for p in paths}


def test_an_untrusted_certificate_is_refused(
    tls_srv: tuple[AtticTestServer, Path], store: Path, token: str
) -> None:
    srv, _cert = tls_srv
    p = make_path(store, "untrusted")
    client = https_client(srv, token)

    async def go(c: AtticClient) -> PushError:
        with pytest.raises(PushError) as e:
            await upload(c, p)
        return e.value

    err = run(client, go)
    # Classified like the httpx path's failure: a configuration error naming the fix.
    assert isinstance(err, TlsConfigError) and "servers.prod.ca_file" in str(err), err
    assert not srv.objects("team")


def test_uploads_with_a_client_certificate(
    srv: AtticTestServer, store: Path, token: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "client")
    wrap_tls(srv, cert, key, client_ca=client_cert)  # mTLS: the server wants our certificate
    endpoint = srv.url.replace("http://", "https://")
    tls = TlsConfig("prod", endpoint, ca_file=cert, client_cert=client_cert, client_key=client_key)
    client = AtticClient(
        endpoint, name="prod", token=lambda: token, redactor=Redactor([token]), tls=tls
    )
    paths = [make_path(store, f"mtls{i}") for i in range(3)]

    async def go(c: AtticClient) -> list[str]:
        return [await upload(c, p) for p in paths]

    assert run(client, go) == ["Uploaded"] * 3
    assert lean(client).opened == 1
    assert set(srv.objects("team")) == {p.hash_part for p in paths}
