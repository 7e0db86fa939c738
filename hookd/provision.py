"""`hookd provision`: declarative Attic caches and tokens from a version-controlled YAML.

Flow (a bad input changes nothing, because every check runs before the first write):

1. load and validate the YAML (+ ``ATTIC_SERVER_URL`` / ``ATTIC_ADMIN_TOKEN``), the signing secret
   and the output destination;
2. plan: one GET per cache; a missing cache is planned as *create*, a field that differs as
   *update old → new*, ``state: absent`` as *destroy*;
3. check the plan against the admin token's own claims (decoded, not verified): ``cc`` for a
   create, ``cr`` for an update, ``cq`` too when ``retention_period`` changes, ``cd`` for a destroy;
4. ``--dry-run`` stops here and prints the plan; otherwise apply (POST, one PATCH per cache with
   only the fields that differ, DELETE), then mint the tokens locally (Attic has no token
   endpoint: a token is a JWT signed with the server's own secret) and write them out.

Neither the admin token nor a minted token is ever printed, except minted tokens on stdout with
``--json``, whose purpose that is. Reference: ``docs/attic-api.md`` §3-§6 (every § below refers to it).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import difflib
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, cast
from urllib.parse import urlsplit

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hookd.attic.claims import CLAIM_NAMESPACE, granted, lookup
from hookd.attic.names import CACHE_NAME_RE, CACHE_PATTERN_RE
from hookd.attic.redact import Redactor
from hookd.errors import ConfigError, HookdError

TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")  # a file name and a Secret key

# YAML permission name → Attic claim flag (§5.3), in Attic's own order.
PERMISSIONS: dict[str, str] = {
    "pull": "r",
    "push": "w",
    "delete": "d",
    "create_cache": "cc",
    "configure_cache": "cr",
    "configure_retention": "cq",
    "destroy_cache": "cd",
}
SHORTHANDS: dict[str, tuple[str, ...]] = {"read": ("pull",), "write": ("pull", "push")}
FLAG_ORDER = tuple(PERMISSIONS.values())
FLAG_NAMES = {flag: name for name, flag in PERMISSIONS.items()}

# `attic cache create` defaults (§3.2), used for fields the YAML leaves out when creating.
DEFAULT_PUBLIC = False
DEFAULT_PRIORITY = 41
DEFAULT_UPSTREAM: tuple[str, ...] = ("cache.nixos.org-1",)
DEFAULT_STORE_DIR = "/nix/store"
I32_MAX = 2**31 - 1

TOP_KEYS = ("server_url", "admin_token", "admin_token_file", "caches", "tokens", "jwt")
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
TOKEN_KEYS = ("name", "sub", "caches", "permissions", "validity")
JWT_KEYS = ("token_bound_issuer", "token_bound_audiences")

ENV_SERVER_URL = "ATTIC_SERVER_URL"
ENV_ADMIN_TOKEN = "ATTIC_ADMIN_TOKEN"
ENV_HS256 = "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"
ENV_RS256 = "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

GLOBAL: Literal["global"] = "global"
Retention = int | Literal["global"]  # seconds (0 = never expire) or the server-wide default

# YAML field name → Attic CacheConfig field name; also the order fields appear in a plan.
WIRE_FIELDS: dict[str, str] = {
    "public": "is_public",
    "priority": "priority",
    "upstream_cache_key_names": "upstream_cache_key_names",
    "store_dir": "store_dir",
    "retention_period": "retention_period",
}


class ProvisionError(HookdError):
    """The server, the credentials or the current state prevent provisioning (exit 1)."""


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
    warnings: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return urlsplit(self.server_url).hostname or ""


# ---------------------------------------------------------------------------------------------
# Durations


_DURATION_RE = re.compile(r"(?:\d+[smhdwy]\s*)+")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: object, where: str) -> int:
    """``90d``, ``12h``, ``1d12h``, ``30m``, ``2w``, ``1y`` (365 days) → seconds."""
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text.strip()):
        raise ConfigError(
            f"{where}: invalid duration {text!r}: expected a number and a unit "
            "(s, m, h, d, w or y), e.g. 90d, 12h or 1d12h"
        )
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdwy])", text))


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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


# ---------------------------------------------------------------------------------------------
# Cache-name patterns and the token claim (§5.4: exact key first, then the FIRST matching
# pattern in JSON order, no merging — issue #133)


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern), re.DOTALL)


def pattern_matches(pattern: str, name: str) -> bool:
    return _glob(pattern).fullmatch(name) is not None


def pattern_subsumes(general: str, specific: str) -> bool:
    """Does every name matching ``specific`` match ``general``? (Sound: the literal characters of
    ``general`` can never match a ``*`` of ``specific``, only its ``*`` can.)"""
    return pattern_matches(general, specific)


def patterns_overlap(p: str, q: str) -> bool:
    """Is there a name that both patterns match? (Product of the two pattern automata.)"""

    def closure(pat: str, i: int) -> list[int]:
        out = [i]
        while i < len(pat) and pat[i] == "*":
            i += 1
            out.append(i)
        return out

    def step(pat: str, i: int, c: str) -> list[int]:
        if i >= len(pat):
            return []
        if pat[i] == "*":
            return [i]
        return [i + 1] if pat[i] == c else []

    alphabet = (set(p) | set(q) | {"\0"}) - {"*"}
    todo = [(i, j) for i in closure(p, 0) for j in closure(q, 0)]
    seen = set(todo)
    while todo:
        i, j = todo.pop()
        if i == len(p) and j == len(q):
            return True
        for c in alphabet:
            for ni in step(p, i, c):
                for nj in step(q, j, c):
                    for state in ((a, b) for a in closure(p, ni) for b in closure(q, nj)):
                        if state not in seen:
                            seen.add(state)
                            todo.append(state)
    return False


def _specificity(pattern: str) -> tuple[int, int]:
    """More literal characters first, then fewer (collapsed) stars: if pattern Q strictly contains
    pattern P, P sorts before Q."""
    collapsed = re.sub(r"\*+", "*", pattern)
    return (-len(collapsed.replace("*", "")), collapsed.count("*"))


def _ordered_grants(
    grants: Sequence[tuple[str, frozenset[str]]],
) -> tuple[list[str], dict[str, set[str]], dict[str, set[str]]]:
    declared: dict[str, set[str]] = {}
    for pattern, flags in grants:
        declared.setdefault(pattern, set()).update(flags)
    exact = [p for p in declared if "*" not in p]
    wild = sorted((p for p in declared if "*" in p), key=_specificity)  # stable
    effective: dict[str, set[str]] = {}
    for p in exact + wild:
        effective[p] = set(declared[p])
        for q in wild:
            if q != p and pattern_subsumes(q, p):
                effective[p] |= declared[q]
    return exact + wild, declared, effective


def caches_claim(grants: Sequence[tuple[str, frozenset[str]]]) -> dict[str, dict[str, int]]:
    """The ``caches`` object of the claim. A cache gets the union of every grant whose pattern
    matches it: each entry carries its own flags plus those of every wider pattern, exact names
    come first (Attic looks them up first anyway) and narrower patterns before wider ones, so
    Attic's first-match rule gives the same answer. Flags are the integers 1 (0s are omitted,
    as `atticadm make-token` does)."""
    order, _, effective = _ordered_grants(grants)
    return {p: {f: 1 for f in FLAG_ORDER if f in effective[p]} for p in order}


def shadowed_grants(spec: TokenSpec) -> list[str]:
    """Warnings for overlapping, non-nested patterns: Attic uses the first one only."""
    order, _, effective = _ordered_grants(spec.grants)
    wild = [p for p in order if "*" in p]
    out = []
    for i, p in enumerate(wild):
        for q in wild[i + 1 :]:
            lost = effective[q] - effective[p]
            if lost and not pattern_subsumes(q, p) and patterns_overlap(p, q):
                out.append(
                    f"token '{spec.name}': a cache name matching both '{p}' and '{q}' gets only "
                    f"the permissions of '{p}' (not {_flag_names(lost)}): Attic uses the first "
                    "matching pattern (issue #133); add an entry for that cache"
                )
    return out


def _flag_names(flags: set[str] | frozenset[str]) -> str:
    return " ".join(FLAG_NAMES[f] for f in FLAG_ORDER if f in flags) or "nothing"


def permission_for(
    claim: Mapping[str, Mapping[str, object]], name: str
) -> tuple[str | None, set[str]]:
    """What Attic grants ``name`` under a ``caches`` claim: (matching key, flags)."""
    found = lookup(claim, name)
    if found is None:
        return None, set()
    return found[0], set(granted(found[1]))


# ---------------------------------------------------------------------------------------------
# Loading the YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _mapping(value: object, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_kind(value)}")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{key}'{hint}; known keys: {', '.join(allowed)}"
            )
    return value


def _kind(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {_kind(value)}")
    return value.strip()


def _strings(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {_kind(value)}")
    return tuple(value)


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {_kind(value)}")
    return value


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value <= I32_MAX:
        raise ConfigError(f"{where}: expected an integer, got {_kind(value)}")
    return value


def load_config(path: Path, env: Mapping[str, str]) -> ProvisionConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    return parse_config(raw, source=str(path), base_dir=path.parent, env=env)


def parse_config(
    raw: object, *, source: str, base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> ProvisionConfig:
    env = env if env is not None else {}
    top = _mapping(raw if raw is not None else {}, source, TOP_KEYS)
    notes: list[str] = []

    if env.get(ENV_SERVER_URL, "").strip():
        server_url = _server_url(env[ENV_SERVER_URL], ENV_SERVER_URL)
    elif "server_url" in top:
        server_url = _server_url(top["server_url"], f"{source}: server_url")
    else:
        raise ConfigError(f"{source}: 'server_url' is missing (or set {ENV_SERVER_URL})")

    admin_token, admin_source = _admin_token(top, source, base_dir, env, notes)

    caches_raw = top.get("caches") or []
    if not isinstance(caches_raw, list):
        raise ConfigError(f"{source}: caches: expected a list of caches, got {_kind(caches_raw)}")
    caches = tuple(_cache(item, f"{source}: caches[{i}]") for i, item in enumerate(caches_raw))
    _no_duplicates([c.name for c in caches], f"{source}: caches", "cache")

    tokens_raw = top.get("tokens") or []
    if not isinstance(tokens_raw, list):
        raise ConfigError(f"{source}: tokens: expected a list of tokens, got {_kind(tokens_raw)}")
    tokens = tuple(_token(item, f"{source}: tokens[{i}]") for i, item in enumerate(tokens_raw))
    _no_duplicates([t.name for t in tokens], f"{source}: tokens", "token")
    for spec in tokens:
        notes.extend(shadowed_grants(spec))

    jwt_cfg = _mapping(top.get("jwt") or {}, f"{source}: jwt", JWT_KEYS)
    issuer = jwt_cfg.get("token_bound_issuer")
    return ProvisionConfig(
        source=source,
        server_url=server_url,
        caches=caches,
        tokens=tokens,
        admin_token=admin_token,
        admin_token_source=admin_source,
        token_bound_issuer=_string(issuer, f"{source}: jwt.token_bound_issuer") if issuer else None,
        token_bound_audiences=_strings(
            jwt_cfg.get("token_bound_audiences") or [], f"{source}: jwt.token_bound_audiences"
        ),
        warnings=tuple(notes),
    )


def _server_url(value: object, where: str) -> str:
    url = _string(value, where)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {url!r}")
    return url if url.endswith("/") else url + "/"


def _admin_token(
    top: Mapping[str, Any],
    source: str,
    base_dir: Path | None,
    env: Mapping[str, str],
    notes: list[str],
) -> tuple[str | None, str]:
    if "admin_token" in top and "admin_token_file" in top:
        raise ConfigError(f"{source}: set either admin_token or admin_token_file, not both")
    if env.get(ENV_ADMIN_TOKEN, "").strip():
        return env[ENV_ADMIN_TOKEN].strip(), ENV_ADMIN_TOKEN
    if "admin_token_file" in top:
        path = Path(_string(top["admin_token_file"], f"{source}: admin_token_file"))
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
        notes.append(
            f"{source}: admin_token is written in the file; prefer admin_token_file or "
            f"{ENV_ADMIN_TOKEN} so the secret stays out of version control"
        )
        return _string(top["admin_token"], f"{source}: admin_token"), "admin_token"
    return None, ""


def _no_duplicates(names: list[str], where: str, what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: {what} '{dupes[0]}' is declared more than once")


def _cache(item: object, where: str) -> CacheSpec:
    entry = _mapping(item, where, CACHE_KEYS)
    if "name" not in entry:
        raise ConfigError(f"{where}: 'name' is missing")
    name = _string(entry["name"], f"{where}.name")
    if not CACHE_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where}.name: invalid cache name {name!r}: 1-50 characters of A-Z a-z 0-9 - _ +, "
            "starting with a letter or digit"
        )
    where = f"{where} ({name})"
    state = entry.get("state", "present")
    if state not in ("present", "absent"):
        raise ConfigError(f"{where}: state: expected present or absent, got {_kind(state)}")
    keypair = entry.get("keypair", "generate")
    if keypair not in ("generate", "keep"):
        raise ConfigError(
            f"{where}: keypair: expected generate (a new key when the cache is created) or keep "
            f"(the cache must exist; its key is never touched), got {_kind(keypair)}"
        )
    upstream = entry.get("upstream_cache_key_names")
    return CacheSpec(
        name=name,
        state=state,
        public=_boolean(entry["public"], f"{where}: public") if "public" in entry else None,
        priority=_integer(entry["priority"], f"{where}: priority") if "priority" in entry else None,
        upstream_cache_key_names=(
            _strings(upstream, f"{where}: upstream_cache_key_names")
            if upstream is not None
            else None
        ),
        store_dir=_string(entry["store_dir"], f"{where}: store_dir")
        if "store_dir" in entry
        else None,
        retention_period=(
            parse_retention(entry["retention_period"], f"{where}: retention_period")
            if "retention_period" in entry
            else None
        ),
        keypair=keypair,
    )


def _permission_flags(value: object, where: str) -> frozenset[str]:
    names = _strings(value, where)
    flags: set[str] = set()
    for name in names:
        for expanded in SHORTHANDS.get(name, (name,)):
            if expanded not in PERMISSIONS:
                known = [*PERMISSIONS, *SHORTHANDS]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{where}: unknown permission '{name}'{hint}; known: {', '.join(known)}"
                )
            flags.add(PERMISSIONS[expanded])
    if not flags:
        raise ConfigError(f"{where}: no permissions given")
    return frozenset(flags)


def _pattern(value: object, where: str) -> str:
    pattern = _string(value, where)
    if not CACHE_PATTERN_RE.fullmatch(pattern):
        raise ConfigError(
            f"{where}: invalid cache name or pattern {pattern!r}: 1-50 characters of "
            "A-Z a-z 0-9 - _ + *, not starting with - _ or +"
        )
    return pattern


def _token(item: object, where: str) -> TokenSpec:
    entry = _mapping(item, where, TOKEN_KEYS)
    if "name" not in entry and "sub" not in entry:
        raise ConfigError(f"{where}: 'name' is missing")
    name = _string(entry.get("name", entry.get("sub")), f"{where}.name")
    if not TOKEN_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where}.name: invalid token name {name!r}: letters, digits, '.', '_', '-' "
            "(it names the output file)"
        )
    where = f"{where} ({name})"
    sub = _string(entry.get("sub", name), f"{where}: sub")
    if "validity" not in entry:
        raise ConfigError(f"{where}: 'validity' is missing (e.g. validity: 365d)")
    validity = parse_duration(entry["validity"], f"{where}: validity")
    if validity <= 0:
        raise ConfigError(f"{where}: validity must be longer than 0s")
    caches = entry.get("caches")
    grants: list[tuple[str, frozenset[str]]] = []
    if isinstance(caches, dict):
        if "permissions" in entry:
            raise ConfigError(
                f"{where}: 'permissions' goes inside 'caches' when caches is a mapping "
                "(pattern: permissions)"
            )
        for pattern, perms in caches.items():
            p = _pattern(pattern, f"{where}: caches")
            grants.append((p, _permission_flags(perms, f"{where}: caches.{p}")))
    else:
        if caches is None:
            raise ConfigError(f"{where}: 'caches' is missing (cache names or patterns)")
        if "permissions" not in entry:
            raise ConfigError(f"{where}: 'permissions' is missing (e.g. permissions: write)")
        flags = _permission_flags(entry["permissions"], f"{where}: permissions")
        patterns = _strings(caches, f"{where}: caches")
        grants.extend((_pattern(p, f"{where}: caches"), flags) for p in patterns)
    if not grants:
        raise ConfigError(f"{where}: 'caches' is empty")
    return TokenSpec(name=name, sub=sub, grants=tuple(grants), validity=validity)


# ---------------------------------------------------------------------------------------------
# The signing secret and the admin token


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
        f"{ENV_HS256} or {ENV_RS256} (the same value atticd uses), or pass --no-tokens"
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
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return AdminToken(None)
    where = f"the admin token ({source})"
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and now > exp:
        raise ProvisionError(f"{where} expired at {_iso(exp)}; mint a new one")
    if isinstance(nbf, int | float) and now < nbf:
        raise ProvisionError(f"{where} is not valid before {_iso(nbf)} (clock skew?)")
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


# ---------------------------------------------------------------------------------------------
# The Attic API (only cache-config is needed)


@dataclass(frozen=True)
class CacheState:
    public: bool
    priority: int
    upstream_cache_key_names: tuple[str, ...]
    store_dir: str
    retention_period: Retention
    public_key: str | None = None

    def value(self, name: str) -> object:
        return cast(object, getattr(self, name))


def _state_from_json(data: object, cache: str) -> CacheState:
    try:
        assert isinstance(data, dict)
        retention = data.get("retention_period", "Global")
        if retention == "Global":
            parsed: Retention = GLOBAL
        else:
            assert isinstance(retention, dict)
            parsed = int(retention["Period"])
        return CacheState(
            public=bool(data["is_public"]),
            priority=int(data["priority"]),
            upstream_cache_key_names=tuple(str(s) for s in data["upstream_cache_key_names"]),
            store_dir=str(data["store_dir"]),
            retention_period=parsed,
            public_key=data.get("public_key"),
        )
    except (AssertionError, KeyError, TypeError, ValueError):
        raise ProvisionError(
            f"unexpected cache-config for '{cache}' from the server: {str(data)[:200]}"
        ) from None


def _wire(name: str, value: object) -> object:
    if name == "retention_period":
        return "Global" if value == GLOBAL else {"Period": value}
    if name == "upstream_cache_key_names":
        return list(cast(tuple[str, ...], value))
    return value


class AtticAdmin:
    """GET/POST/PATCH/DELETE ``/_api/v1/cache-config/{cache}`` with the admin token."""

    def __init__(
        self,
        server_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server_url = server_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=server_url,
            headers=headers,
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
        )
        self.writes = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AtticAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, cache: str, body: object = None) -> httpx.Response:
        path = f"_api/v1/cache-config/{cache}"
        try:
            if body is None:
                return self._client.request(method, path)
            return self._client.request(method, path, json=body)
        except httpx.ConnectError as e:
            raise ProvisionError(
                f"cannot reach Attic server at {self.server_url}: {_reason(e)}"
            ) from None
        except httpx.TimeoutException:
            raise ProvisionError(
                f"cannot reach Attic server at {self.server_url}: timed out"
            ) from None
        except httpx.HTTPError as e:
            raise ProvisionError(
                f"request to Attic server at {self.server_url} failed: {_reason(e)}"
            ) from None

    def get(self, cache: str) -> CacheState | None:
        r = self._request("GET", cache)
        if r.status_code == 200:
            try:
                data = r.json()
            except ValueError:
                data = r.text
            return _state_from_json(data, cache)
        kind, message = _error(r)
        if r.status_code == 404 and kind == "NoSuchCache":
            return None
        if r.status_code == 404:
            raise ProvisionError(
                f"{self.server_url} does not look like an Attic server: GET "
                f"/_api/v1/cache-config/{cache} answered 404 {message}"
            )
        if r.status_code == 401:
            raise ProvisionError(
                f"the server refused to show cache '{cache}' (401 Unauthorized): the admin token "
                "is invalid, expired or signed with another secret, or grants nothing on this name"
            )
        if r.status_code == 403:
            raise ProvisionError(
                f"the admin token may not read cache '{cache}' (403): it needs pull on it so "
                "provision can compare its settings"
            )
        raise ProvisionError(f"GET cache '{cache}': {message}")

    def create(self, cache: str, body: dict[str, object]) -> bool:
        """POST; False when the cache already exists (CacheAlreadyExists)."""
        self.writes += 1
        r = self._request("POST", cache, body)
        if r.status_code == 200:
            return True
        kind, message = _error(r)
        if r.status_code == 400 and kind == "CacheAlreadyExists":
            return False
        raise ProvisionError(_refused("create", cache, r.status_code, message, {"cc"}))

    def configure(self, cache: str, body: dict[str, object]) -> None:
        self.writes += 1
        r = self._request("PATCH", cache, body)
        if r.status_code == 200:
            return
        _, message = _error(r)
        needs = {"cr", "cq"} if "retention_period" in body else {"cr"}
        text = _refused("configure", cache, r.status_code, message, needs)
        if r.status_code == 403 and "retention_period" in body:
            text += " (changing retention_period needs configure_retention (cq) as well as configure_cache (cr))"
        raise ProvisionError(text)

    def destroy(self, cache: str) -> bool:
        """DELETE; False when the cache was already gone."""
        self.writes += 1
        r = self._request("DELETE", cache)
        if r.status_code == 200:
            return True
        kind, message = _error(r)
        if r.status_code == 404 and kind == "NoSuchCache":
            return False
        raise ProvisionError(_refused("destroy", cache, r.status_code, message, {"cd"}))


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[-1] if text else text)
    return text[:1].lower() + text[1:]


def _error(r: httpx.Response) -> tuple[str, str]:
    """(Attic error kind or '', readable message) — Attic errors are JSON, axum's plain text."""
    try:
        data = r.json()
        if isinstance(data, dict) and "error" in data:
            return str(data["error"]), f"{r.status_code} {data['error']}: {data.get('message', '')}"
    except ValueError:
        pass
    text = " ".join(r.text.split())[:200]
    return "", f"HTTP {r.status_code}" + (f": {text}" if text else "")


