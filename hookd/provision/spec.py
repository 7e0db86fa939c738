"""The provision YAML: what it may say, and its parsed form (CacheSpec, TokenSpec,
ProvisionConfig). Every check of the file runs here, before the server is asked anything.

attic-provision's YAML is read as it is: a token may say ``cache: NAME`` with ``read: true`` /
``write: true`` instead of ``caches`` and ``permissions``, and ``validity`` defaults to
DEFAULT_VALIDITY (docs/provisioning.md).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from hookd import yamlfile
from hookd.attic.names import CACHE_NAME_RE, CACHE_PATTERN_RE
from hookd.attic.tls import TlsConfig
from hookd.config import TLS_KEYS, tls_files
from hookd.duration import format_duration, parse_duration
from hookd.errors import ConfigError
from hookd.fields import Fields
from hookd.provision.claims import (
    PERMISSIONS,
    SHORTHANDS,
    caches_claim,
    flag_names,
    ordered_grants,
    pattern_subsumes,
    patterns_overlap,
)

TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")  # a file name and a Secret key

# `attic cache create` defaults (§3.2), used for fields the YAML leaves out when creating.
DEFAULT_PUBLIC = False
DEFAULT_PRIORITY = 41
DEFAULT_UPSTREAM: tuple[str, ...] = ("cache.nixos.org-1",)
DEFAULT_STORE_DIR = "/nix/store"
I32_MAX = 2**31 - 1

TOP_KEYS = (
    "server_url",
    *TLS_KEYS,
    "admin_token",
    "admin_token_file",
    "caches",
    "tokens",
    "jwt",
)
CACHE_KEYS = (
    "name",
    "state",
    "public",
    "priority",
    "retention_period",
    "upstream_cache_key_names",
    "store_dir",
    "keypair",
)
TOKEN_KEYS = ("name", "sub", "caches", "permissions", "validity", "cache", "read", "write")
# A token without `validity` (attic-provision's YAML has none) is valid this long.
DEFAULT_VALIDITY = "365d"
JWT_KEYS = ("token_bound_issuer", "token_bound_audiences")

ENV_SERVER_URL = "ATTIC_SERVER_URL"
ENV_ADMIN_TOKEN = "ATTIC_ADMIN_TOKEN"
ENV_HS256 = "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"
ENV_RS256 = "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"

GLOBAL: Literal["global"] = "global"
Retention = int | Literal["global"]  # seconds (0 = never expire) or the server-wide default

# ---------------------------------------------------------------------------------------------
# Parsed configuration


@dataclass(frozen=True)
class CacheSpec:
    """One cache as the YAML declares it. ``None`` means "not managed": left as the server has it
    (and the `attic cache create` default when the cache is created)."""

    name: str
    state: Literal["present", "absent"] = "present"
    public: bool | None = None
    priority: int | None = None
    upstream_cache_key_names: tuple[str, ...] | None = None
    store_dir: str | None = None
    retention_period: Retention | None = None
    keypair: Literal["generate", "keep"] = "generate"

    def wanted(self) -> dict[str, object]:
        """The managed fields, by YAML name."""
        values: dict[str, object] = {
            "public": self.public,
            "priority": self.priority,
            "upstream_cache_key_names": self.upstream_cache_key_names,
            "store_dir": self.store_dir,
            "retention_period": self.retention_period,
        }
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class TokenSpec:
    """One token to mint. ``grants`` keeps the YAML's (pattern, flags) pairs; ``caches_claim``
    turns them into what Attic's first-match lookup understands."""

    name: str
    sub: str
    grants: tuple[tuple[str, frozenset[str]], ...]
    validity: int  # seconds

    def caches_claim(self) -> dict[str, dict[str, int]]:
        return caches_claim(self.grants)


