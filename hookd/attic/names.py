"""Names Attic accepts (docs/attic-api.md §6)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# A cache (or server) name: used with fullmatch. Attic's CacheName. Written so that it is a POSIX
# ERE as well as a Python pattern: the Nix modules check names with builtins.match and this
# pattern (exported through hookd/config.py's schema).
CACHE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,49}")
# A cache-name pattern in a token's `caches` claim: a name that may contain `*`.
CACHE_PATTERN_RE = re.compile(r"[A-Za-z0-9*][A-Za-z0-9\-_+*]{0,49}")
# The 32-character hash part of a store path (Nix's base32 alphabet: no e, o, u, t).
STORE_PATH_HASH_RE = re.compile(r"[0123456789abcdfghijklmnpqrsvwxyz]{32}")


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL, lowercased, with the default port made explicit: two
    URLs with the same origin may share a token."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"
