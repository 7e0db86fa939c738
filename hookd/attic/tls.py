"""TLS for Attic servers: the client context (CA bundle, optional client certificate) and the
classification of TLS failures as configuration errors that name the server and the key to set.

The default is the system's CA store (OpenSSL's default paths, which honour ``SSL_CERT_FILE``
and ``SSL_CERT_DIR``), not a bundle shipped with a Python package: a private CA that the
operator installed system-wide is trusted, as it is by curl and by Nix itself. Only where
OpenSSL knows no store at all (some macOS Pythons) does hookd fall back to certifi's bundle.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog

from hookd.config import ServerConfig
from hookd.errors import TlsConfigError

log = structlog.get_logger("hookd.attic.tls")

# Alerts a server (or the proxy in front of it) sends when it wants a client certificate, or
# does not accept the one it got. OpenSSL names them by reason.
_CLIENT_CERT_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_ACCESS_DENIED",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
}


@dataclass(frozen=True)
class TlsConfig:
    """How to reach one server over TLS, with the names messages use."""

    name: str  # the server's name in the configuration (servers.NAME)
    endpoint: str
    ca_file: Path | None = None  # None: the system's CA store
    client_cert: Path | None = None
    client_key: Path | None = None
    # Where messages say the keys are: "" for the daemon's servers.NAME.KEY; `hookd provision`
    # names its spec file (its keys sit at the top level, the URL in server_url).
    keys_in: str = ""
    endpoint_key: str = "endpoint"

    def key(self, name: str) -> str:
        """How a message names the setting ``name`` (ca_file, client_cert, ...)."""
        return f"{name} (in {self.keys_in})" if self.keys_in else f"servers.{self.name}.{name}"

    @classmethod
    def of(cls, server: ServerConfig) -> TlsConfig:
        return cls(
            server.name, server.endpoint, server.ca_file, server.client_cert, server.client_key
        )


def _system_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    paths = ssl.get_default_verify_paths()
    if paths.cafile is None and paths.capath is None:
        import certifi  # OpenSSL has no store here: better certifi's bundle than none

        ctx.load_verify_locations(cafile=certifi.where())
        log.info("tls.system_store_missing", using=certifi.where())
    return ctx


def client_context(server: TlsConfig) -> ssl.SSLContext:
    """The SSL context for ``server``. Raises TlsConfigError (naming the key and the file) when
    a configured CA bundle or client certificate cannot be used."""
    try:
        ctx = (
            ssl.create_default_context(cafile=str(server.ca_file))
            if server.ca_file
            else _system_context()
        )
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(
            f"server {server.name}: cannot use {server.key('ca_file')} {server.ca_file}: "
            f"{_why(e)}; set it to a readable PEM file holding the certificate of the CA that "
            "signed the server's certificate (or remove it to use the system's CA store)"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if server.client_cert and server.client_key:
        try:
            ctx.load_cert_chain(str(server.client_cert), str(server.client_key))
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(
                f"server {server.name}: cannot use the client certificate "
                f"{server.key('client_cert')} {server.client_cert} with {server.key('client_key')} "
                f"{server.client_key}: {_why(e)}; both must be readable PEM files, the key "
                "unencrypted and matching the certificate"
            ) from None
    return ctx


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return f"{e.reason} ({e.library or 'ssl'})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


def tls_failure(error: BaseException, server: TlsConfig) -> TlsConfigError | None:
    """A TLS failure somewhere in ``error``'s chain as a configuration error naming the server
    and the fix; None when the failure has nothing to do with TLS. hookd never retries such a
    connection without TLS."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, TlsConfigError):
            return cause
        if isinstance(cause, ssl.SSLError):
            return explain(cause, server)
        # httpcore re-raises without `from`: the SSL error is only the implicit context.
        cause = cause.__cause__ or cause.__context__
    return None


# What nginx answers (HTTP 400, after the handshake) when `ssl_verify_client on` finds no
# certificate or one it cannot verify: unlike Go/Traefik it does not abort the handshake.
_NGINX_CLIENT_CERT = ("No required SSL certificate was sent", "The SSL certificate error")


def _client_cert_refused(reason: str, server: TlsConfig) -> TlsConfigError:
    if server.client_cert is None:
        fix = (
            f"it requires a client certificate (mTLS): set {server.key('client_cert')} and "
            f"{server.key('client_key')} to the PEM certificate and key issued for this client"
        )
    else:
        fix = (
            f"it refused the client certificate {server.key('client_cert')} "
            f"{server.client_cert}: is it issued by the CA the server (or its proxy) trusts, "
            "and still valid?"
        )
    return TlsConfigError(
        f"server {server.name} ({server.endpoint}): TLS client certificate refused ({reason}); {fix}"
    )


def proxy_refused_client_cert(status: int, body: str, server: TlsConfig) -> TlsConfigError | None:
    """nginx's 400 page for a missing or refused client certificate, as the same
    configuration error the handshake alert gives; None for any other answer."""
    if status != 400:
        return None
    for marker in _NGINX_CLIENT_CERT:
        if marker in body:
            return _client_cert_refused(f"HTTP 400: {marker}", server)
    return None


def explain(e: ssl.SSLError, server: TlsConfig) -> TlsConfigError:
    where = f"server {server.name} ({server.endpoint})"
    store = (
        f"{server.key('ca_file')} {server.ca_file}" if server.ca_file else "the system's CA store"
    )
    if isinstance(e, ssl.SSLCertVerificationError):
        detail = e.verify_message or e.reason or "verification failed"
        if e.verify_code == 62 or "mismatch" in detail.lower():  # X509_V_ERR_HOSTNAME_MISMATCH
            fix = (
                f"the certificate does not name the host in {server.key(server.endpoint_key)}; "
                "use the host name the certificate was issued for, or reissue the certificate "
                "for this name"
            )
        elif e.verify_code in (9, 10):  # not yet valid, expired
            fix = "renew the server's certificate (or check this machine's clock)"
        else:
            fix = (
                f"it is not signed by a CA in {store}. If the server uses a private CA, set "
                f"{server.key('ca_file')} to that CA's PEM certificate (bundle)"
            )
        return TlsConfigError(f"{where}: TLS certificate not accepted: {detail}; {fix}")
    reason = e.reason or ""
    if reason in _CLIENT_CERT_REFUSED:
        return _client_cert_refused(reason, server)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return TlsConfigError(
            f"{where}: the server does not speak TLS on this port ({reason}). hookd never falls "
            f"back to plain HTTP: if the server really serves http, write http:// in "
            f"{server.key(server.endpoint_key)} (the token then travels unencrypted); better, "
            "put TLS in front of it"
        )
    return TlsConfigError(
        f"{where}: TLS handshake failed: {reason or e}; check "
        f"{server.key(server.endpoint_key)}, {store} and, if the server requires one, "
        f"{server.key('client_cert')}/client_key"
    )
