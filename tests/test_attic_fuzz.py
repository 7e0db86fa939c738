"""Fuzzing the Attic client's handling of server answers (issue 9): arbitrary status, headers
and bodies for cache-config, get-missing-paths and upload-path.

What is under test is how the real ``AtticTarget`` and ``AtticClient`` code treat arbitrary
bytes from a server, so the answers come from an ``httpx.MockTransport`` (thousands of cases
in seconds). Everything else is real: the httpx client stack, the response decoding, the
target's retry loop and upload scheduling. The end-to-end tests against the real HTTP test
server (tests/test_attic_client.py, tests/test_attic_target.py) cover the wire itself.

Properties, for every answer:
- ``push`` returns a report or raises a classified ``PushError``, nothing else;
- a path is reported uploaded only when upload-path answered 2xx with a valid ``kind``, and
  present only when get-missing-paths answered a valid list that did not name it;
- the target is not wedged: the next push, with correct answers, succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookd.config import ServerConfig, UploadConfig
from hookd.errors import PushError
from hookd.models import PathInfo, PushReport, nix32_encode
from hookd.nix import Nix
from hookd.targets.attic import AtticTarget
from hookd.tokens import TokenStore

NAR = b"the NAR of a fuzzed path"
UPLOAD = UploadConfig(
    concurrency=2, min_backoff=0.0, max_backoff=0.001, retry_attempts=2, request_timeout=5.0
)
ENDPOINT = "http://attic.test:8080/"
FUZZ = settings(
    max_examples=700,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Answer = tuple[int, dict[str, str], bytes]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
statuses = st.sampled_from(
    [200, 201, 204, 206, 301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 408, 413, 415, 422,
     429, 500, 502, 503, 504]
) | st.integers(min_value=200, max_value=599)  # fmt: skip
header_values = st.sampled_from(
    ["0", "1", "-5", "1e400", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "gzip", "br", "deflate",
     "application/json", "text/html", "https://attic.test:8080/", "http://attic.test:8080/x",
     "//elsewhere.test/", "", "\u00e9"]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)  # fmt: skip
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "Location", "Content-Type", "Content-Encoding"]),
    header_values,
    max_size=3,
)


def shaped(fields: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[bytes]:
    """A JSON object with some of the route's real fields, each valid or arbitrary."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()}).map(
        lambda d: json.dumps(d).encode()
    )


def bodies(fields: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        shaped(fields),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        st.builds(lambda e, m: json.dumps({"code": 400, "error": e, "message": m}).encode(),
                  st.sampled_from(["NoSuchCache", "CacheAlreadyExists", "RequestError"]),
                  st.sampled_from(["Bad NAR Hash or Size", "x"])),
    )  # fmt: skip