@dataclass(frozen=True)
class ProvisionConfig:
    source: str
    server_url: str
    caches: tuple[CacheSpec, ...] = ()
    tokens: tuple[TokenSpec, ...] = ()
    admin_token: str | None = field(default=None, repr=False)
    admin_token_source: str = ""
    token_bound_issuer: str | None = None
    token_bound_audiences: tuple[str, ...] = ()
    # TLS for server_url, as the daemon's servers.NAME has it (hookd.attic.tls.TlsConfig)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return urlsplit(self.server_url).hostname or ""

    def tls(self) -> TlsConfig:
        """How the Attic client reaches server_url over TLS; messages name this file's keys."""
        return TlsConfig(
            self.host,
            self.server_url,
            self.ca_file,
            self.client_cert,
            self.client_key,
            keys_in=self.source,
            endpoint_key="server_url",
        )


def parse_retention(value: object, where: str) -> Retention:
    """``never`` → 0 (Attic: time-based GC disabled for this cache), ``global`` → the server's
    default-retention-period, a duration → seconds."""
    if value == "never":
        return 0
    if value == GLOBAL:
        return GLOBAL
    seconds = parse_duration(value, where) if isinstance(value, str) else None
    if seconds is None:
        raise ConfigError(
            f"{where}: invalid retention_period {value!r}: expected never, global or a duration "
            "such as 30d"
        )
    if seconds > I32_MAX:
        raise ConfigError(f"{where}: retention_period {value!r} is too long (at most 24855d)")
    return seconds


def format_retention(value: object) -> str:
    if value == GLOBAL:
        return GLOBAL
    if value == 0:
        return "never"
    return format_duration(cast(int, value))


def shadowed_grants(spec: TokenSpec) -> list[str]:
    """Warnings for overlapping, non-nested patterns: Attic uses the first one only."""
    order, _, effective = ordered_grants(spec.grants)
    wild = [p for p in order if "*" in p]
    out = []
    for i, p in enumerate(wild):
        for q in wild[i + 1 :]:
            lost = effective[q] - effective[p]
            if lost and not pattern_subsumes(q, p) and patterns_overlap(p, q):
                out.append(
                    f"token '{spec.name}': a cache name matching both '{p}' and '{q}' gets only "
                    f"the permissions of '{p}' (not {flag_names(lost)}): Attic uses the first "
                    "matching pattern (issue #133); add an entry for that cache"
                )
    return out


# ---------------------------------------------------------------------------------------------
# Loading the YAML


def load_config(path: Path, env: Mapping[str, str]) -> ProvisionConfig:
    raw = yamlfile.load(path)  # hookd's one YAML reader: duplicate keys are refused
    return parse_config(raw, source=str(path), base_dir=path.parent, env=env)


