"""The Attic client and push target against answers outside the contract (issue 9), over real
HTTP to the Attic-compatible test server. No Nix is needed: the paths pushed here are ones the
server already holds or reports, so nothing is uploaded from the local store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import structlog

from hookd.attic.blocking import BlockingAtticClient
from hookd.attic.client import AtticClient
from hookd.attic.redact import FRAGMENT, Redactor
from hookd.attic.routes import CreateCache, retention_wire
from hookd.config import ServerConfig, UploadConfig
from hookd.errors import (
    AuthError,
    BadAnswerError,
    DeadlineError,
    ParkedError,
    PushError,
    RedirectError,
    TransientError,
)
from hookd.models import PathInfo, nix32_encode
from hookd.nix import Nix
from hookd.targets.attic import AtticTarget
from hookd.tokens import TokenStore
from tests.attic_server import AtticTestServer
from tests.conftest import write_token

T = TypeVar("T")

UPLOAD = UploadConfig(
    concurrency=2, min_backoff=0.01, max_backoff=0.05, retry_attempts=1, request_timeout=30.0
)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition of the server thread until it holds (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def fake_path(name: str) -> PathInfo:
    digest = hashlib.sha256(name.encode()).digest()
    return PathInfo(
        path=f"/nix/store/{nix32_encode(digest[:20])}-{name}",
        nar_hash=digest,
        nar_size=100,
    )


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False, upstream=["cache.nixos.org-1"])
        yield server
        assert server.errors == []


@pytest.fixture
def token(srv: AtticTestServer) -> str:
    return srv.make_token({"team": {"r": 1, "w": 1}})


def make_target(
    srv: AtticTestServer, tmp_path: Path, token: str, upload: UploadConfig = UPLOAD
) -> AtticTarget:
    tf = write_token(tmp_path / "token", token)
    server = ServerConfig("prod", srv.url, tf)
    return AtticTarget(
        server, "team", nix=Nix(), upload=upload, tokens=TokenStore({"prod": server}),
        store_dir="/nix/store",
    )  # fmt: skip


def run(target: AtticTarget, fn: Callable[[AtticTarget], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await fn(target)
        finally:
            await target.close()

    return asyncio.run(main())


def push_error(target: AtticTarget, paths: list[PathInfo]) -> PushError:
    async def go(t: AtticTarget) -> PushError:
        with pytest.raises(PushError) as e:
            await t.push(paths)
        return e.value

    return run(target, go)


def json_answer(obj: object) -> tuple[int, dict[str, str], bytes]:
    return (200, {"Content-Type": "application/json"}, json.dumps(obj).encode())


# -- bug 2: an answer outside the contract is classified and drops cached server state --------


def test_malformed_cache_config_is_classified_then_refetched(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    p = fake_path("present")
    srv.add_object("team", p.path, b"nar")
    srv.faults.status_script = [json_answer({"upstream_cache_key_names": 5})]
    target = make_target(srv, tmp_path, token)

    async def twice(t: AtticTarget) -> tuple[PushError, list[str]]:
        with pytest.raises(PushError) as e:
            await t.push([p])
        report = await t.push([p])  # the same target object: nothing poisoned
        return e.value, report.present

    err, present = run(target, twice)
    assert isinstance(err, BadAnswerError) and isinstance(err, TransientError)
    assert "upstream_cache_key_names" in str(err) and "an integer" in str(err)
    assert present == [p.path]
    assert srv.count(method="GET", path_prefix="/_api/v1/cache-config/team") == 2


def test_malformed_missing_paths_drops_the_cached_cache_config(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    p = fake_path("present")
    srv.add_object("team", p.path, b"nar")
    target = make_target(srv, tmp_path, token)

    async def three(t: AtticTarget) -> PushError:
        await t.push([p])  # caches cache-config
        srv.faults.status_script = [json_answer({"missing_paths": "all of them"})]
        with pytest.raises(PushError) as e:
            await t.push([p])
        await t.push([p])
        return e.value

    err = run(target, three)
    assert isinstance(err, BadAnswerError) and "`missing_paths` must be an array" in str(err)
    # Fetched for the first push and again after the bad answer, not for the second push.
    assert srv.count(method="GET", path_prefix="/_api/v1/cache-config/team") == 2


# -- bug 4: server text is redacted before it is shortened -----------------------------------


def test_server_text_echoing_the_token_is_redacted_before_truncation(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    header_payload, signature = token.rsplit(".", 1)
    echo = json_answer({"echo": signature})  # 200 without missing_paths, the signature echoed
    error = (500, {"Content-Type": "application/json"}, json.dumps(
        {"code": 500, "error": "InternalServerError", "message": "x" * 150 + token}
    ).encode())  # fmt: skip
    p = fake_path("p")
    srv.add_object("team", p.path, b"nar")
    shown: list[str] = []
    target = make_target(srv, tmp_path, token)
    with structlog.testing.capture_logs() as logs:

        async def scripted(t: AtticTarget) -> None:
            await t.push([p])  # cache-config cached: the scripts below hit get-missing-paths
            for script in ([echo], [json_answer({}), error]):
                srv.faults.status_script = script
                with pytest.raises(PushError) as e:
                    await t.push([p])
                shown.extend([str(e.value), repr(e.value)])

        run(target, scripted)
    processed = [target.tokens.processor(None, "", dict(e)) for e in logs]
    text = "\n".join(shown) + repr(processed)
    assert "InternalServerError" in shown[2] and "xxxx" in shown[2]
    fragments = {token[i : i + FRAGMENT] for i in range(len(token) - FRAGMENT + 1)}
    assert not [f for f in fragments if f in text]
    assert header_payload[:FRAGMENT] not in text


def test_redactor_removes_fragments_then_shortens() -> None:
    secret = "s3cr3t-" + "A" * 10 + "b" * 40
    r = Redactor([secret])
    assert r.redact(f"x {secret[5:30]} y") == "x *** y"
    assert r.redact("short " + secret[: FRAGMENT - 1]) == "short " + secret[: FRAGMENT - 1]
    cleaned = r.clean("z" * 190 + secret)
    assert secret[:FRAGMENT] not in cleaned and cleaned.startswith("z" * 190 + "***")


# -- total deadline, bounded answers, redirects ----------------------------------------------


def test_a_trickling_server_hits_the_total_deadline(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    body = json.dumps({"is_public": False, "store_dir": "/nix/store"}).encode()
    # each read (0.1 s) is far shorter than request_timeout (1.5 s), with room for a loaded
    # machine's scheduling: only the total deadline (3 x 1.5 s) can end it
    # A valid answer, padded: without a total deadline it would arrive, after ~40 s.
    srv.faults.trickle_delay = 0.1
    srv.faults.status_script = [(200, {"Content-Type": "application/json"}, body + b" " * 400)]
    upload = UploadConfig(min_backoff=0.01, max_backoff=0.05, retry_attempts=1, request_timeout=1.5)
    err = push_error(make_target(srv, tmp_path, token, upload), [fake_path("p")])
    assert isinstance(err, DeadlineError) and isinstance(err, TransientError)
    assert "total deadline" in str(err)


def test_a_huge_missing_paths_answer_is_not_read(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    size = 300 * 1024 * 1024
    client = AtticClient(
        srv.url, name="prod", token=lambda: token, redactor=Redactor([token]), request_timeout=30
    )

    async def ask() -> PushError:
        try:
            srv.faults.huge_answer = size
            with pytest.raises(PushError) as e:
                await client.missing_paths("team", [fake_path("p").hash_part])
            return e.value
        finally:
            await client.aclose()

    err = asyncio.run(ask())
    assert isinstance(err, BadAnswerError) and "larger than" in str(err)
    wait_for(lambda: srv.faults.huge_done)
    assert srv.faults.huge_sent < 64 * 1024 * 1024  # the client hung up long before 300 MB


def test_same_origin_https_redirect_is_a_configuration_error_with_the_fix(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    https = f"https://127.0.0.1:{srv.port}/"
    srv.faults.status_script = [(301, {"Location": https + "_api/v1/cache-config/team"}, b"")]
    err = push_error(make_target(srv, tmp_path, token), [fake_path("p")])
    assert isinstance(err, RedirectError) and isinstance(err, ParkedError) and err.status == 301
    assert "http to https" in str(err) and f"servers.prod.endpoint to {https}" in str(err)


def test_redirect_elsewhere_names_status_and_host(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    srv.faults.status_script = [(302, {"Location": "https://login.example.net/sso"}, b"")]
    err = push_error(make_target(srv, tmp_path, token), [fake_path("p")])
    assert isinstance(err, RedirectError) and err.status == 302
    assert "302" in str(err) and "login.example.net" in str(err)
    assert "servers.prod.endpoint" in str(err)


def test_redirect_to_an_unparseable_location_is_a_redirect_error(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    """httpx builds a redirect's next request even when not following it; a Location it cannot
    parse (found by tests/test_attic_fuzz.py) must still be classified, not escape."""
    srv.faults.status_script = [(302, {"Location": "A:0"}, b"")]
    err = push_error(make_target(srv, tmp_path, token), [fake_path("p")])
    assert isinstance(err, RedirectError) and isinstance(err, ParkedError)
    assert "invalid URL" in str(err) and "servers.prod.endpoint" in str(err)


# -- the admin calls provision uses, and the binary-cache routes -----------------------------


def test_cache_lifecycle_through_the_blocking_client(srv: AtticTestServer) -> None:
    admin = srv.make_token({"adm-*": {"r": 1, "cc": 1, "cr": 1, "cq": 1, "cd": 1}})
    with BlockingAtticClient(srv.url, admin) as c:
        assert c.find_cache("adm-one") is None
        assert c.create_cache("adm-one", CreateCache(is_public=True, priority=30)) is True
        assert c.create_cache("adm-one", CreateCache(is_public=True)) is False  # exists
        got = c.cache_config("adm-one")
        assert (got.is_public, got.priority, got.store_dir) == (True, 30, "/nix/store")
        assert got.upstream_cache_key_names == ("cache.nixos.org-1",)
        assert got.retention_period == "Global" and got.public_key
        c.configure_cache("adm-one", {"priority": 7, "retention_period": retention_wire(3600)})
        got = c.cache_config("adm-one")
        assert (got.priority, got.retention_period) == (7, 3600)
        info = c.nix_cache_info("adm-one")
        assert (info.store_dir, info.priority, info.want_mass_query) == ("/nix/store", 7, True)
        assert c.narinfo("adm-one", fake_path("p").hash_part) is None
        assert c.destroy_cache("adm-one") is True
        assert c.destroy_cache("adm-one") is False
        with pytest.raises(AuthError) as e:  # no grant on this name: anonymous, 401
            c.create_cache("other", CreateCache(is_public=False))
        assert e.value.status == 401


def test_narinfo_of_a_held_path(srv: AtticTestServer, token: str) -> None:
    p = fake_path("held")
    srv.add_object("team", p.path, b"nar bytes")
    with BlockingAtticClient(srv.url, token) as c:
        got = c.narinfo("team", p.hash_part)
    assert got is not None and got.store_path == p.path and got.nar_size == len(b"nar bytes")
    assert got.url == f"nar/{p.hash_part}.nar" and got.nar_hash.startswith("sha256:")


def test_a_huge_error_message_is_cut_after_redaction(
    srv: AtticTestServer, tmp_path: Path, token: str
) -> None:
    message = "m" * (4 * 1024 * 1024)
    body = json.dumps({"code": 500, "error": "InternalServerError", "message": message})
    srv.faults.status_script = [(500, {"Content-Type": "application/json"}, body.encode())]
    err = push_error(make_target(srv, tmp_path, token), [fake_path("p")])
    assert isinstance(err, TransientError) and err.status == 500
    assert "InternalServerError" in str(err) and len(str(err)) < 1000
