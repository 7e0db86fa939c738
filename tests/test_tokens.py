"""TokenStore: file checks, caching and rotation, watch(), redaction."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import jwt
import pytest
import structlog

from hookd.attic.claims import cache_permission, decode_claims
from hookd.config import ServerConfig
from hookd.errors import AuthError
from hookd.tokens import TokenFileError, TokenStore
from tests.conftest import write_token


def make_jwt(caches: dict[str, dict[str, int]] | None = None, *, exp: float | None = None) -> str:
    claims: dict[str, object] = {"sub": "test", "nbf": int(time.time()) - 10}
    if exp is not None:
        claims["exp"] = int(exp)
    if caches is not None:
        claims["https://jwt.attic.rs/v1"] = {"caches": caches}
    return jwt.encode(claims, b"some secret that is long enough!", algorithm="HS256")


def store_for(path: Path | None, token: str | None = None) -> TokenStore:
    return TokenStore({"prod": ServerConfig("prod", "http://x/", path, token)})


def test_reads_and_strips(tmp_path: Path) -> None:
    tok = make_jwt({"team": {"r": 1, "w": 1}})
    f = write_token(tmp_path / "token", f"  {tok}  ")
    assert store_for(f).get("prod") == tok


def test_inline_token_used_without_token_file() -> None:
    assert store_for(None, "inline-token").get("prod") == "inline-token"
    assert store_for(None).get("prod") is None


def test_unknown_server_is_auth_error() -> None:
    with pytest.raises(AuthError, match="no server named 'nope'"):
        store_for(None).get("nope")


def test_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "absent"
    with pytest.raises(TokenFileError, match=f"token file {f} does not exist"):
        store_for(f).get("prod")


def test_world_readable_refused(tmp_path: Path) -> None:
    f = write_token(tmp_path / "token", make_jwt({}), mode=0o644)
    with pytest.raises(TokenFileError) as e:
        store_for(f).get("prod")
    msg = str(e.value)
    assert "readable by every user (mode 0644)" in msg
    assert f"chmod 600 {f}" in msg
    assert 'mode = "0400"' in msg
    assert isinstance(e.value, AuthError)


def test_group_readable_warns(tmp_path: Path) -> None:
    tok = make_jwt({})
    f = write_token(tmp_path / "token", tok, mode=0o640)
    with structlog.testing.capture_logs() as logs:
        store = store_for(f)
        assert store.get("prod") == tok
        assert store.get("prod") == tok
    warnings = [e for e in logs if e["event"] == "token.group_readable"]
    assert len(warnings) == 1  # once per file version, not per request
    assert warnings[0]["mode"] == "0640"
    assert any("group-readable" in p for p in store.check("prod"))


def test_store_path_refused(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    f = write_token(store_dir / "abc-token", make_jwt({}))
    store = TokenStore({"prod": ServerConfig("prod", "http://x/", f)}, store_dir=str(store_dir))
    with pytest.raises(TokenFileError, match="inside the Nix store"):
        store.get("prod")
    # A symlink from outside that resolves into the store is refused as well.
    link = tmp_path / "link"
    link.symlink_to(f)
    store = TokenStore({"prod": ServerConfig("prod", "http://x/", link)}, store_dir=str(store_dir))
    with pytest.raises(TokenFileError, match="inside the Nix store"):
        store.get("prod")


def test_a_symlink_repointed_into_the_store_is_refused_at_the_next_get(tmp_path: Path) -> None:
    # The store check is remembered per file version (issue 14: no realpath per request); a
    # symlink swapped to a file in the store is a new version, so it is checked again.
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    outside = write_token(tmp_path / "outside-token", make_jwt({"sub": "a"}))
    inside = write_token(store_dir / "abc-token", make_jwt({"sub": "b"}))
    link = tmp_path / "link"
    link.symlink_to(outside)
    store = TokenStore({"prod": ServerConfig("prod", "http://x/", link)}, store_dir=str(store_dir))
    assert store.get("prod") == outside.read_text().strip()
    assert store.get("prod") == outside.read_text().strip()
    tmp = tmp_path / "link.new"
    tmp.symlink_to(inside)
    os.replace(tmp, link)
    with pytest.raises(TokenFileError, match="inside the Nix store"):
        store.get("prod")


def test_real_nix_store_path_refused() -> None:
    f = Path("/nix/store/00000000000000000000000000000000-token")
    with pytest.raises(TokenFileError, match="inside the Nix store"):
        store_for(f).get("prod")


def test_empty_and_multiword(tmp_path: Path) -> None:
    f = write_token(tmp_path / "token", "   ")
    with pytest.raises(TokenFileError, match="is empty"):
        store_for(f).get("prod")
    f = write_token(tmp_path / "token", "a b")
    with pytest.raises(TokenFileError, match="more than one word"):
        store_for(f).get("prod")


def test_directory_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(TokenFileError, match="not a regular file"):
        store_for(d).get("prod")


def test_cached_then_reread_on_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = make_jwt({"a": {"r": 1}}), make_jwt({"b": {"r": 1}})
    f = write_token(tmp_path / "token", one)
    store = store_for(f)
    reads = []
    real_read = TokenStore._read

    def counting(self: TokenStore, path: Path) -> str:
        reads.append(path)
        return real_read(self, path)

    monkeypatch.setattr(TokenStore, "_read", counting)
    assert store.get("prod") == one
    assert store.get("prod") == one
    assert len(reads) == 1  # cached while the file is unchanged
    write_token(f, two)  # new inode
    assert store.get("prod") == two
    assert len(reads) == 2
    store.invalidate("prod")
    assert store.get("prod") == two
    assert len(reads) == 3


def test_symlink_swap_rotation(tmp_path: Path) -> None:
    """Kubernetes secrets: token -> ..data/token, ..data -> ..v1 swapped to ..v2."""
    one, two = make_jwt({"a": {"r": 1}}), make_jwt({"b": {"r": 1}})
    for version, tok in (("..v1", one), ("..v2", two)):
        (tmp_path / version).mkdir()
        write_token(tmp_path / version / "token", tok)
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "token").symlink_to("..data/token")
    store = store_for(tmp_path / "token")
    assert store.get("prod") == one
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert store.get("prod") == two


def test_check_reports_problems(tmp_path: Path) -> None:
    assert "no token configured" in store_for(None).check("prod")[0]
    expired = write_token(tmp_path / "expired", make_jwt({"x": {"w": 1}}, exp=time.time() - 3600))
    (problem,) = store_for(expired).check("prod")
    assert "expired at" in problem and "ago" in problem
    soon = write_token(tmp_path / "soon", make_jwt({"x": {"w": 1}}, exp=time.time() + 3600))
    assert "expires at" in store_for(soon).check("prod")[0]
    noclaim = write_token(tmp_path / "noclaim", make_jwt(None, exp=time.time() + 86400 * 30))
    assert "https://jwt.attic.rs/v1" in store_for(noclaim).check("prod")[0]
    good = write_token(tmp_path / "good", make_jwt({"x": {"w": 1}}, exp=time.time() + 86400 * 30))
    assert store_for(good).check("prod") == []
    notjwt = write_token(tmp_path / "notjwt", "hunter2")
    assert "does not hold a JWT" in store_for(notjwt).check("prod")[0]
    missing = store_for(tmp_path / "missing").check("prod")
    assert "does not exist" in missing[0]
    assert "unknown" not in missing[0]
    assert "no server named" in store_for(None).check("other")[0]


def test_redact_and_repr(tmp_path: Path) -> None:
    tok = make_jwt({"team": {"r": 1, "w": 1}})
    f = write_token(tmp_path / "token", tok)
    store = TokenStore(
        {
            "prod": ServerConfig("prod", "http://x/", f),
            "other": ServerConfig("other", "http://y/", None, "plain-inline-secret"),
        }
    )
    assert store.get("prod") == tok
    text = f"Authorization: Bearer {tok} and plain-inline-secret"
    redacted = store.redact(text)
    assert tok not in redacted and "plain-inline-secret" not in redacted
    assert redacted == "Authorization: Bearer *** and ***"
    # Anything JWT-shaped is scrubbed even if this store never saw it.
    stranger = make_jwt({"z": {"r": 1}})
    assert store.redact(f"x {stranger} y") == "x *** y"
    # Old tokens stay redacted after a rotation.
    write_token(f, make_jwt({"new": {"r": 1}}))
    store.get("prod")
    assert tok not in store.redact(tok)
    for shown in (repr(store), str(store), repr(store.servers), repr(store._cache)):
        assert tok not in shown and "plain-inline-secret" not in shown
    event = store.processor(None, "info", {"event": "x", "err": ValueError(tok), "t": tok})
    assert tok not in str(event)


def test_decode_and_permission_lookup() -> None:
    tok = make_jwt({"*": {"r": 1}, "team-*": {"w": 1}, "exact": {"r": 1, "w": 1}})
    claims = decode_claims(tok)
    assert claims is not None
    assert cache_permission(claims, "exact") == ("exact", {"r": 1, "w": 1})
    # First matching pattern wins, no merging (attic issue #133).
    assert cache_permission(claims, "team-x") == ("*", {"r": 1})
    assert decode_claims("not a jwt") is None
    assert cache_permission({}, "x") is None


def test_watch_sees_atomic_rename_and_symlink_swap(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    fa = write_token(a_dir / "token", make_jwt({"a": {"r": 1}}))
    for version in ("..v1", "..v2"):
        (b_dir / version).mkdir()
        write_token(b_dir / version / "token", make_jwt({version: {"r": 1}}))
    (b_dir / "..data").symlink_to("..v1")
    (b_dir / "token").symlink_to("..data/token")
    (a_dir / "unrelated").write_text("x")
    store = TokenStore(
        {
            "a": ServerConfig("a", "http://a/", fa),
            "b": ServerConfig("b", "http://b/", b_dir / "token"),
            "c": ServerConfig("c", "http://c/", None, "inline"),
        }
    )
    first_a = store.get("a")
    seen: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()
        changed = asyncio.Event()

        def on_change(name: str) -> None:
            seen.append(name)
            changed.set()

        # poll_interval: an hour, so only file events can explain a callback
        watch = store.watch(on_change, stop_event=stop, debounce_ms=50, poll_interval=3600)
        task = asyncio.create_task(watch)
        loop = asyncio.get_running_loop()

        async def expect(name: str, writes: int = 1) -> None:
            await asyncio.wait_for(changed.wait(), 60)
            await asyncio.sleep(0.2)  # a second callback for the same change would come now
            # one callback per change (debounced), for that server only
            assert seen and set(seen) == {name} and len(seen) <= writes, (seen, writes)
            seen.clear()
            changed.clear()

        # The watcher arms asynchronously (its inotify thread starts when it gets a CPU): a
        # change made before that is seen only by the (here hour-long) poll. Rather than
        # sleeping and hoping, rotate token a until a callback proves the watcher armed.
        deadline = loop.time() + 60
        writes = 0
        while not changed.is_set():
            assert loop.time() < deadline, "the token watcher never reported a change"
            writes += 1
            write_token(fa, make_jwt({f"a{writes}": {"r": 1}}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1)
        await expect("a", writes)
        (a_dir / "unrelated").write_text("y")  # events without a token change: no callback
        await asyncio.sleep(0.5)
        assert seen == []
        write_token(fa, make_jwt({"a-again": {"r": 1}}))
        await expect("a")
        (b_dir / "..data_tmp").symlink_to("..v2")
        os.replace(b_dir / "..data_tmp", b_dir / "..data")
        await expect("b")
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert store.get("a") != first_a