def parse_config(
    raw: object, *, source: str, base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> ProvisionConfig:
    env = env if env is not None else {}
    r = Fields(source, "place")  # hookd's one field reader, in provision's message form
    top = r.mapping(raw, "", TOP_KEYS)
    notes: list[str] = []

    if env.get(ENV_SERVER_URL, "").strip():
        server_url = _server_url(env[ENV_SERVER_URL], Fields(ENV_SERVER_URL, "place"), "")
    elif "server_url" in top:
        server_url = _server_url(top["server_url"], r, "server_url")
    else:
        raise ConfigError(f"{source}: 'server_url' is missing (or set {ENV_SERVER_URL})")
    tls = tls_files(r, top, "")

    admin_token, admin_source = _admin_token(top, r, base_dir, env, notes)

    caches_raw = r.items(top.get("caches"), "caches", "a list of caches")
    caches = tuple(_cache(item, r, f"caches[{i}]") for i, item in enumerate(caches_raw))
    _no_duplicates([c.name for c in caches], r.where("caches"), "cache")

    tokens_raw = r.items(top.get("tokens"), "tokens", "a list of tokens")
    tokens = tuple(_token(item, r, f"tokens[{i}]") for i, item in enumerate(tokens_raw))
    _no_duplicates([t.name for t in tokens], r.where("tokens"), "token")
    for spec in tokens:
        notes.extend(shadowed_grants(spec))

    jwt_cfg = r.mapping(top.get("jwt"), "jwt", JWT_KEYS)
    issuer = jwt_cfg.get("token_bound_issuer")
    return ProvisionConfig(
        source=source,
        server_url=server_url,
        caches=caches,
        tokens=tokens,
        admin_token=admin_token,
        admin_token_source=admin_source,
        token_bound_issuer=r.string(issuer, "jwt.token_bound_issuer") if issuer else None,
        token_bound_audiences=r.strings(
            jwt_cfg.get("token_bound_audiences"), "jwt.token_bound_audiences", single=True
        ),
        ca_file=tls.get("ca_file"),
        client_cert=tls.get("client_cert"),
        client_key=tls.get("client_key"),
        warnings=tuple(notes),
    )


def _server_url(value: object, r: Fields, key: str) -> str:
    url = r.string(value, key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail(key, "an http:// or https:// URL", url)
    return url if url.endswith("/") else url + "/"


def _admin_token(
    top: Mapping[str, Any],
    r: Fields,
    base_dir: Path | None,
    env: Mapping[str, str],
    notes: list[str],
) -> tuple[str | None, str]:
    source = r.source
    if "admin_token" in top and "admin_token_file" in top:
        raise ConfigError(f"{source}: set either admin_token or admin_token_file, not both")
    if "admin_token" in top:
        # warned even when the environment overrides it: the secret is in the file all the same
        notes.append(
            f"{source}: admin_token is written in the file; prefer admin_token_file or "
            f"{ENV_ADMIN_TOKEN} so the secret stays out of version control"
        )
    if env.get(ENV_ADMIN_TOKEN, "").strip():
        return env[ENV_ADMIN_TOKEN].strip(), ENV_ADMIN_TOKEN
    if "admin_token_file" in top:
        path = Path(r.string(top["admin_token_file"], "admin_token_file"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(
                f"{source}: admin_token_file: cannot read {path}: {e.strerror}"
            ) from None
        if not token:
            raise ConfigError(f"{source}: admin_token_file: {path} is empty")
        return token, f"admin_token_file {path}"
    if "admin_token" in top:
        return r.string(top["admin_token"], "admin_token"), "admin_token"
    return None, ""


def _no_duplicates(names: list[str], where: str, what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: {what} '{dupes[0]}' is declared more than once")


def _cache(item: object, r: Fields, key: str) -> CacheSpec:
    entry = r.mapping(item, key, CACHE_KEYS)
    if "name" not in entry:
        raise ConfigError(f"{r.where(key)}: 'name' is missing")
    name = r.string(entry["name"], f"{key}.name")
    if not CACHE_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{r.where(key)}.name: invalid cache name {name!r}: 1-50 characters of "
            "A-Z a-z 0-9 - _ +, starting with a letter or digit"
        )
    key = f"{key} ({name})"
    state = entry.get("state", "present")
    if state not in ("present", "absent"):
        raise r.fail(f"{key}: state", "present or absent", state)
    keypair = entry.get("keypair", "generate")
    if keypair not in ("generate", "keep"):
        raise r.fail(
            f"{key}: keypair",
            "generate (a new key when the cache is created) or keep (the cache must exist; its "
            "key is never touched)",
            keypair,
        )
    upstream = entry.get("upstream_cache_key_names")
    return CacheSpec(
        name=name,
        state=state,
        public=r.boolean(entry["public"], f"{key}: public") if "public" in entry else None,
        priority=(
            r.integer(entry["priority"], f"{key}: priority", -(2**31), I32_MAX)
            if "priority" in entry
            else None
        ),
        upstream_cache_key_names=(
            r.strings(upstream, f"{key}: upstream_cache_key_names", single=True)
            if upstream is not None
            else None
        ),
        store_dir=r.string(entry["store_dir"], f"{key}: store_dir")
        if "store_dir" in entry
        else None,
        retention_period=(
            parse_retention(entry["retention_period"], r.where(f"{key}: retention_period"))
            if "retention_period" in entry
            else None
        ),
        keypair=keypair,
    )


def _permission_flags(value: object, r: Fields, key: str) -> frozenset[str]:
    names = r.strings(value, key, single=True)
    flags: set[str] = set()
    for name in names:
        for expanded in SHORTHANDS.get(name, (name,)):
            if expanded not in PERMISSIONS:
                known = [*PERMISSIONS, *SHORTHANDS]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{r.where(key)}: unknown permission '{name}'{hint}; known: {', '.join(known)}"
                )
            flags.add(PERMISSIONS[expanded])
    if not flags:
        raise ConfigError(f"{r.where(key)}: no permissions given")
    return frozenset(flags)


def _pattern(value: object, r: Fields, key: str) -> str:
    pattern = r.string(value, key)
    if not CACHE_PATTERN_RE.fullmatch(pattern):
        raise ConfigError(
            f"{r.where(key)}: invalid cache name or pattern {pattern!r}: 1-50 characters of "
            "A-Z a-z 0-9 - _ + *, not starting with - _ or +"
        )
    return pattern


def _token(item: object, r: Fields, key: str) -> TokenSpec:
    entry = r.mapping(item, key, TOKEN_KEYS)
    if "name" not in entry and "sub" not in entry:
        raise ConfigError(f"{r.where(key)}: 'name' is missing")
    name = r.string(entry.get("name", entry.get("sub")), f"{key}.name")
    if not TOKEN_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{r.where(key)}.name: invalid token name {name!r}: letters, digits, '.', '_', '-' "
            "(it names the output file)"
        )
    key = f"{key} ({name})"
    sub = r.string(entry.get("sub", name), f"{key}: sub")
    validity = parse_duration(entry.get("validity", DEFAULT_VALIDITY), r.where(f"{key}: validity"))
    if validity <= 0:
        raise ConfigError(f"{r.where(key)}: validity must be longer than 0s")
    if "cache" in entry or "read" in entry or "write" in entry:
        grants = [_attic_provision_grant(entry, r, key)]
    else:
        grants = _grants(entry, r, key)
    if not grants:
        raise ConfigError(f"{r.where(key)}: 'caches' is empty")
    return TokenSpec(name=name, sub=sub, grants=tuple(grants), validity=validity)


def _grants(entry: Mapping[str, Any], r: Fields, key: str) -> list[tuple[str, frozenset[str]]]:
    """hookd's form: ``caches: [names or patterns]`` + ``permissions``, or a mapping of
    ``pattern: permissions``."""
    where = r.where(key)
    caches = entry.get("caches")
    grants: list[tuple[str, frozenset[str]]] = []
    if isinstance(caches, dict):
        if "permissions" in entry:
            raise ConfigError(
                f"{where}: 'permissions' goes inside 'caches' when caches is a mapping "
                "(pattern: permissions)"
            )
        for pattern, perms in caches.items():
            p = _pattern(pattern, r, f"{key}: caches")
            grants.append((p, _permission_flags(perms, r, f"{key}: caches.{p}")))
        return grants
    if caches is None:
        raise ConfigError(f"{where}: 'caches' is missing (cache names or patterns)")
    if "permissions" not in entry:
        raise ConfigError(f"{where}: 'permissions' is missing (e.g. permissions: write)")
    flags = _permission_flags(entry["permissions"], r, f"{key}: permissions")
    patterns = r.strings(caches, f"{key}: caches", single=True)
    return [(_pattern(p, r, f"{key}: caches"), flags) for p in patterns]


def _attic_provision_grant(
    entry: Mapping[str, Any], r: Fields, key: str
) -> tuple[str, frozenset[str]]:
    """attic-provision's form: ``cache: NAME`` with ``read`` / ``write`` booleans. ``write``
    means what the ``write`` shorthand means (pull and push: pushing asks what is missing)."""
    where = r.where(key)
    mixed = [k for k in ("caches", "permissions") if k in entry]
    if mixed:
        raise ConfigError(
            f"{where}: '{mixed[0]}' cannot be combined with attic-provision's cache/read/write; "
            "use either cache + read/write or caches + permissions"
        )
    if "cache" not in entry:
        raise ConfigError(f"{where}: 'cache' is missing (the cache that read/write apply to)")
    pattern = _pattern(entry["cache"], r, f"{key}: cache")
    names: list[str] = []
    for flag in ("read", "write"):
        if flag in entry and r.boolean(entry[flag], f"{key}: {flag}"):
            names.append(flag)
    if not names:
        raise ConfigError(f"{where}: no permissions given: set read: true and/or write: true")
    return pattern, _permission_flags(names, r, key)
