"""TLS as deployed: the Attic test server behind TLS with a throw-away CA (trustme), the real
daemon and real Nix builds through the hook. A private CA configured per server works; a wrong
CA, a missing client certificate or a plain-HTTP port parks the target with a message naming
the server and the key to set; nothing ever goes over plain HTTP instead."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hookd.attic.tls import TlsConfig, client_context, proxy_refused_client_cert
from hookd.errors import TlsConfigError
from tests.attic_server import AtticTestServer
from tests.conftest import HookdProcess, needs_nix, nix_build, nonce, requisites, until, write_token

trustme = pytest.importorskip("trustme", reason="needs trustme: pip install -e '.[test]'")

UPLOAD = "/_api/v1/upload-path"


@dataclass
class Pki:
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that did not
    client_cert: Path  # a client certificate from ``ca``
    client_key: Path
    server: Any  # trustme.LeafCert for 127.0.0.1
    authority: Any  # trustme.CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    client = ca.issue_cert("hookd-client.example")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    (d / "client.key").chmod(0o600)
    return Pki(
        d / "ca.pem",
        d / "other-ca.pem",
        d / "client.pem",
        d / "client.key",
        ca.issue_cert("127.0.0.1"),
        ca,
    )


def server_context(pki: Pki, *, mtls: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server.configure_cert(ctx)
    if mtls:
        pki.authority.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def plain() -> Iterator[AtticTestServer]:
    """A plain-HTTP server that must never see a request (the downgrade trap)."""
    with AtticTestServer() as server:
        yield server


def tls_server(pki: Pki, *, mtls: bool = False, **kw: Any) -> AtticTestServer:
    server = AtticTestServer(tls=server_context(pki, mtls=mtls), **kw)
    server.start()
    server.create_cache("team")
    return server


def daemon(tmp_path: Path, srv: AtticTestServer, **server_keys: Any) -> HookdProcess:
    token = write_token(tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}))
    entry = {"endpoint": srv.url, "token_file": str(token)}
    entry.update({k: str(v) for k, v in server_keys.items()})
    settings = {"servers": {"prod": entry}, "targets": [{"server": "prod", "cache": "team"}]}
    return HookdProcess(tmp_path, settings)


def parked_reason(hookd: HookdProcess) -> str:
    parked = until(lambda: [p for p in hookd.status()["problems"] if p["state"] == "parked"], hookd)
    return str(parked[0]["reason"])


def hashes(paths: list[str]) -> set[str]:
    return {Path(p).name.split("-", 1)[0] for p in paths}


def build(hookd: HookdProcess, attr: str = "b") -> list[str]:
    proc = nix_build([attr], nonce_value=nonce(), hook=hookd.hook_script)
    return [line for line in proc.stdout.split() if line.startswith("/nix/store/")]


@needs_nix
@pytest.mark.nix
def test_private_ca_pushes_end_to_end_and_never_downgrades(
    pki: Pki, plain: AtticTestServer, tmp_path: Path
) -> None:
    # The server advertises a plain-http api_endpoint (a TLS-terminating proxy without
    # X-Forwarded-Proto does exactly this): hookd keeps using https and the token stays on TLS.
    srv = tls_server(pki, api_endpoint=plain.url)
    try:
        hookd = daemon(tmp_path, srv, ca_file=pki.ca).start()
        outs = build(hookd, "d")
        assert hookd.client.wait(timeout=120)["drained"]
        assert hashes(sorted(requisites(outs))) <= set(srv.objects("team"))
        assert srv.count(method="PUT", path_prefix=UPLOAD) > 0
        assert plain.count() == 0
        assert not srv.errors
        hookd.stop()
    finally:
        srv.stop()


@needs_nix
@pytest.mark.nix
def test_wrong_ca_parks_with_the_key_to_set_and_the_right_one_pushes_after_a_restart(
    pki: Pki, tmp_path: Path
) -> None:
    srv = tls_server(pki)
    try:
        hookd = daemon(tmp_path, srv, ca_file=pki.other_ca).start()
        (b,) = build(hookd)
        reason = parked_reason(hookd)
        assert "server prod" in reason and "servers.prod.ca_file" in reason, reason
        assert str(pki.other_ca) in reason and "not accepted" in reason, reason
        assert srv.count() == 0  # no HTTP request got through, and none went elsewhere
        hookd.stop()
        # the operator fixes the config; the parked path was kept and is pushed
        fixed = daemon(tmp_path, srv, ca_file=pki.ca).start()
        fixed.client.call({"op": "retry", "all": True})
        until(lambda: hashes([b]) <= set(srv.objects("team")), fixed)
        fixed.stop()
    finally:
        srv.stop()


@needs_nix
@pytest.mark.nix
def test_system_store_by_default_refuses_a_private_ca_and_names_ca_file(
    pki: Pki, tmp_path: Path
) -> None:
    srv = tls_server(pki)
    try:
        hookd = daemon(tmp_path, srv).start()
        build(hookd)
        reason = parked_reason(hookd)
        assert "system's CA store" in reason and "set servers.prod.ca_file" in reason, reason
        hookd.stop()
    finally:
        srv.stop()


@needs_nix
@pytest.mark.nix
def test_mtls_without_a_client_certificate_is_refused_clearly_and_with_one_pushes(
    pki: Pki, tmp_path: Path
) -> None:
    srv = tls_server(pki, mtls=True)
    try:
        bare = daemon(tmp_path / "bare", srv, ca_file=pki.ca).start()
        build(bare)
        reason = parked_reason(bare)
        assert "requires a client certificate" in reason, reason
        assert "servers.prod.client_cert" in reason and "servers.prod.client_key" in reason
        assert srv.count() == 0
        bare.stop()

        hookd = daemon(
            tmp_path / "mtls",
            srv,
            ca_file=pki.ca,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
        ).start()
        outs = build(hookd, "c")
        assert hookd.client.wait(timeout=120)["drained"]
        assert hashes(outs) <= set(srv.objects("team"))
        assert not hookd.status()["problems"]
        hookd.stop()
    finally:
        srv.stop()


@needs_nix
@pytest.mark.nix
def test_https_endpoint_on_a_plain_http_port_parks_and_never_falls_back(
    plain: AtticTestServer, tmp_path: Path
) -> None:
    plain.create_cache("team")
    https = plain.url.replace("http://", "https://")
    token = write_token(tmp_path / "prod.token", plain.make_token({"team": {"r": 1, "w": 1}}))
    settings = {
        "servers": {"prod": {"endpoint": https, "token_file": str(token)}},
        "targets": [{"server": "prod", "cache": "team"}],
    }
    hookd = HookdProcess(tmp_path, settings).start()
    build(hookd)
    reason = parked_reason(hookd)
    assert "does not speak TLS" in reason and "never falls back" in reason, reason
    assert plain.count() == 0  # not one request in clear text
    hookd.stop()


# -- the context itself: files that cannot be used are configuration errors ---------------------


def test_unusable_ca_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    server = TlsConfig("prod", "https://cache.example/", ca_file=missing)
    with pytest.raises(TlsConfigError, match=r"servers\.prod\.ca_file .*nope\.pem.*PEM"):
        client_context(server)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=r"servers\.prod\.ca_file"):
        client_context(TlsConfig("prod", "https://cache.example/", ca_file=garbage))


def test_client_key_not_matching_the_certificate_names_both_keys(pki: Pki) -> None:
    server = TlsConfig("prod", "https://x/", client_cert=pki.client_cert, client_key=pki.other_ca)
    with pytest.raises(
        TlsConfigError, match=r"servers\.prod\.client_cert .*servers\.prod\.client_key"
    ):
        client_context(server)


def test_context_verifies_and_requires_tls12() -> None:
    ctx = client_context(TlsConfig("prod", "https://x/"))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_nginx_client_certificate_page_is_the_same_configuration_error() -> None:
    # nginx (`ssl_verify_client on`) finishes the handshake and answers 400 with this page.
    page = (
        "<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n"
        "<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
    )
    server = TlsConfig("prod", "https://x/")
    err = proxy_refused_client_cert(400, page, server)
    assert err is not None and "servers.prod.client_cert" in str(err)
    assert proxy_refused_client_cert(400, "Bad Request", server) is None
    assert proxy_refused_client_cert(404, page, server) is None
