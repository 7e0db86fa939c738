"""Keys and tokens: the server's signing secret, the admin token's own claims, and minting.

Attic has no token endpoint (attic-provision's ``POST /api/v1/tokens`` does not exist): a token
is a JWT signed with the server's own secret, so provision mints tokens locally with that secret,
exactly as `atticadm make-token` does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hookd.attic.claims import CLAIM_NAMESPACE, decode_claims
from hookd.attic.names import CACHE_PATTERN_RE
from hookd.errors import ConfigError, ProvisionError
from hookd.provision.spec import ENV_HS256, ENV_RS256, ProvisionConfig, TokenSpec


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SigningKey:
    algorithm: Literal["HS256", "RS256"]
    source: str
    secret: bytes | rsa.RSAPrivateKey = field(repr=False)
    text: str = field(repr=False, default="")  # as given, so output can redact it

    def verification_key(self) -> bytes | rsa.RSAPublicKey:
        if isinstance(self.secret, rsa.RSAPrivateKey):
            return self.secret.public_key()
        return self.secret


def load_signing_key(secret_file: Path | None, env: Mapping[str, str]) -> SigningKey:
    """``--secret-file`` (the base64 text atticd takes, or a PEM file), else the server's own
    environment variables in atticd's precedence: RS256 first, then HS256 (§5.6)."""
    if secret_file is not None:
        try:
            text = secret_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--secret-file: cannot read {secret_file}: {e.strerror}") from None
        if text.startswith("-----BEGIN"):
            return _rs256(text.encode(), f"--secret-file {secret_file}", text)
        raw = _b64(text, f"--secret-file {secret_file}")
        if raw.lstrip().startswith(b"-----BEGIN"):
            return _rs256(raw, f"--secret-file {secret_file}", text)
        return _hs256(raw, f"--secret-file {secret_file}", text)
    if text := env.get(ENV_RS256, "").strip():
        raw = _b64(text, ENV_RS256)
        return _rs256(raw, ENV_RS256, text)
    if text := env.get(ENV_HS256, "").strip():
        return _hs256(_b64(text, ENV_HS256), ENV_HS256, text)
    raise ConfigError(
        "tokens are configured but no signing secret was given: pass --secret-file FILE or set "
        f"{ENV_HS256} or {ENV_RS256} (the same value atticd uses), or pass --no-tokens. "
        "Attic has no endpoint that issues tokens (attic-provision's POST /api/v1/tokens does "
        "not exist): a token is a JWT signed with the server's secret, so it is minted here"
    )


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the signing secret is not valid base64") from None


def _hs256(raw: bytes, source: str, text: str) -> SigningKey:
    if not raw:
        raise ConfigError(f"{source}: the signing secret is empty")
    return SigningKey("HS256", source, raw, text)


def _rs256(pem: bytes, source: str, text: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: not a usable RS256 private key (PEM): {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{source}: the PEM key is not an RSA key (RS256 needs one)")
    return SigningKey("RS256", source, key, text)


@dataclass(frozen=True)
class AdminToken:
    """What the admin token's own claims say. ``caches`` is None when it is not a readable JWT."""

    caches: dict[str, dict[str, object]] | None
    algorithm: str | None = None


def inspect_admin_token(token: str, source: str, now: float) -> AdminToken:
    claims = decode_claims(token)
    if claims is None:
        return AdminToken(None)
    header = jwt.get_unverified_header(token)  # decodable: decode_claims read it
    where = f"the admin token ({source})"
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and now > exp:
        raise ProvisionError(f"{where} expired at {iso(exp)}; mint a new one")
    if isinstance(nbf, int | float) and now < nbf:
        raise ProvisionError(f"{where} is not valid before {iso(nbf)} (clock skew?)")
    ns = claims.get(CLAIM_NAMESPACE)
    caches = ns.get("caches") if isinstance(ns, dict) else None
    if not isinstance(caches, dict):
        raise ProvisionError(
            f"{where} has no '{CLAIM_NAMESPACE}' → 'caches' claim, so Attic treats every request "
            "as anonymous"
        )
    for pattern, flags in caches.items():
        valid = isinstance(flags, dict) and all(
            type(v) is int and v in (0, 1) for v in flags.values()
        )
        if not CACHE_PATTERN_RE.fullmatch(str(pattern)) or not valid:
            raise ProvisionError(
                f"{where} has an invalid 'caches' entry {pattern!r} (flags must be the integers 0 "
                "or 1), so Attic ignores the whole token"
            )
    return AdminToken(cast(dict[str, dict[str, object]], caches), str(header.get("alg")))


def check_signing_key(admin: str, key: SigningKey) -> None:
    """Tokens minted with a secret that is not the server's are silently ignored by Attic
    (they become anonymous). The admin token is signed by the server's secret, so it tells."""
    try:
        alg = jwt.get_unverified_header(admin).get("alg")
    except jwt.PyJWTError:
        return
    if alg != key.algorithm:
        raise ConfigError(
            f"the signing secret ({key.source}) is {key.algorithm} but the admin token is signed "
            f"with {alg}: the server uses {alg}, so tokens minted now would be refused"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jwt.decode(
                admin,
                key.verification_key(),
                algorithms=[key.algorithm],
                options={"verify_exp": False, "verify_nbf": False, "verify_aud": False},
            )
    except jwt.InvalidSignatureError:
        raise ConfigError(
            f"the signing secret ({key.source}) did not sign the admin token: one of them does "
            "not belong to this server, and tokens minted now would be refused"
        ) from None
    except jwt.PyJWTError:
        return


@dataclass(frozen=True)
class MintedToken:
    spec: TokenSpec
    not_before: int
    expires_at: int
    caches: dict[str, dict[str, int]]
    token: str = field(repr=False)

    def summary(self) -> dict[str, object]:
        return {
            "sub": self.spec.sub,
            "not_before": self.not_before,
            "expires_at": self.expires_at,
            "caches": self.caches,
        }


def token_claims(
    spec: TokenSpec,
    now: int,
    *,
    issuer: str | None = None,
    audiences: Sequence[str] = (),
) -> dict[str, object]:
    """Exactly what `atticadm make-token` puts in a token (§5.5): sub, exp, nbf (no iat),
    iss/aud only when the server binds them, and the namespace claim."""
    claims: dict[str, object] = {"sub": spec.sub, "exp": now + spec.validity, "nbf": now}
    if issuer:
        claims["iss"] = issuer
    if audiences:
        claims["aud"] = list(audiences)
    claims[CLAIM_NAMESPACE] = {"caches": spec.caches_claim()}
    return claims


def mint(spec: TokenSpec, key: SigningKey, now: int, config: ProvisionConfig) -> MintedToken:
    claims = token_claims(
        spec, now, issuer=config.token_bound_issuer, audiences=config.token_bound_audiences
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns on HMAC keys < 32 bytes; Attic takes any
        token = jwt.encode(claims, key.secret, algorithm=key.algorithm, headers={"typ": "JWT"})
    return MintedToken(spec, now, now + spec.validity, spec.caches_claim(), token)