def answers(fields: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[Answer]:
    return st.tuples(statuses, headers, bodies(fields))


class FakeNix(Nix):
    """Streams NAR for any path: the NAR bytes are not what is being fuzzed."""

    @contextlib.asynccontextmanager
    async def dump(
        self, path: str, *, nar_hash: bytes | None = None, nar_size: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield NAR

        yield chunks()


class Server:
    """Valid answers for every route, except the one answer being fuzzed (given once)."""

    def __init__(self, store_dir: str) -> None:
        self.store_dir = store_dir
        self.fuzz: dict[str, Answer] = {}
        self.missing: list[str] = []
        self.last: dict[str, Answer] = {}  # per route, the answer served last

    def serve(self, route: str, status: int, hdrs: dict[str, str], body: bytes) -> httpx.Response:
        self.last[route] = (status, hdrs, body)
        # Header values go out as latin-1 bytes, as a server may send them.
        raw = [(k.encode(), v.encode("latin-1", "replace")) for k, v in hdrs.items()]
        return httpx.Response(status, headers=raw, content=body)

    def handle(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/_api/v1/", 1)[-1].split("/", 1)[0]
        if route in self.fuzz:
            return self.serve(route, *self.fuzz.pop(route))
        if route == "cache-config":
            body: object = {"store_dir": self.store_dir, "upstream_cache_key_names": ["up-1"]}
        elif route == "get-missing-paths":
            asked = json.loads(request.content)["store_path_hashes"]
            body = {"missing_paths": [h for h in asked if h in self.missing]}
        else:
            body = {"kind": "Uploaded", "file_size": len(NAR), "frac_deduplicated": None}
        return self.serve(
            route, 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
        )


def make_paths(tmp: Path) -> tuple[PathInfo, PathInfo]:
    out = []
    for name in ("present", "missing"):
        h = nix32_encode(hashlib.sha256(name.encode()).digest()[:20])
        path = tmp / f"{h}-{name}"
        if not path.exists():
            path.write_bytes(b"x")
        out.append(PathInfo(str(path), hashlib.sha256(NAR).digest(), len(NAR)))
    return out[0], out[1]


def check(
    tmp_path: Path, route: str, answer: Answer, verify: Callable[[Answer, PushReport], None]
) -> None:
    present, missing = make_paths(tmp_path)
    server = Server(str(tmp_path))
    server.missing = [missing.hash_part]
    server.fuzz[route] = answer
    cfg = ServerConfig("fuzz", ENDPOINT)
    target = AtticTarget(
        cfg, "team", nix=FakeNix(), upload=UPLOAD, tokens=TokenStore({"fuzz": cfg}),
        store_dir=str(tmp_path), transport=httpx.MockTransport(server.handle),
    )  # fmt: skip

    async def main() -> PushReport:
        try:
            try:
                report = await target.push([present, missing])
            except PushError:
                pass  # classified: the pusher acts on it
            else:
                verify(server.last[route], report)
            server.fuzz.clear()
            return await target.push([present, missing])  # not wedged
        finally:
            await target.close()

    with structlog.testing.capture_logs():  # in memory: rendering 4,000 lines costs seconds
        after = asyncio.run(main())
    assert after.uploaded == [missing.path] and after.present == [present.path], after


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


@FUZZ
@given(answer=answers({
    "store_dir": st.just("/elsewhere"), "api_endpoint": st.sampled_from(
        ["http://attic.test:8080/", "http://attic.test:8080/api/", "http://evil.test/", "ftp://x"]),
    "upstream_cache_key_names": st.lists(st.text(max_size=5)),
    "is_public": st.booleans(), "priority": st.integers(), "retention_period": st.just("Global"),
}))  # fmt: skip
def test_cache_config_answers(tmp_path: Path, answer: Answer) -> None:
    def verify(answer: Answer, report: PushReport) -> None:
        assert 200 <= answer[0] < 300 and isinstance(_json(answer[2]), dict)
        assert all(p.endswith("-missing") for p in report.uploaded)

    check(tmp_path, "cache-config", answer, verify)


@FUZZ
@given(answer=answers({"missing_paths": st.lists(st.sampled_from(
    [nix32_encode(hashlib.sha256(b"present").digest()[:20]),
     nix32_encode(hashlib.sha256(b"missing").digest()[:20]), "0" * 32, "not a hash"]))}))  # fmt: skip
def test_get_missing_paths_answers(tmp_path: Path, answer: Answer) -> None:
    def verify(answer: Answer, report: PushReport) -> None:
        data = _json(answer[2])
        assert 200 <= answer[0] < 300 and isinstance(data, dict)
        said = data["missing_paths"]
        assert isinstance(said, list)
        # Present only when the server did not name it as missing.
        for p in report.present:
            assert p.rsplit("/", 1)[1].split("-", 1)[0] not in said
        assert len(report.present) + len(report.uploaded) + len(report.failed) == 2

    check(tmp_path, "get-missing-paths", answer, verify)


@FUZZ
@given(answer=answers({
    "kind": st.sampled_from(["Uploaded", "Deduplicated", "Failed"]),
    "file_size": st.integers(), "frac_deduplicated": st.floats(allow_nan=False),
}))  # fmt: skip
def test_upload_path_answers(tmp_path: Path, answer: Answer) -> None:
    def verify(answer: Answer, report: PushReport) -> None:
        if report.uploaded:
            data = _json(answer[2])
            assert 200 <= answer[0] < 300 and isinstance(data, dict)
            assert data.get("kind") in ("Uploaded", "Deduplicated")
        else:
            assert len(report.failed) == 1

    check(tmp_path, "upload-path", answer, verify)
