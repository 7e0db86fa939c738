"""Provision's side of Attic's token claim: YAML permission names, and building a ``caches``
claim whose first-match lookup gives every cache the union of the grants that match it.

The claim namespace, cache-name rules and Attic's own lookup live in ``hookd.attic.claims`` and
``hookd.attic.names`` (Attic takes the exact key first, then the FIRST matching pattern in JSON
order, with no merging: docs/attic-api.md §5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hookd.attic.claims import granted, lookup, pattern_matches

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


def ordered_grants(
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
    order, _, effective = ordered_grants(grants)
    return {p: {f: 1 for f in FLAG_ORDER if f in effective[p]} for p in order}


def flag_names(flags: set[str] | frozenset[str]) -> str:
    return " ".join(FLAG_NAMES[f] for f in FLAG_ORDER if f in flags) or "nothing"


def permission_for(
    claim: Mapping[str, Mapping[str, object]], name: str
) -> tuple[str | None, set[str]]:
    """What Attic grants ``name`` under a ``caches`` claim: (matching key, flags)."""
    found = lookup(claim, name)
    if found is None:
        return None, set()
    return found[0], set(granted(found[1]))


def flag_list(flags: set[str] | frozenset[str]) -> str:
    return ", ".join(f"{FLAG_NAMES[f]} ({f})" for f in FLAG_ORDER if f in flags)
