"""Attic's JWT claims: the namespace, decoding for diagnostics, and the permission lookup.

Attic reads its grants from ``claims[CLAIM_NAMESPACE]["caches"]``: a mapping from a cache name
or a ``*`` pattern to flags (``r``, ``w``, ``d``, ``cc``, ``cr``, ``cq``, ``cd``) that count
only as the integer 1. The lookup takes the exact key, else the FIRST matching pattern in the
claim's order; permissions are never merged (docs/attic-api.md §5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jwt

CLAIM_NAMESPACE = "https://jwt.attic.rs/v1"

Grants = Mapping[str, Mapping[str, object]]


def decode_claims(token: str) -> dict[str, object] | None:
    """The JWT's claims WITHOUT verifying anything (diagnostics only), or None if not a JWT."""
    try:
        claims = jwt.decode(
            token,
            options={
                "verify_signature": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        return None
    return {str(k): v for k, v in claims.items()} if isinstance(claims, dict) else None


def caches_of(claims: Mapping[str, object]) -> dict[str, Mapping[str, object]] | None:
    """The ``caches`` grants of a claim set (entries that are not objects are dropped), or
    None when the namespace or ``caches`` is missing."""
    ns = claims.get(CLAIM_NAMESPACE)
    caches = ns.get("caches") if isinstance(ns, dict) else None
    if not isinstance(caches, dict):
        return None
    return {str(k): v for k, v in caches.items() if isinstance(v, dict)}


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a cache-name pattern (``*`` = any run of characters) matches ``name``."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, name) is not None


def lookup(caches: Grants, cache: str) -> tuple[str, Mapping[str, object]] | None:
    """Attic's lookup: (the exact key, its flags), else the FIRST matching ``*`` pattern."""
    exact = caches.get(cache)
    if exact is not None:
        return cache, exact
    for pattern, flags in caches.items():
        if "*" in pattern and pattern_matches(pattern, cache):
            return pattern, flags
    return None


def granted(flags: Mapping[str, object]) -> frozenset[str]:
    """The flags Attic honours: exactly the integer 1 (``true`` does not count)."""
    return frozenset(f for f, v in flags.items() if type(v) is int and v == 1)


def cache_permission(
    claims: Mapping[str, object], cache: str
) -> tuple[str, Mapping[str, object]] | None:
    """``lookup`` on a whole claim set."""
    caches = caches_of(claims)
    return None if caches is None else lookup(caches, cache)
