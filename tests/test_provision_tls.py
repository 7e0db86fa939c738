"""`hookd provision` against the Attic test server over TLS with a throw-away CA (trustme): the
spec's ca_file / client_cert / client_key reach the Attic client as the daemon's servers.NAME
keys do; a certificate the client cannot trust is one error naming the key to set, and nothing
is sent over plain HTTP or changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hookd import yamlfile
from hookd.errors import ConfigError
from hookd.provision import spec
from tests import test_tls
from tests.attic_server import AtticTestServer
from tests.test_provision import admin_env, assert_one_error, run, write_config, write_count
from tests.test_tls import Pki, server_context

pki = test_tls.pki  # the throw-away CAs and certificates (a module-scoped fixture)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ATTIC_SERVER_URL", "ATTIC_ADMIN_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def tls_server(pki: Pki, *, mtls: bool = False) -> Iterator[AtticTestServer]:
    with AtticTestServer(tls=server_context(pki, mtls=mtls)) as server:
        assert server.url.startswith("https://")
        yield server


@pytest.fixture
def tsrv(pki: Pki) -> Iterator[AtticTestServer]:
    yield from tls_server(pki)


@pytest.fixture
def msrv(pki: Pki) -> Iterator[AtticTestServer]:
    yield from tls_server(pki, mtls=True)


def spec_text(srv: AtticTestServer, **tls: Path) -> str:
    keys = "".join(f"{k}: {v}\n" for k, v in tls.items())
    return f"server_url: {srv.url}\n{keys}caches:\n  - name: team\n"


def test_the_right_ca_creates_the_cache(
    pki: Pki,
    tsrv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, tsrv)
    config = write_config(tmp_path, spec_text(tsrv, ca_file=pki.ca))
    result = run(capsys, config, secrets=(admin,))
    assert result.code == 0, result.text
    assert tsrv.caches() == ["team"]


@pytest.mark.parametrize("which", ["other_ca", None])
def test_an_untrusted_certificate_is_one_error_naming_ca_file(
    which: str | None,
    pki: Pki,
    tsrv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A CA that did not sign the server's certificate, or none (the system's store, which
    does not hold the throw-away CA): exit 1, the fix names ca_file in this spec file."""
    admin = admin_env(monkeypatch, tsrv)
    tls = {"ca_file": pki.other_ca} if which else {}
    config = write_config(tmp_path, spec_text(tsrv, **tls))
    result = run(capsys, config, secrets=(admin,))
    assert_one_error(
        result, 1, "TLS certificate not accepted", f"set ca_file (in {config}) to that CA's PEM"
    )
    if which:
        assert f"ca_file (in {config}) {pki.other_ca}" in result.err  # which bundle was used
    assert tsrv.count() == 0 and write_count(tsrv) == 0  # no request got through the handshake
    assert tsrv.caches() == []


def test_mtls_client_certificate_is_sent_and_its_absence_named(
    pki: Pki,
    msrv: AtticTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = admin_env(monkeypatch, msrv)
    without = write_config(tmp_path, spec_text(msrv, ca_file=pki.ca), "without.yaml")
    result = run(capsys, without, secrets=(admin,))
    assert_one_error(result, 1, f"set client_cert (in {without}) and client_key (in {without})")
    assert msrv.caches() == []

    config = write_config(
        tmp_path,
        spec_text(msrv, ca_file=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key),
    )
    result = run(capsys, config, secrets=(admin,))
    assert result.code == 0, result.text
    assert msrv.caches() == ["team"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("ca_file: ca.pem\n", "t.yaml: ca_file: expected an absolute path, got str 'ca.pem'"),
        ("ca_file: [x]\n", "t.yaml: ca_file: expected a non-empty string"),
        ("client_cert: /c.pem\n", "t.yaml: client_key: expected client_cert and client_key"),
        ("client_key: /k.pem\n", "t.yaml: client_cert: expected client_cert and client_key"),
        ("ca_fil: /ca.pem\n", "unknown key 'ca_fil' (did you mean 'ca_file'?)"),
    ],
)
def test_tls_keys_are_validated_as_the_daemon_validates_them(keys: str, message: str) -> None:
    raw = yamlfile.parse(f"server_url: https://a/\n{keys}", "t.yaml")
    with pytest.raises(ConfigError) as err:
        spec.parse_config(raw, source="t.yaml")
    assert message in str(err.value)


def test_tls_keys_reach_the_client_settings(pki: Pki) -> None:
    raw = yamlfile.parse(
        f"server_url: https://a.example/\nca_file: {pki.ca}\n"
        f"client_cert: {pki.client_cert}\nclient_key: {pki.client_key}\n",
        "t.yaml",
    )
    tls = spec.parse_config(raw, source="t.yaml").tls()
    assert (tls.ca_file, tls.client_cert, tls.client_key) == (
        pki.ca,
        pki.client_cert,
        pki.client_key,
    )
    assert tls.endpoint == "https://a.example/" and tls.key("ca_file") == "ca_file (in t.yaml)"
