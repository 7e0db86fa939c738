"""`hookd check`'s pull side: can a Nix client substitute from an Attic target?

For one (server, cache) it asks, with the pull credentials (the server's token, which the pull
modules also put in the clients' netrc):

1. ``{cache}/nix-cache-info``: the cache exists and these credentials may read it;
2. cache-config's ``public_key``: compared with the target's configured ``public_key``;
3. the narinfo of a path the queue knows was pushed there: it is served, and its ``Sig`` verifies
   with the key clients trust (else Nix refuses every path from this cache).

Each finding is a line; a problem says what to change.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hookd.attic.answers import NarInfo
from hookd.attic.client import AtticClient
from hookd.errors import AuthError, CacheGoneError, PushError
from hookd.models import nix32_encode, sha256_digest


@dataclass
class PullReport:
    """What a check found: ``problems`` make `hookd check` fail, ``notes`` do not."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fingerprint(info: NarInfo) -> bytes:
    """What a narinfo's ``Sig`` signs (Nix's ``fingerprintPath``): references as full paths."""
    store_dir = info.store_path.rsplit("/", 1)[0]
    refs = ",".join(f"{store_dir}/{r}" for r in info.references)
    digest = nix32_encode(sha256_digest(info.nar_hash))
    return f"1;{info.store_path};sha256:{digest};{info.nar_size};{refs}".encode()


def verifies(public_key: str, info: NarInfo) -> bool | None:
    """Whether a ``Sig`` of the narinfo by ``public_key``'s name verifies with it; None when no
    signature carries that key name."""
    name, _, b64 = public_key.partition(":")
    sigs = [v for k, v in info.fields if k == "Sig" and v.partition(":")[0] == name]
    if not sigs:
        return None
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError):
        return False
    data = fingerprint(info)
    for sig in sigs:
        try:
            key.verify(base64.b64decode(sig.partition(":")[2], validate=True), data)
            return True
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    return False


def _problem(where: str, what: str, e: PushError) -> str:
    """What a failed pull request means for the clients, and what to change."""
    if isinstance(e, AuthError):
        return (
            f"{where} refuses the pull credentials for {what} ({e}): a private cache needs a "
            "token with pull (r) on it in the clients' netrc (the pull modules build it from the "
            "server's token_file); a public one needs none"
        )
    if isinstance(e, CacheGoneError):
        return f"{where} does not exist: clients substituting from it get 404s"
    return f"{where}: {what} is not served: {e}"


async def check_pull(
    client: AtticClient,
    cache: str,
    *,
    configured_key: str | None,
    key_setting: str,
    pushed: str | None,
) -> PullReport:
    """Check the pull side of ``cache`` through ``client`` (carrying the pull credentials).
    ``key_setting`` names where ``configured_key`` comes from, for the messages; ``pushed`` is a
    path the queue recorded as pushed to this cache, if any."""
    report = PullReport()
    where = f"cache {cache} on server {client.name}"
    try:
        info = await client.nix_cache_info(cache)
    except PushError as e:
        report.problems.append(_problem(where, "nix-cache-info", e))
        return report
    report.notes.append(
        f"{where}: serves nix-cache-info (store {info.store_dir}, priority "
        f"{'?' if info.priority is None else info.priority})"
    )

    served_key: str | None = None
    try:
        config = await client.cache_config(cache)
        served_key = config.public_key
    except PushError as e:
        report.notes.append(f"{where}: cache-config not readable, key not compared: {e}")
    key = configured_key or served_key
    if configured_key and served_key and served_key != configured_key:
        report.problems.append(
            f"{where} signs with public key {served_key}, but {key_setting} is "
            f"{configured_key}: clients trusting that key refuse every path from this cache. "
            f"Set {key_setting} and the clients' trusted-public-keys to {served_key} "
            "(`hookd provision` prints each cache's key)"
        )
    elif key and not configured_key:
        report.notes.append(
            f"{where}: public key {key} (set {key_setting} to have it checked against what "
            "clients trust)"
        )
    elif key:
        report.notes.append(f"{where}: public key matches {key_setting}")

    if pushed is None:
        report.notes.append(f"{where}: nothing was pushed to it yet, so no narinfo to check")
        return report
    hash_part = pushed.rsplit("/", 1)[-1].split("-", 1)[0]
    try:
        narinfo = await client.narinfo(cache, hash_part)
    except PushError as e:
        report.problems.append(_problem(where, f"the narinfo of {pushed}", e))
        return report
    if narinfo is None:
        report.problems.append(
            f"{where} does not serve the narinfo of {pushed}, which hookd pushed there: the "
            "cache was recreated, or retention removed it (`hookd retry` pushes it again)"
        )
        return report
    if key is None:
        report.notes.append(f"{where}: serves the narinfo of {pushed} (no key to verify it)")
        return report
    ok = verifies(key, narinfo)
    if ok:
        report.notes.append(f"{where}: serves the narinfo of {pushed}, signed by {key}")
        return report
    names = sorted({v.partition(":")[0] for k, v in narinfo.fields if k == "Sig"})
    what = (
        f"is signed by {', '.join(names) or 'no key'}, not by {key.partition(':')[0]}"
        if ok is None
        else f"carries a signature by {key.partition(':')[0]} that does not verify with {key}"
    )
    report.problems.append(
        f"{where}: the narinfo of {pushed} {what}: clients trusting {key} refuse it. "
        f"Set {key_setting} and the clients' trusted-public-keys to the cache's key"
    )
    return report