def _refused(action: str, cache: str, status: int, message: str, needs: set[str]) -> str:
    text = f"the server refused to {action} cache '{cache}' ({message})"
    if status in (401, 403):
        text += f": the admin token needs {_flag_list(needs)} on '{cache}'"
    return text


def _flag_list(flags: set[str] | frozenset[str]) -> str:
    return ", ".join(f"{FLAG_NAMES[f]} ({f})" for f in FLAG_ORDER if f in flags)


# ---------------------------------------------------------------------------------------------
# The plan


ChangeKind = Literal["create", "update", "unchanged", "destroy"]


@dataclass(frozen=True)
class Change:
    """One line of the plan. ``update`` carries one field (YAML name) with old and new values;
    ``create`` carries the create request's settings in ``new``."""

    kind: ChangeKind
    cache: str
    field: str | None = None
    old: object = None
    new: object = None

    def describe(self) -> str:
        if self.kind == "create":
            settings = cast(Mapping[str, object], self.new)
            shown = ", ".join(f"{k}={_show(k, v)}" for k, v in settings.items())
            return f"+ create cache {self.cache} ({shown}, keypair=generate)"
        if self.kind == "update":
            assert self.field is not None
            old, new = _show(self.field, self.old), _show(self.field, self.new)
            return f"~ update cache {self.cache}: {self.field} {old} → {new}"
        if self.kind == "destroy":
            return f"- destroy cache {self.cache}"
        return f"= cache {self.cache} {'absent' if self.new == 'absent' else 'unchanged'}"

    def to_json(self) -> dict[str, object]:
        if self.kind == "create":
            settings = cast(Mapping[str, object], self.new)
            new: object = {k: _json_value(k, v) for k, v in settings.items()}
            old: object = None
        elif self.field is not None:
            old, new = _json_value(self.field, self.old), _json_value(self.field, self.new)
        else:
            old, new = self.old, self.new
        return {"kind": self.kind, "cache": self.cache, "field": self.field, "old": old, "new": new}


def _show(name: str, value: object) -> str:
    if name == "retention_period":
        return format_retention(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _json_value(name: str, value: object) -> object:
    if name == "retention_period":
        return format_retention(value)
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    tokens: tuple[TokenSpec, ...] = ()

    def count(self, kind: ChangeKind) -> int:
        """Caches concerned by ``kind`` (an update of three fields counts once)."""
        return len({c.cache for c in self.changes if c.kind == kind} - self._created(kind))

    def _created(self, kind: ChangeKind) -> set[str]:
        # a new cache's retention PATCH is part of creating it, not a separate update
        return {c.cache for c in self.changes if c.kind == "create"} if kind == "update" else set()

    @property
    def has_changes(self) -> bool:
        return any(c.kind != "unchanged" for c in self.changes)


def _create_settings(spec: CacheSpec) -> dict[str, object]:
    return {
        "public": DEFAULT_PUBLIC if spec.public is None else spec.public,
        "priority": DEFAULT_PRIORITY if spec.priority is None else spec.priority,
        "upstream_cache_key_names": (
            DEFAULT_UPSTREAM
            if spec.upstream_cache_key_names is None
            else spec.upstream_cache_key_names
        ),
        "store_dir": DEFAULT_STORE_DIR if spec.store_dir is None else spec.store_dir,
    }


def _create_body(settings: Mapping[str, object]) -> dict[str, object]:
    body: dict[str, object] = {"keypair": "Generate"}
    body.update({WIRE_FIELDS[k]: _wire(k, v) for k, v in settings.items()})
    return body


def _state_after_create(settings: Mapping[str, object]) -> CacheState:
    return CacheState(
        public=cast(bool, settings["public"]),
        priority=cast(int, settings["priority"]),
        upstream_cache_key_names=cast(tuple[str, ...], settings["upstream_cache_key_names"]),
        store_dir=cast(str, settings["store_dir"]),
        retention_period=GLOBAL,  # Attic has no retention at create time (§3.2)
    )


def diff_cache(spec: CacheSpec, state: CacheState) -> list[Change]:
    return [
        Change("update", spec.name, name, state.value(name), new)
        for name, new in spec.wanted().items()
        if state.value(name) != new
    ]


def plan_cache(spec: CacheSpec, state: CacheState | None) -> list[Change]:
    if spec.state == "absent":
        if state is None:
            return [Change("unchanged", spec.name, new="absent")]
        return [Change("destroy", spec.name)]
    if state is None:
        if spec.keypair == "keep":
            raise ProvisionError(
                f"cache '{spec.name}' does not exist and has keypair: keep, so provision will "
                "not create it with a new signing key (is server_url right? use keypair: "
                "generate to create it)"
            )
        settings = _create_settings(spec)
        create = Change("create", spec.name, new=settings)
        return [create, *diff_cache(spec, _state_after_create(settings))]
    return diff_cache(spec, state) or [Change("unchanged", spec.name)]


def build_plan(admin: AtticAdmin | None, config: ProvisionConfig) -> Plan:
    changes: list[Change] = []
    for spec in config.caches:
        assert admin is not None
        changes.extend(plan_cache(spec, admin.get(spec.name)))
    return Plan(tuple(changes), config.tokens)


def required_flags(plan: Plan) -> dict[str, set[str]]:
    """Flags the admin token needs per cache to apply ``plan``."""
    needs: dict[str, set[str]] = {}
    for c in plan.changes:
        flags = needs.setdefault(c.cache, set())
        if c.kind == "create":
            flags.add("cc")
        elif c.kind == "update":
            flags.add("cr")
            if c.field == "retention_period":
                flags.add("cq")
        elif c.kind == "destroy":
            flags.add("cd")
    return {cache: flags for cache, flags in needs.items() if flags}


def check_permissions(plan: Plan, admin: AdminToken, source: str) -> None:
    if admin.caches is None:
        return
    problems = []
    for cache, needed in required_flags(plan).items():
        key, granted = permission_for(admin.caches, cache)
        missing = needed - granted
        if not missing:
            continue
        what = ", ".join(
            sorted({c.kind for c in plan.changes if c.cache == cache and c.kind != "unchanged"})
        )
        if key is None:
            has = "no entry of the token matches it"
        elif key == cache:
            has = f"its entry grants {_flag_names(granted)}"
        else:
            has = f"the first matching pattern '{key}' grants {_flag_names(granted)}"
        extra = ""
        if "cq" in missing:
            extra = (
                " (changing retention_period needs configure_retention as well as configure_cache)"
            )
        problems.append(f"cache '{cache}' ({what}) needs {_flag_list(missing)}: {has}{extra}")
    if problems:
        raise ProvisionError(
            f"the admin token ({source}) cannot apply this plan; nothing was changed:\n  "
            + "\n  ".join(problems)
        )


# ---------------------------------------------------------------------------------------------
# Applying


def apply_plan(admin: AtticAdmin, config: ProvisionConfig, plan: Plan, out: Output) -> list[Change]:
    """Apply the plan cache by cache; returns what was actually done."""
    specs = {s.name: s for s in config.caches}
    done: list[Change] = []
    for name in dict.fromkeys(c.cache for c in plan.changes):
        changes = [c for c in plan.changes if c.cache == name]
        kinds = {c.kind for c in changes}
        if kinds == {"unchanged"}:
            for c in changes:
                out.info(c.describe())
            done.extend(changes)
            continue
        if "destroy" in kinds:
            gone = admin.destroy(name)
            out.info(f"- destroyed cache {name}" if gone else f"= cache {name} was already gone")
            done.append(
                Change("destroy", name) if gone else Change("unchanged", name, new="absent")
            )
            continue
        create = next((c for c in changes if c.kind == "create"), None)
        updates = [c for c in changes if c.kind == "update"]
        if create is not None:
            settings = cast(Mapping[str, object], create.new)
            if admin.create(name, _create_body(settings)):
                out.info(f"+ created cache {name}")
                done.append(create)
            else:  # created by someone else since the GET: converge what is there
                state = admin.get(name)
                if state is None:
                    raise ProvisionError(f"cache '{name}' exists and does not: try again")
                out.info(f"= cache {name} was created concurrently; converging it")
                updates = diff_cache(specs[name], state)
        if updates:
            admin.configure(
                name, {WIRE_FIELDS[c.field or ""]: _wire(c.field or "", c.new) for c in updates}
            )
            for c in updates:
                out.info(
                    f"~ updated cache {name}: {c.field} {_show(c.field or '', c.old)} → {_show(c.field or '', c.new)}"
                )
            done.extend(updates)
    return done


# ---------------------------------------------------------------------------------------------
# Tokens


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


def describe_token(spec: TokenSpec) -> str:
    grants = "; ".join(
        f"{p}: {_flag_names(set(flags))}" for p, flags in spec.caches_claim().items()
    )
    sub = f", sub {spec.sub}" if spec.sub != spec.name else ""
    return f"* mint token {spec.name} (valid {format_duration(spec.validity)}{sub}): {grants}"


def write_secret_file(path: Path, content: str) -> None:
    """Atomically replace ``path`` with ``content``, mode 0600 from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_token_dir(directory: Path, tokens: Sequence[MintedToken]) -> list[Path]:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = []
        for t in tokens:
            path = directory / f"{t.spec.name}.token"
            write_secret_file(path, t.token + "\n")
            paths.append(path)
    except OSError as e:
        raise ProvisionError(f"cannot write tokens to {directory}: {e.strerror or e}") from None
    return paths


def netrc_line(host: str, token: MintedToken) -> str:
    return f"machine {host} login {token.spec.name} password {token.token}"


def update_netrc(path: Path, host: str, tokens: Sequence[MintedToken]) -> None:
    """Replace the ``machine HOST login NAME`` lines of these tokens, keep every other line."""
    try:
        existing = path.read_text().splitlines() if path.exists() else []
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}") from None
    names = {t.spec.name for t in tokens}

    def ours(line: str) -> bool:
        words = line.split()
        return (
            len(words) >= 4
            and words[0] == "machine"
            and words[1] == host
            and words[2] == "login"
            and words[3] in names
        )

    lines = [line for line in existing if not ours(line)]
    lines.extend(netrc_line(host, t) for t in tokens)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret_file(path, "\n".join(lines) + "\n")
    except OSError as e:
        raise ProvisionError(f"cannot write {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# Output (redacted) and the command


class Output:
    """Human output goes to stdout (stderr with ``--json``); every line is scrubbed of secrets."""

    def __init__(self, stdout: TextIO, stderr: TextIO, *, json_mode: bool = False) -> None:
        self.stdout, self.stderr, self.json_mode = stdout, stderr, json_mode
        self._redactor = Redactor(mask="[REDACTED]")

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret) >= 8:
            self._redactor.add(secret)

    def redact(self, text: str) -> str:
        return self._redactor.redact(text)  # also anything shaped like a token

    def info(self, text: str) -> None:
        print(self.redact(text), file=self.stderr if self.json_mode else self.stdout)

    def warn(self, text: str) -> None:
        print(self.redact(f"warning: {text}"), file=self.stderr)

    def error(self, text: str) -> None:
        print(self.redact(text), file=self.stderr)

    def data(self, obj: object) -> None:
        """The --json document: the one place a minted token may appear."""
        print(json.dumps(obj, indent=2), file=self.stdout)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hookd provision",
        description=(
            "Create and configure Attic caches from a YAML file, and mint Attic tokens with the "
            "server's signing secret. Exit status: 0 ok, 1 failure, 2 usage or config error."
        ),
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="the YAML file")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (reads the server, changes nothing, writes no file)",
    )
    dest = p.add_mutually_exclusive_group()
    dest.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="write each token to DIR/NAME.token (0600)"
    )
    dest.add_argument(
        "--netrc",
        type=Path,
        metavar="FILE",
        help="write 'machine HOST login NAME password TOKEN' lines to FILE (0600)",
    )
    dest.add_argument(
        "--json",
        action="store_true",
        help="print the plan and the tokens as JSON on stdout (the only output with tokens)",
    )
    p.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help=f"the server's signing secret (default: ${ENV_RS256} or ${ENV_HS256})",
    )
    p.add_argument("--no-tokens", action="store_true", help="converge caches only; mint no token")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="per request (default 30)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``hookd provision ARGS…`` (argv excludes the word "provision")."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out = Output(sys.stdout, sys.stderr, json_mode=args.json)
    try:
        return run(args, out, os.environ)
    except ConfigError as e:
        out.error(str(e))
        return EXIT_USAGE
    except HookdError as e:
        out.error(str(e))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        out.error("error: interrupted")
        return 130


def _destination(args: argparse.Namespace) -> str | None:
    if args.output_dir is not None:
        return "output-dir"
    if args.netrc is not None:
        return "netrc"
    return "json" if args.json else None


def _preflight_destination(args: argparse.Namespace) -> None:
    """Fail before any change when the tokens could not be written afterwards."""
    if args.output_dir is not None:
        target: Path = args.output_dir
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--output-dir {target}: not a directory")
    else:
        target = args.netrc
        if target.is_dir():
            raise ConfigError(f"--netrc {target}: is a directory")
        target = target.parent  # the file is replaced through a temporary file next to it
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write tokens under {existing}: permission denied")


def run(args: argparse.Namespace, out: Output, env: Mapping[str, str]) -> int:
    config = load_config(args.config, env)
    out.add_secret(config.admin_token)
    for note in config.warnings:
        out.warn(note)

    tokens = () if args.no_tokens else config.tokens
    key: SigningKey | None = None
    if tokens:
        dest = _destination(args)
        if dest is None and not args.dry_run:
            raise ConfigError(
                f"{config.source} declares {len(tokens)} token(s): say where they go with "
                "--output-dir DIR, --netrc FILE or --json (or pass --no-tokens)"
            )
        key = load_signing_key(args.secret_file, env)
        out.add_secret(key.text)
        if isinstance(key.secret, bytes) and len(key.secret) < 32:
            out.warn(
                f"the HS256 signing secret ({key.source}) is only {len(key.secret)} bytes "
                "(32 or more recommended)"
            )
        if dest in ("output-dir", "netrc") and not args.dry_run:
            _preflight_destination(args)
        if dest == "netrc" and len(tokens) > 1:
            out.warn(
                f"{len(tokens)} tokens go to one netrc for {config.host}: Nix uses the first "
                "entry for a host"
            )

    admin_info = AdminToken(None)
    if config.caches:
        if not config.admin_token:
            raise ConfigError(
                f"{config.source}: caches are declared but there is no admin token: set "
                f"admin_token_file or {ENV_ADMIN_TOKEN}"
            )
        admin_info = inspect_admin_token(config.admin_token, config.admin_token_source, time.time())
        if admin_info.caches is None:
            out.warn(
                "the admin token is not a readable JWT, so its permissions cannot be checked "
                "before changes are made"
            )
    if key is not None and config.admin_token:
        check_signing_key(config.admin_token, key)

    plan = Plan((), tokens)
    admin = (
        AtticAdmin(config.server_url, config.admin_token, timeout=args.timeout)
        if config.caches
        else None
    )
    try:
        plan = Plan(build_plan(admin, config).changes, tokens)
        check_permissions(plan, admin_info, config.admin_token_source)
        if args.dry_run:
            _print_plan(plan, out)
            if args.json:
                out.data(_json_doc(config, plan, plan.changes, None))
            return EXIT_OK
        done = apply_plan(admin, config, plan, out) if admin is not None else []
    finally:
        if admin is not None:
            admin.close()

    minted: list[MintedToken] = []
    if tokens:
        assert key is not None
        now = int(time.time())
        minted = [mint(spec, key, now, config) for spec in tokens]
        for t in minted:
            out.add_secret(t.token)
        _write_tokens(args, config, minted, out)
    _print_summary(done, minted, out)
    if args.json:
        out.data(_json_doc(config, plan, tuple(done), minted))
    return EXIT_OK


def _write_tokens(
    args: argparse.Namespace, config: ProvisionConfig, minted: list[MintedToken], out: Output
) -> None:
    if args.output_dir is not None:
        for t, path in zip(minted, write_token_dir(args.output_dir, minted), strict=True):
            out.info(f"* wrote token {t.spec.name} to {path} (expires {_iso(t.expires_at)})")
    elif args.netrc is not None:
        update_netrc(args.netrc, config.host, minted)
        for t in minted:
            out.info(
                f"* wrote token {t.spec.name} to {args.netrc} as machine {config.host} "
                f"login {t.spec.name} (expires {_iso(t.expires_at)})"
            )
    else:
        for t in minted:
            out.info(f"* minted token {t.spec.name} (expires {_iso(t.expires_at)}), on stdout")


def _print_plan(plan: Plan, out: Output) -> None:
    for c in plan.changes:
        out.info(c.describe())
    for spec in plan.tokens:
        out.info(describe_token(spec))
    out.info(
        f"Plan: {plan.count('create')} to create, {plan.count('update')} to update, "
        f"{plan.count('destroy')} to destroy, {plan.count('unchanged')} unchanged; "
        f"{len(plan.tokens)} token(s) to mint. Dry run: nothing was changed."
    )


def _print_summary(done: list[Change], minted: list[MintedToken], out: Output) -> None:
    result = Plan(tuple(done))
    changed = sum(result.count(k) for k in ("create", "update", "destroy"))
    out.info(
        f"{'No changes' if not changed else 'Applied'}: {result.count('create')} created, "
        f"{result.count('update')} updated, {result.count('destroy')} destroyed, "
        f"{result.count('unchanged')} unchanged; {len(minted)} token(s) minted."
    )


def _json_doc(
    config: ProvisionConfig,
    plan: Plan,
    changes: Sequence[Change],
    minted: Sequence[MintedToken] | None,
) -> dict[str, object]:
    doc: dict[str, object] = {
        "server_url": config.server_url,
        "dry_run": minted is None,
        "changes": [c.to_json() for c in changes],
    }
    if minted is None:
        doc["tokens"] = {
            s.name: {
                "sub": s.sub,
                "validity": format_duration(s.validity),
                "caches": s.caches_claim(),
            }
            for s in plan.tokens
        }
    else:
        doc["tokens"] = {t.spec.name: {**t.summary(), "token": t.token} for t in minted}
    return doc


if __name__ == "__main__":  # python -m hookd.provision ARGS…
    sys.exit(main())
