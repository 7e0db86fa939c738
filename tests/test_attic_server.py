"""Tests for the Attic test server (tests/attic_server.py): real HTTP with httpx.

Expected texts follow Attic's source as docs/attic-api.md describes it (§ numbers refer to that
file), not the server module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from hookd.models import nix32_decode, nix32_encode, sha256_digest
from tests.attic_server import NAMESPACE, AtticTestServer, Keypair, fingerprint

REPO = Path(__file__).resolve().parent.parent
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
# the tests sign some tokens with short HMAC keys on purpose
pytestmark = pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")

ALL_FLAGS = {"r": 1, "w": 1, "d": 1, "cc": 1, "cr": 1, "cq": 1, "cd": 1}

MESSAGES = {
    "NotFound": "The URL you requested was not found.",
    "Unauthorized": "Unauthorized.",
    "AccessError": "Access error: User does not have permission to complete this action.",
    "NoSuchCache": "The requested cache does not exist.",
    "CacheAlreadyExists": "The cache already exists.",
    "NoSuchObject": "The requested object does not exist.",
    "InternalServerError": "The server encountered an internal error or misconfiguration.",
    "InvalidStorePathHash": "Error from the common components.",
}


# ------------------------------------------------------------------------------------------------
# helpers


def rand_hash() -> str:
    return "".join(secrets.choice(NIX32) for _ in range(32))


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def assert_error(r: httpx.Response, status: int, kind: str, message: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "code": status,
        "error": kind,
        "message": message if message is not None else MESSAGES[kind],
    }


def assert_request_error(r: httpx.Response, detail: str) -> None:
    assert_error(r, 400, "RequestError", f"General request error: {detail}")


def assert_plain(r: httpx.Response, status: int, prefix: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text.startswith(prefix), r.text


def nar_info(
    cache: str, nar: bytes, *, h: str | None = None, name: str = "hello", **over: Any
) -> dict[str, Any]:
    h = h or rand_hash()
    info: dict[str, Any] = {
        "cache": cache,
        "store_path_hash": h,
        "store_path": f"/nix/store/{h}-{name}",
        "references": [],
        "system": None,
        "deriver": None,
        "sigs": [],
        "ca": None,
        "nar_hash": "sha256:" + hashlib.sha256(nar).hexdigest(),
        "nar_size": len(nar),
    }
    info.update(over)
    return info


def put(
    c: httpx.Client,
    info: dict[str, Any] | bytes,
    body: Any,
    token: str | None,
    mode: str = "header",
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    headers = auth(token)
    meta = info if isinstance(info, bytes) else json.dumps(info, separators=(",", ":")).encode()
    if mode == "header":
        headers["X-Attic-Nar-Info"] = meta.decode()
    else:
        headers["X-Attic-Nar-Info-Preamble-Size"] = str(len(meta))
        if isinstance(body, bytes):
            body = meta + body
        else:
            inner = body
            body = iter([meta, *inner])
    headers.update(extra or {})
    return c.put("_api/v1/upload-path", content=body, headers=headers)


def raw_request(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes (requests carry Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer() as s:
        s.create_cache("team")
        s.create_cache("pub", public=True)
        yield s
        assert s.errors == [], "server-side exceptions:\n" + "\n".join(s.errors)


@pytest.fixture
def c(srv: AtticTestServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=20) as client:
        yield client


# ------------------------------------------------------------------------------------------------
# §4.3 authorization matrix


def do(c: httpx.Client, op: str, cache: str, token: str | None, h: str = "") -> httpx.Response:
    hdrs = auth(token)
    if op == "config":
        return c.get(f"_api/v1/cache-config/{cache}", headers=hdrs)
    if op == "alias":
        return c.get(f"{cache}/attic-cache-info", headers=hdrs)
    if op == "nix-cache-info":
        return c.get(f"{cache}/nix-cache-info", headers=hdrs)
    if op == "narinfo":
        return c.get(f"{cache}/{h}.narinfo", headers=hdrs)
    if op == "nar":
        return c.get(f"{cache}/nar/{h}.nar", headers=hdrs)
    if op == "missing":
        body = {"cache": cache, "store_path_hashes": [rand_hash()]}
        return c.post("_api/v1/get-missing-paths", json=body, headers=hdrs)
    if op == "upload":
        return put(c, nar_info(cache, b"nar"), b"nar", token)
    if op == "patch":
        return c.patch(f"_api/v1/cache-config/{cache}", json={"priority": 7}, headers=hdrs)
    if op == "delete":
        return c.delete(f"_api/v1/cache-config/{cache}", headers=hdrs)
    raise AssertionError(op)


PULL_OPS = ["config", "alias", "nix-cache-info", "narinfo", "nar"]
WRITE_OPS = ["missing", "upload", "patch", "delete"]


@pytest.fixture
def objs(srv: AtticTestServer) -> dict[str, str]:
    """One object in each of team and pub; returns cache -> store path hash."""
    out = {}
    for cache in ("team", "pub"):
        h = rand_hash()
        srv.add_object(cache, f"/nix/store/{h}-thing", b"nar-" + cache.encode())
        out[cache] = h
    return out


@pytest.mark.parametrize("op", PULL_OPS + WRITE_OPS)
@pytest.mark.parametrize("token_kind", ["none", "garbage", "expired", "bad-signature"])
def test_anonymous_on_private_or_missing_cache_is_401(
    srv: AtticTestServer, c: httpx.Client, objs: dict[str, str], op: str, token_kind: str
) -> None:
    token = {
        "none": None,
        "garbage": "not.a.jwt",
        "expired": srv.make_token({"*": ALL_FLAGS}, exp=time.time() - 10),
        "bad-signature": srv.make_token_raw(
            {NAMESPACE: {"caches": {"*": ALL_FLAGS}}}, key=b"another secret entirely"
        ),
    }[token_kind]
    assert_error(do(c, op, "team", token, objs["team"]), 401, "Unauthorized")
    if op not in ("narinfo", "nar"):  # those answer NoSuchObject first (separate test)
        assert_error(do(c, op, "nosuch", token, rand_hash()), 401, "Unauthorized")


@pytest.mark.parametrize("op", WRITE_OPS)
def test_anonymous_on_public_cache_write_is_403(
    c: httpx.Client, objs: dict[str, str], op: str
) -> None:
    assert_error(do(c, op, "pub", None), 403, "AccessError")


@pytest.mark.parametrize("op", PULL_OPS)
def test_anonymous_on_public_cache_pull_is_200(
    c: httpx.Client, objs: dict[str, str], op: str
) -> None:
    r = do(c, op, "pub", None, objs["pub"])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("op", PULL_OPS + WRITE_OPS)
def test_token_without_matching_pattern_is_anonymous(
    srv: AtticTestServer, c: httpx.Client, objs: dict[str, str], op: str
) -> None:
    token = srv.make_token({"other-*": ALL_FLAGS, "exact": ALL_FLAGS})
    assert_error(do(c, op, "team", token, objs["team"]), 401, "Unauthorized")
    r = do(c, op, "pub", token, objs["pub"])
    if op in PULL_OPS:
        assert r.status_code == 200
    else:
        assert_error(r, 403, "AccessError")


@pytest.mark.parametrize("op", WRITE_OPS)
def test_pull_only_token_cannot_write(
    srv: AtticTestServer, c: httpx.Client, objs: dict[str, str], op: str
) -> None:
    token = srv.make_token({"team": {"r": 1}})
    assert do(c, "config", "team", token).status_code == 200
    assert_error(do(c, op, "team", token), 403, "AccessError")


@pytest.mark.parametrize(
    "op", ["config", "alias", "nix-cache-info", "missing", "upload", "patch", "delete"]
)
def test_any_flag_on_missing_cache_is_404(srv: AtticTestServer, c: httpx.Client, op: str) -> None:
    token = srv.make_token({"nosuch": {"d": 1}})  # "delete objects" only: still discovers
    assert_error(do(c, op, "nosuch", token), 404, "NoSuchCache")


def test_write_with_flag_but_not_required_one_is_403(srv: AtticTestServer, c: httpx.Client) -> None:
    token = srv.make_token({"team": {"w": 1}})  # push-only: GET cache-config is 403
    assert_error(do(c, "config", "team", token), 403, "AccessError")
    assert do(c, "missing", "team", token).status_code == 200


def test_create_permission_from_token_alone(srv: AtticTestServer, c: httpx.Client) -> None:
    body = {
        "keypair": "Generate",
        "is_public": False,
        "store_dir": "/nix/store",
        "priority": 41,
        "upstream_cache_key_names": ["cache.nixos.org-1"],
    }
    # no flags on the name -> 401, even for an existing public cache (no public grant)
    for name in ("new", "pub", "team"):
        r = c.post(f"_api/v1/cache-config/{name}", json=body)
        assert_error(r, 401, "Unauthorized")
    # other flags -> 403, whether or not the cache exists
    other = srv.make_token({"*": {"r": 1, "w": 1, "cr": 1, "cd": 1}})
    for name in ("new", "team"):
        assert_error(
            c.post(f"_api/v1/cache-config/{name}", json=body, headers=auth(other)),
            403,
            "AccessError",
        )
    # cc on an existing name -> 400 CacheAlreadyExists
    cc = srv.make_token({"*": {"cc": 1}})
    r = c.post("_api/v1/cache-config/team", json=body, headers=auth(cc))
    assert_error(r, 400, "CacheAlreadyExists")
    r = c.post("_api/v1/cache-config/new", json=body, headers=auth(cc))
    assert r.status_code == 200 and r.content == b""
    assert "new" in srv.caches()


@pytest.mark.parametrize("op", ["narinfo", "nar"])
def test_missing_object_is_404_before_auth(
    srv: AtticTestServer, c: httpx.Client, objs: dict[str, str], op: str
) -> None:
    h = rand_hash()
    for cache in ("team", "nosuch", "pub"):
        assert_error(do(c, op, cache, None, h), 404, "NoSuchObject")
    # an existing object on a private cache then needs pull
    assert_error(do(c, op, "team", None, objs["team"]), 401, "Unauthorized")
    token = srv.make_token({"team": {"w": 1}})
    assert_error(do(c, op, "team", token, objs["team"]), 403, "AccessError")
    assert do(c, op, "team", srv.make_token({"team": {"r": 1}}), objs["team"]).status_code == 200


# ------------------------------------------------------------------------------------------------
# §5 JWT


def test_hs256_secret_is_base64_decoded() -> None:
    secret_b64 = "wyggPC0gaW52YWxpZCB1dGY4"  # repo test vector, non-UTF-8 bytes
    with AtticTestServer(hs256_secret=base64.b64decode(secret_b64)) as srv:
        srv.create_cache("team")
        assert srv.hs256_secret_b64 == secret_b64
        claims = {"sub": "x", NAMESPACE: {"caches": {"team": {"r": 1}}}}
        good = jwt.encode(claims, base64.b64decode(secret_b64), algorithm="HS256")
        text_key = jwt.encode(claims, secret_b64.encode(), algorithm="HS256")
        with httpx.Client(base_url=srv.url) as c:
            assert do(c, "config", "team", good).status_code == 200
            assert_error(do(c, "config", "team", text_key), 401, "Unauthorized")
        assert [r.sub for r in srv.requests] == ["x", None]


def test_rs256_tokens() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with AtticTestServer(algorithm="RS256", rs256_private_pem=pem) as srv:
        srv.create_cache("team")
        assert base64.b64decode(srv.rs256_secret_b64 or "") == pem
        claims = {NAMESPACE: {"caches": {"team": {"r": 1}}}}
        with httpx.Client(base_url=srv.url) as c:
            assert (
                do(c, "config", "team", jwt.encode(claims, key, algorithm="RS256")).status_code
                == 200
            )
            assert do(c, "config", "team", srv.make_token({"team": {"r": 1}})).status_code == 200
            # an HS256 token (even "signed" with the public key) is not accepted
            hs = jwt.encode(claims, b"0" * 32, algorithm="HS256")
            assert_error(do(c, "config", "team", hs), 401, "Unauthorized")
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            forged = jwt.encode(claims, other, algorithm="RS256")
            assert_error(do(c, "config", "team", forged), 401, "Unauthorized")


def test_generated_rs256_key_is_pkcs1_pem() -> None:
    with AtticTestServer(algorithm="RS256") as srv:
        pem = base64.b64decode(srv.rs256_secret_b64 or "")
        assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "t",
        "exp": now + 600,
        "nbf": now - 5,
        NAMESPACE: {"caches": {"team": {"r": 1}}},
    }
    claims.update(over)
    return claims


INVALID_CLAIMS: dict[str, Callable[[float], dict[str, Any]]] = {
    # time claims: zero leeway, float seconds allowed (evaluated when the test runs)
    "expired": lambda now: _claims(exp=now - 0.5),
    "nbf-in-future": lambda now: _claims(nbf=now + 2),
    "iat-in-future": lambda now: _claims(iat=now + 2),
    "exp-not-a-number": lambda now: _claims(exp="never"),
    "bool-flag": lambda now: _claims(**{NAMESPACE: {"caches": {"team": {"r": True}}}}),
    "flag-2": lambda now: _claims(**{NAMESPACE: {"caches": {"team": {"r": 2}}}}),
    "float-flag": lambda now: _claims(**{NAMESPACE: {"caches": {"team": {"r": 1.0}}}}),
    "no-namespace": lambda now: {"sub": "t", "exp": now + 600},
    "no-caches": lambda now: _claims(**{NAMESPACE: {}}),
    "caches-not-object": lambda now: _claims(**{NAMESPACE: {"caches": []}}),
    "invalid-pattern-key": lambda now: _claims(
        **{NAMESPACE: {"caches": {"team": {"r": 1}, "bad name!": {"r": 1}}}}
    ),
    "one-bad-flag-anywhere": lambda now: _claims(
        **{NAMESPACE: {"caches": {"team": {"r": 1}, "x": {"w": False}}}}
    ),
    "sub-not-string": lambda now: _claims(sub=5),
}


@pytest.mark.parametrize("case", sorted(INVALID_CLAIMS))
def test_invalid_tokens_are_anonymous(srv: AtticTestServer, c: httpx.Client, case: str) -> None:
    token = srv.make_token_raw(INVALID_CLAIMS[case](time.time()))
    assert_error(do(c, "config", "team", token), 401, "Unauthorized")
    assert srv.requests[-1].sub is None
    assert srv.requests[-1].auth == "bearer"


def test_typ_header_must_be_jwt(srv: AtticTestServer, c: httpx.Client) -> None:
    token = srv.make_token_raw(_claims(), headers={"typ": "JWS"})
    assert_error(do(c, "config", "team", token), 401, "Unauthorized")


def test_valid_token_variants(srv: AtticTestServer, c: httpx.Client) -> None:
    now = time.time()
    ok = [
        srv.make_token_raw(_claims()),
        srv.make_token_raw(_claims(exp=now + 3, nbf=now - 0.5)),  # float seconds, close edges
        srv.make_token_raw({NAMESPACE: {"caches": {"team": {"r": 1, "w": 0, "zz": 9}}}}),
        srv.make_token_raw(_claims(iat=now - 1, aud="whatever", iss="someone")),
        srv.make_token_raw(_claims(), headers={"typ": "at+jwt"}),
        srv.make_token_raw(_claims(), headers={"typ": "jwt"}),
    ]
    for token in ok:
        assert do(c, "config", "team", token).status_code == 200


def test_authorization_header_forms(srv: AtticTestServer, c: httpx.Client) -> None:
    token = srv.make_token({"team": {"r": 1}}, sub="ci-bot")
    url = "_api/v1/cache-config/team"
    assert c.get(url, headers={"Authorization": f"bEaReR {token}"}).status_code == 200
    basic = base64.b64encode(f"anyone:{token}".encode()).decode()
    assert c.get(url, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert srv.requests[-1].auth == "basic" and srv.requests[-1].sub == "ci-bot"
    assert c.get(url, auth=("", token)).status_code == 200  # httpx Basic auth, empty user
    # exactly one space after the scheme
    assert c.get(url, headers={"Authorization": f"Bearer  {token}"}).status_code == 401
    assert c.get(url, headers={"Authorization": f"Token {token}"}).status_code == 401
    # the Authorization value is never recorded
    assert all(token not in repr(r) for r in srv.requests)


def test_pattern_first_match_without_merging(srv: AtticTestServer, c: httpx.Client) -> None:
    srv.create_cache("starlite-x")
    # issue #133: `--pull '*' --push 'starlite-*'` puts "*" first; starlite-x only gets r
    token = srv.make_token({"*": {"r": 1}, "starlite-*": {"w": 1}})
    decoded = jwt.decode(token, options={"verify_signature": False})
    assert list(decoded[NAMESPACE]["caches"]) == ["*", "starlite-*"]
    assert do(c, "config", "starlite-x", token).status_code == 200
    assert_error(do(c, "missing", "starlite-x", token), 403, "AccessError")
    # the other order: the specific pattern wins, and there is no r
    token = srv.make_token({"starlite-*": {"w": 1}, "*": {"r": 1}})
    assert do(c, "missing", "starlite-x", token).status_code == 200
    assert_error(do(c, "config", "starlite-x", token), 403, "AccessError")
    # an exact key wins over an earlier pattern
    token = srv.make_token({"*": {"r": 1}, "starlite-x": {"w": 1}})
    assert do(c, "missing", "starlite-x", token).status_code == 200
    assert_error(do(c, "config", "starlite-x", token), 403, "AccessError")
    # "*" matches an empty run and any run
    token = srv.make_token({"s*x": {"r": 1}})
    assert do(c, "config", "starlite-x", token).status_code == 200
    assert_error(do(c, "config", "team", token), 401, "Unauthorized")


# ------------------------------------------------------------------------------------------------
# cache-config: get / create / patch / delete


CREATE = {
    "keypair": "Generate",
    "is_public": False,
    "store_dir": "/nix/store",
    "priority": 41,
    "upstream_cache_key_names": ["cache.nixos.org-1"],
}


def test_get_cache_config_shape_and_endpoints(srv: AtticTestServer, c: httpx.Client) -> None:
    token = srv.make_token({"team": {"r": 1}})
    r = c.get("_api/v1/cache-config/team", headers=auth(token))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == [
        "substituter_endpoint",
        "api_endpoint",
        "public_key",
        "is_public",
        "store_dir",
        "priority",
        "upstream_cache_key_names",
        "retention_period",
    ]
    assert body == {
        "substituter_endpoint": f"http://127.0.0.1:{srv.port}/team",
        "api_endpoint": f"http://127.0.0.1:{srv.port}/",
        "public_key": srv.public_key("team"),
        "is_public": False,
        "store_dir": "/nix/store",
        "priority": 41,
        "upstream_cache_key_names": ["cache.nixos.org-1"],
        "retention_period": "Global",
    }
    assert srv.public_key("team").startswith("team:")
    assert len(base64.b64decode(srv.public_key("team").split(":", 1)[1])) == 32
    hdrs = {**auth(token), "Host": "attic.example.com", "X-Forwarded-Proto": "https"}
    body = c.get("team/attic-cache-info", headers=hdrs).json()
    assert body["api_endpoint"] == "https://attic.example.com/"
    assert body["substituter_endpoint"] == "https://attic.example.com/team"


def test_configured_api_endpoint() -> None:
    with pytest.raises(ValueError, match="end with"):
        AtticTestServer(api_endpoint="https://attic.example.com")
    with AtticTestServer(api_endpoint="https://attic.example.com/sub/") as srv:
        srv.create_cache("pub", public=True)
        body = httpx.get(srv.url + "_api/v1/cache-config/pub").json()
        assert body["api_endpoint"] == "https://attic.example.com/sub/"
        assert body["substituter_endpoint"] == "https://attic.example.com/sub/pub"


def test_create_cache_generate_and_keypair(srv: AtticTestServer, c: httpx.Client) -> None:
    root = auth(srv.root_token())
    body = {**CREATE, "is_public": True, "priority": 30, "upstream_cache_key_names": []}
    r = c.post("_api/v1/cache-config/alice+proj", json=body, headers=root)
    assert r.status_code == 200 and r.content == b""
    cache = srv.cache("alice+proj")
    assert (cache.is_public, cache.priority, cache.store_dir) == (True, 30, "/nix/store")
    assert cache.upstream_cache_key_names == [] and cache.retention_period is None
    assert cache.public_key.startswith("alice+proj:")
    # a given keypair (nix-store --generate-binary-cache-key format)
    seed = os.urandom(32)
    priv = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pk = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    secret = "mykey-1:" + base64.b64encode(seed + pk).decode()
    r = c.post(
        "_api/v1/cache-config/keyed", json={**CREATE, "keypair": {"Keypair": secret}}, headers=root
    )
    assert r.status_code == 200
    assert srv.public_key("keyed") == "mykey-1:" + base64.b64encode(pk).decode()
    assert srv.cache("keyed").keypair == secret
    got = c.get("_api/v1/cache-config/keyed", headers=root).json()
    assert got["public_key"] == srv.public_key("keyed") and "keypair" not in got


@pytest.mark.parametrize(
    "body,detail",
    [
        ({k: v for k, v in CREATE.items() if k != "priority"}, "missing field `priority`"),
        ({k: v for k, v in CREATE.items() if k != "keypair"}, "missing field `keypair`"),
        ({**CREATE, "is_public": "yes"}, "is_public: invalid type"),
        ({**CREATE, "priority": 2**31}, "priority: invalid value"),
        ({**CREATE, "keypair": "Regenerate"}, "keypair: unknown variant"),
        ({**CREATE, "keypair": {"Keypair": "nokey"}}, "keypair.Keypair: invalid value"),
        (
            {**CREATE, "keypair": {"Keypair": "k:" + base64.b64encode(b"x" * 64).decode()}},
            "keypair.Keypair",
        ),
        ({**CREATE, "upstream_cache_key_names": "cache.nixos.org-1"}, "upstream_cache_key_names"),
        ([], "invalid type: sequence"),
    ],
)
def test_create_cache_shape_errors_are_422(
    srv: AtticTestServer, c: httpx.Client, body: Any, detail: str
) -> None:
    r = c.post("_api/v1/cache-config/new", json=body, headers=auth(srv.root_token()))
    prefix = "Failed to deserialize the JSON body into the target type: "
    assert_plain(r, 422, prefix)
    assert detail in r.text
    assert "new" not in srv.caches()


def test_bad_cache_name_in_url_is_400_plain(srv: AtticTestServer, c: httpx.Client) -> None:
    root = auth(srv.root_token())
    for bad in ("-team", "a" * 51, "_api", "te.am"):
        r = c.post(f"_api/v1/cache-config/{bad}", json=CREATE, headers=root)
        assert_plain(r, 400, f'Invalid URL: Invalid cache name "{bad}"')
    assert_plain(c.get("-x/nix-cache-info"), 400, 'Invalid URL: Invalid cache name "-x"')
    assert c.post(f"_api/v1/cache-config/{'a' * 50}", json=CREATE, headers=root).status_code == 200


def test_patch_cache(srv: AtticTestServer, c: httpx.Client) -> None:
    cr = auth(srv.make_token({"team": {"r": 1, "cr": 1}}))
    url = "_api/v1/cache-config/team"
    old_key = srv.public_key("team")
    r = c.patch(
        url, json={"is_public": True, "priority": 10, "store_dir": None, "bogus": 1}, headers=cr
    )
    assert r.status_code == 200 and r.content == b""
    cache = srv.cache("team")
    assert (cache.is_public, cache.priority, cache.store_dir) == (True, 10, "/nix/store")
    r = c.patch(url, json={"upstream_cache_key_names": ["a-1", "b-1"]}, headers=cr)
    assert r.status_code == 200 and cache.upstream_cache_key_names == ["a-1", "b-1"]
    r = c.patch(url, json={"keypair": "Generate"}, headers=cr)
    assert r.status_code == 200
    assert srv.public_key("team") != old_key and srv.public_key("team").startswith("team:")
    # read-only / unknown / null fields only
    r = c.patch(
        url,
        json={
            "public_key": "x:y",
            "api_endpoint": "http://x/",
            "substituter_endpoint": "z",
            "priority": None,
        },
        headers=cr,
    )
    assert_request_error(r, "No modifiable fields were set.")
    assert_request_error(c.patch(url, json={}, headers=cr), "No modifiable fields were set.")
    # retention needs cq in addition to cr (issue #144)
    assert_error(c.patch(url, json={"retention_period": "Global"}, headers=cr), 403, "AccessError")
    assert_error(
        c.patch(url, json={"retention_period": {"Period": 60}, "priority": 1}, headers=cr),
        403,
        "AccessError",
    )
    assert cache.priority == 10  # nothing applied
    cq = auth(srv.make_token({"team": {"cr": 1, "cq": 1}}))
    assert c.patch(url, json={"retention_period": {"Period": 3600}}, headers=cq).status_code == 200
    assert srv.cache("team").retention_period == 3600
    got = c.get(url, headers=auth(srv.root_token())).json()
    assert got["retention_period"] == {"Period": 3600}
    assert c.patch(url, json={"retention_period": {"Period": 0}}, headers=cq).status_code == 200
    assert srv.cache("team").retention_period == 0
    assert_request_error(
        c.patch(url, json={"retention_period": {"Period": 2**31}}, headers=cq),
        "Invalid retention period",
    )
    assert_plain(
        c.patch(url, json={"retention_period": {"Period": -1}}, headers=cq),
        422,
        "Failed to deserialize the JSON body into the target type: ",
    )
    assert c.patch(url, json={"retention_period": "Global"}, headers=cq).status_code == 200
    assert srv.cache("team").retention_period is None
    # cq alone is not enough: cr is the required flag
    only_cq = auth(srv.make_token({"team": {"cq": 1}}))
    assert_error(
        c.patch(url, json={"retention_period": "Global"}, headers=only_cq), 403, "AccessError"
    )
    # a read-only field with the wrong type is still a shape error
    assert_plain(c.patch(url, json={"public_key": 5}, headers=cr), 422, "Failed to deserialize")


def test_delete_cache_hard(srv: AtticTestServer, c: httpx.Client, objs: dict[str, str]) -> None:
    url = "_api/v1/cache-config/team"
    assert_error(
        c.delete(url, headers=auth(srv.make_token({"team": {"cr": 1}}))), 403, "AccessError"
    )
    cd = auth(srv.make_token({"team": {"r": 1, "cd": 1, "cc": 1}}))
    r = c.delete(url, headers=cd)
    assert r.status_code == 200 and r.content == b""
    assert "team" not in srv.caches()
    assert_error(c.get(url, headers=cd), 404, "NoSuchCache")
    assert_error(c.delete(url, headers=cd), 404, "NoSuchCache")
    assert c.post(url, json=CREATE, headers=cd).status_code == 200  # the name is reusable
    assert srv.objects("team") == {}


def test_delete_cache_soft() -> None:
    with AtticTestServer(soft_delete_caches=True) as srv, httpx.Client(base_url=srv.url) as c:
        srv.create_cache("team")
        h = rand_hash()
        srv.add_object("team", f"/nix/store/{h}-x", b"nar")
        root = auth(srv.root_token())
        url = "_api/v1/cache-config/team"
        assert c.delete(url, headers=root).status_code == 200
        assert_error(c.get(url, headers=root), 404, "NoSuchCache")
        assert_error(c.get(url), 401, "Unauthorized")
        assert_error(c.get(f"team/{h}.narinfo", headers=root), 404, "NoSuchObject")
        assert_error(c.post(url, json=CREATE, headers=root), 400, "CacheAlreadyExists")


# ------------------------------------------------------------------------------------------------
# framework rejections, routing, transport


def test_json_endpoint_rejections(srv: AtticTestServer, c: httpx.Client) -> None:
    url = "_api/v1/get-missing-paths"
    # these come from the extractor, so they win over auth (anonymous here)
    r = c.post(url, content=b'{"cache":"team","store_path_hashes":[]}')
    assert_plain(r, 415, "Expected request with `Content-Type: application/json`")
    assert r.text == "Expected request with `Content-Type: application/json`"
    r = c.post(url, content=b"{}", headers={"Content-Type": "text/plain"})
    assert_plain(r, 415, "Expected request with `Content-Type: application/json`")
    r = c.post(url, content=b'{"cache":', headers={"Content-Type": "application/json"})
    assert_plain(r, 400, "Failed to parse the request body as JSON: ")
    r = c.post(url, content=b"", headers={"Content-Type": "application/json"})
    assert_plain(r, 400, "Failed to parse the request body as JSON: ")
    prefix = "Failed to deserialize the JSON body into the target type: "
    for body in (
        {"cache": "team"},
        {"store_path_hashes": []},
        {"cache": "team", "store_path_hashes": "abc"},
        {"cache": "-bad", "store_path_hashes": []},
        {"cache": "team", "store_path_hashes": [rand_hash(), "e" * 32]},
        {"cache": "team", "store_path_hashes": [rand_hash()[:31]]},
    ):
        assert_plain(c.post(url, json=body), 422, prefix)
    big = {"cache": "team", "store_path_hashes": [rand_hash()] * 70000}  # > 2 MiB
    r = c.post(url, json=big)
    assert_plain(r, 413, "Failed to buffer the request body: length limit exceeded")
    # content type with parameters or a +json suffix is fine; then auth applies
    ok = b'{"cache":"team","store_path_hashes":[]}'
    for ctype in ("application/json; charset=utf-8", "application/vnd.attic+json"):
        assert_error(c.post(url, content=ok, headers={"Content-Type": ctype}), 401, "Unauthorized")


def test_get_missing_paths_set_difference(
    srv: AtticTestServer, c: httpx.Client, objs: dict[str, str]
) -> None:
    token = auth(srv.make_token({"team": {"w": 1}}))
    a, b = rand_hash(), rand_hash()
    body = {"cache": "team", "store_path_hashes": [a, objs["team"], b, a, objs["pub"]]}
    r = c.post("_api/v1/get-missing-paths", json=body, headers=token)
    assert r.status_code == 200
    assert list(r.json()) == ["missing_paths"]
    missing = r.json()["missing_paths"]
    assert sorted(missing) == sorted({a, b, objs["pub"]})
    assert len(missing) == 3


def test_routing_and_methods(srv: AtticTestServer, c: httpx.Client) -> None:
    for path in (
        "nope",
        "_api/v2/cache-config/team",
        "_api/v1/cache-config/team/x",
        "team/nar/x/y",
        "a/b/c/d",
    ):
        assert_error(c.get(path), 404, "NotFound")
    r = c.get("")
    assert r.status_code == 200 and "html" in r.headers["content-type"]
    for method, path in (
        ("PUT", "_api/v1/cache-config/team"),
        ("GET", "_api/v1/get-missing-paths"),
        ("POST", "_api/v1/upload-path"),
        ("POST", "team/nix-cache-info"),
        ("DELETE", "team/abc.narinfo"),
        ("PUT", "team/nar/abc.nar"),
    ):
        r = c.request(method, path)
        assert r.status_code == 405, (method, path)
        assert r.content == b"" and r.headers["content-length"] == "0"
        assert srv.requests[-1].error_kind == "MethodNotAllowed"


def test_host_header_required_and_allowed_hosts(srv: AtticTestServer) -> None:
    resp = raw_request(srv.port, b"GET /pub/nix-cache-info HTTP/1.1\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {
        "code": 400,
        "error": "RequestError",
        "message": "General request error: Missing Host header",
    }
    with AtticTestServer(allowed_hosts=("cache.example.com",)) as s2:
        s2.create_cache("pub", public=True)
        r = httpx.get(s2.url + "pub/nix-cache-info")
        assert_request_error(r, "Bad Host")
        r = httpx.get(s2.url + "pub/nix-cache-info", headers={"Host": "cache.example.com"})
        assert r.status_code == 200


def test_keep_alive_with_content_length_on_every_response(
    srv: AtticTestServer, objs: dict[str, str]
) -> None:
    reqs = [
        b"GET /pub/nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /pub/nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /_api/v1/get-missing-paths HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n3\r\n{}x\r\n0\r\n\r\n",
        f"HEAD /pub/{objs['pub']}.narinfo HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"GET /pub/nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    data = raw_request(srv.port, b"".join(reqs))
    statuses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        statuses.append(int(lines[0].split()[1]))
        headers = dict(line.decode().lower().split(": ", 1) for line in lines[1:])
        is_head = len(statuses) == 5
        length = int(headers["content-length"])
        data = rest if is_head else rest[length:]
    assert statuses == [200, 404, 405, 400, 200, 200]


def test_head_narinfo(srv: AtticTestServer, c: httpx.Client, objs: dict[str, str]) -> None:
    g = c.get(f"pub/{objs['pub']}.narinfo")
    h = c.head(f"pub/{objs['pub']}.narinfo")
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == g.headers["content-length"] == str(len(g.content))
    assert h.headers["content-type"] == "text/x-nix-narinfo"


# ------------------------------------------------------------------------------------------------
# upload-path


@pytest.fixture
def w(srv: AtticTestServer) -> str:
    return srv.make_token({"team": {"r": 1, "w": 1}, "team2": {"r": 1, "w": 1}, "pub": {"w": 1}})


@pytest.mark.parametrize("mode", ["header", "preamble"])
def test_upload_new_path(srv: AtticTestServer, c: httpx.Client, w: str, mode: str) -> None:
    nar = os.urandom(5000)
    ref = rand_hash() + "-glibc"
    info = nar_info(
        "team",
        nar,
        references=[ref],
        sigs=["cache.nixos.org-1:abc"],
        deriver="x.drv",
        ca="text:sha256:1",
    )
    r = put(c, info, nar, w, mode)
    assert r.status_code == 200, r.text
    assert r.json() == {"kind": "Uploaded", "file_size": 5000, "frac_deduplicated": None}
    obj = srv.objects("team")[info["store_path_hash"]]
    assert obj.store_path == info["store_path"]
    assert obj.references == (ref,) and obj.sigs == ("cache.nixos.org-1:abc",)
    assert (obj.deriver, obj.ca, obj.nar_size) == ("x.drv", "text:sha256:1", 5000)
    assert obj.nar_hash == info["nar_hash"]
    assert srv.nar_bytes("team", info["store_path_hash"]) == nar
    assert srv.uploads == [("team", info["store_path_hash"], "Uploaded")]
    assert srv.requests[-1].body_bytes >= 5000


def test_upload_preamble_wins_and_limits(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    nar = b"preamble nar"
    info = nar_info("team", nar)
    meta = json.dumps(info).encode()
    r = c.put(
        "_api/v1/upload-path",
        content=meta + nar,
        headers={
            **auth(w),
            "X-Attic-Nar-Info": "{garbage",
            "X-Attic-Nar-Info-Preamble-Size": str(len(meta)),
        },
    )
    assert r.json()["kind"] == "Uploaded"
    hdr = {**auth(w), "X-Attic-Nar-Info-Preamble-Size": "abc"}
    assert_request_error(
        c.put("_api/v1/upload-path", content=b"x", headers=hdr),
        "X-Attic-Nar-Info-Preamble-Size must be a valid unsigned integer",
    )
    hdr = {**auth(w), "X-Attic-Nar-Info-Preamble-Size": "-1"}
    assert_request_error(
        c.put("_api/v1/upload-path", content=b"x", headers=hdr),
        "X-Attic-Nar-Info-Preamble-Size must be a valid unsigned integer",
    )
    hdr = {**auth(w), "X-Attic-Nar-Info-Preamble-Size": str(1024 * 1024 + 1)}
    assert_request_error(
        c.put("_api/v1/upload-path", content=b"x", headers=hdr), "Upload info is too large"
    )
    hdr = {**auth(w), "X-Attic-Nar-Info-Preamble-Size": "100"}
    assert_request_error(
        c.put("_api/v1/upload-path", content=b"short", headers=hdr),
        "Upload info doesn't match specified size",
    )
    assert_request_error(
        c.put("_api/v1/upload-path", content=nar, headers=auth(w)), "X-Attic-Nar-Info must be set"
    )
    hdr = {**auth(w), "X-Attic-Nar-Info": "caf\xe9"}
    r = c.put(
        "_api/v1/upload-path", content=nar, headers={k: v.encode("latin-1") for k, v in hdr.items()}
    )
    assert_request_error(r, "X-Attic-Nar-Info has invalid encoding")


def test_upload_metadata_errors_before_auth(srv: AtticTestServer, c: httpx.Client) -> None:
    nar = b"abc"
    bad = [
        b"{not json",
        json.dumps({k: v for k, v in nar_info("team", nar).items() if k != "references"}).encode(),
        json.dumps(nar_info("-bad", nar)).encode(),
        json.dumps(nar_info("team", nar, h="e" * 32)).encode(),
        json.dumps(nar_info("team", nar, nar_size=-1)).encode(),
    ]
    for meta in bad:
        for mode in ("header", "preamble"):
            r = put(c, meta, nar, None, mode)  # anonymous: still 400, not 401
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "RequestError"
            assert r.json()["message"].startswith("General request error: ")
    assert srv.uploads == []


def test_upload_nar_hash_formats(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    nar = os.urandom(300)
    digest = hashlib.sha256(nar).digest()
    sri = "sha256-" + base64.b64encode(digest).decode()
    for bad in (
        sri,
        "sha256:" + base64.b64encode(digest).decode(),
        "sha512:" + digest.hex(),
        digest.hex(),
    ):
        r = put(c, nar_info("team", nar, nar_hash=bad), nar, w)
        assert r.status_code == 400 and r.json()["error"] == "RequestError", bad
    r = put(c, nar_info("team", nar, nar_hash="sha256:" + nix32_encode(digest)), nar, w)
    assert r.json()["kind"] == "Uploaded"
    (obj,) = srv.objects("team").values()
    assert obj.nar_hash == "sha256:" + digest.hex()


def test_upload_bad_hash_or_size_messages() -> None:
    with AtticTestServer(nar_size_threshold=1000) as srv, httpx.Client(base_url=srv.url) as c:
        srv.create_cache("team")
        w = srv.make_token({"team": {"w": 1}})
        small, big = os.urandom(999), os.urandom(1000)
        # wrong content, same size
        assert_request_error(
            put(c, nar_info("team", small), os.urandom(999), w), "Bad chunk hash or size"
        )
        assert_request_error(
            put(c, nar_info("team", big), os.urandom(1000), w), "Bad NAR Hash or Size"
        )
        # body shorter than nar_size
        assert_request_error(
            put(c, nar_info("team", small), small[:-1], w), "Bad chunk hash or size"
        )
        assert_request_error(put(c, nar_info("team", big), big[:-1], w), "Bad NAR Hash or Size")
        assert srv.objects("team") == {} and srv.uploads == []
        # trailing bytes after nar_size are ignored on new uploads
        r = put(c, nar_info("team", big), big + b"trailing", w)
        assert r.json()["kind"] == "Uploaded"
        assert 0.0 <= r.json()["frac_deduplicated"] <= 1.0  # chunked: a number
        assert srv.nar_bytes("team", next(iter(srv.objects("team")))) == big
    with AtticTestServer(nar_size_threshold=0) as srv, httpx.Client(base_url=srv.url) as c:
        srv.create_cache("team")
        w = srv.make_token({"team": {"w": 1}})
        big = os.urandom(100_000)
        assert_request_error(put(c, nar_info("team", big), big[::-1], w), "Bad chunk hash or size")
        assert put(c, nar_info("team", big), big, w).json()["frac_deduplicated"] is None


def test_upload_dedup_and_upsert(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    srv.create_cache("team2")
    nar = os.urandom(2000)
    info = nar_info("team", nar)
    assert put(c, info, nar, w).json()["kind"] == "Uploaded"
    # same NAR, other cache and path: global dedup (proof of possession: body is hashed)
    info2 = nar_info("team2", nar)
    r = put(c, info2, nar, w)
    assert r.json() == {"kind": "Deduplicated", "frac_deduplicated": None}
    assert "file_size" not in r.json()
    assert info2["store_path_hash"] in srv.objects("team2")
    assert_request_error(
        put(c, nar_info("team2", nar), os.urandom(2000), w), "Bad NAR Hash or Size"
    )
    assert_request_error(put(c, nar_info("team2", nar), nar + b"x", w), "Bad NAR Hash or Size")
    # re-upload of the same path replaces its metadata (upsert)
    ref = rand_hash() + "-dep"
    r = put(c, {**info, "references": [ref], "sigs": ["k:s"]}, nar, w)
    assert r.status_code == 200
    obj = srv.objects("team")[info["store_path_hash"]]
    assert obj.references == (ref,) and obj.sigs == ("k:s",)
    assert len(srv.objects("team")) == 1
    assert srv.uploads == [
        ("team", info["store_path_hash"], "Uploaded"),
        ("team2", info2["store_path_hash"], "Deduplicated"),
        ("team", info["store_path_hash"], "Deduplicated"),
    ]


def test_dedup_without_proof_of_possession_does_not_read_body() -> None:
    with (
        AtticTestServer(require_proof_of_possession=False) as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        srv.create_cache("team")
        w = srv.make_token({"team": {"w": 1}})
        nar = os.urandom(100_000)
        assert put(c, nar_info("team", nar), nar, w).json()["kind"] == "Uploaded"
        r = put(c, nar_info("team", nar), b"\0" * 300_000, w)  # wrong body: not even read
        assert r.json()["kind"] == "Deduplicated"
        assert srv.requests[-1].body_bytes == 0
        # the connection stays usable after the unread body was discarded
        assert (
            c.get(
                "team/nix-cache-info", headers=auth(srv.make_token({"team": {"r": 1}}))
            ).status_code
            == 200
        )


def test_upload_chunked_transfer_encoding(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    nar = os.urandom(300_000)
    pieces = [nar[i : i + 7000] for i in range(0, len(nar), 7000)]
    for mode in ("header", "preamble"):
        info = nar_info("team", nar)
        r = put(c, info, iter(pieces), w, mode)
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 200, r.text
        assert srv.nar_bytes("team", info["store_path_hash"]) == nar
    assert [k for _, _, k in srv.uploads] == ["Uploaded", "Deduplicated"]


def test_client_disconnect_mid_upload(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    info = nar_info("team", b"x" * 1_000_000)
    head = (
        f"PUT /_api/v1/upload-path HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {w}\r\n"
        f"Content-Length: 1000000\r\nX-Attic-Nar-Info: {json.dumps(info)}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(head + b"x" * 10_000)
    # the server keeps serving; the aborted uploads left nothing behind
    assert c.get("pub/nix-cache-info").status_code == 200
    assert srv.objects("team") == {}


# ------------------------------------------------------------------------------------------------
# binary cache (§7)


def test_nix_cache_info(srv: AtticTestServer, c: httpx.Client) -> None:
    srv.cache("pub").priority = 30
    r = c.get("pub/nix-cache-info")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/x-nix-cache-info"
    assert r.text == "WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 30\n"
    assert r.headers["x-attic-cache-visibility"] == "public"
    r = c.get("team/nix-cache-info", headers=auth(srv.make_token({"team": {"r": 1}})))
    assert r.text == "WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 41\n"
    assert "x-attic-cache-visibility" not in r.headers


def verify_sig(public_key: str, sig_line: str, fp: bytes) -> None:
    name, b64 = public_key.split(":", 1)
    sig_name, sig_b64 = sig_line.split(":", 1)
    assert sig_name == name
    ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(b64)).verify(
        base64.b64decode(sig_b64), fp
    )


def test_narinfo_content_and_signature(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    nar = os.urandom(4096)
    h = rand_hash()
    dep = rand_hash() + "-glibc-2.33"
    info = nar_info(
        "team",
        nar,
        h=h,
        name="hello-2.10",
        references=[dep, f"{h}-hello-2.10"],
        deriver="abc-hello.drv",
        sigs=["cache.nixos.org-1:uploader-sig"],
        ca="fixed:r:sha256:0000",
        system="x86_64-linux",
    )
    assert put(c, info, nar, w).status_code == 200
    r = c.get(f"team/{h}.narinfo", headers=auth(w))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/x-nix-narinfo"
    lines = r.text.split("\n")
    assert lines[-1] == ""
    sig = lines[7]
    assert lines[:-1] == [
        f"StorePath: /nix/store/{h}-hello-2.10",
        f"URL: nar/{h}.nar",
        "Compression: none",
        f"NarHash: sha256:{hashlib.sha256(nar).hexdigest()}",
        "NarSize: 4096",
        f"References: {dep} {h}-hello-2.10",
        "Deriver: abc-hello.drv",
        sig,
        "CA: fixed:r:sha256:0000",
    ]
    assert sig.startswith("Sig: team:")
    assert "uploader-sig" not in r.text and "FileHash" not in r.text and "System" not in r.text
    fp = (
        f"1;/nix/store/{h}-hello-2.10;sha256:{nix32_encode(hashlib.sha256(nar).digest())};4096;"
        f"/nix/store/{dep},/nix/store/{h}-hello-2.10"
    ).encode()
    verify_sig(srv.public_key("team"), sig.removeprefix("Sig: "), fp)
    # the NAR itself
    r = c.get(f"team/nar/{h}.nar", headers=auth(w))
    assert r.status_code == 200 and r.content == nar
    assert r.headers["content-type"] == "application/x-nix-nar"
    # signed on the fly: a new keypair changes the Sig
    srv.cache("team").keypair_obj = Keypair.generate("team")
    sig2 = c.get(f"team/{h}.narinfo", headers=auth(w)).text.split("\n")[7]
    assert sig2 != sig
    verify_sig(srv.public_key("team"), sig2.removeprefix("Sig: "), fp)


def test_narinfo_minimal_and_store_dir_from_store_path(
    srv: AtticTestServer, c: httpx.Client, w: str
) -> None:
    nar = b"minimal"
    h = rand_hash()
    ref = rand_hash() + "-x"
    assert (
        put(
            c,
            nar_info("team", nar, h=h, store_path=f"/other/store/{h}-m", references=[ref]),
            nar,
            w,
        ).status_code
        == 200
    )
    text = c.get(f"team/{h}.narinfo", headers=auth(w)).text
    assert "Deriver:" not in text and "CA:" not in text
    sig = next(x for x in text.split("\n") if x.startswith("Sig: "))
    fp = f"1;/other/store/{h}-m;sha256:{nix32_encode(hashlib.sha256(nar).digest())};7;/other/store/{ref}"
    verify_sig(srv.public_key("team"), sig.removeprefix("Sig: "), fp.encode())


def test_narinfo_url_errors(srv: AtticTestServer, c: httpx.Client, objs: dict[str, str]) -> None:
    h = objs["pub"]
    assert_error(c.get(f"pub/{h}.ls"), 404, "NotFound")
    assert_error(c.get(f"pub/{h}"), 404, "NotFound")
    assert_error(c.get(f"pub/nar/{h}.nar.zst"), 404, "NotFound")
    assert_error(c.get("pub/notahash.narinfo"), 500, "InvalidStorePathHash")
    assert_error(c.get("team/notahash.narinfo"), 500, "InvalidStorePathHash")
    assert_error(c.get(f"pub/nar/{'e' * 32}.nar"), 500, "InvalidStorePathHash")
    r = c.get(f"pub/{h}.narinfo")
    assert r.status_code == 200 and r.headers["x-attic-cache-visibility"] == "public"


def test_signing_test_vector() -> None:
    hex_hash = "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a"
    nix32 = "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci"
    assert nix32_encode(bytes.fromhex(hex_hash)) == nix32
    assert nix32_decode(nix32) == bytes.fromhex(hex_hash)
    fp = fingerprint(
        "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
        bytes.fromhex(hex_hash),
        206104,
        [
            "563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
        ],
    )
    assert fp == (
        b"1;/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10;"
        b"sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci;206104;"
        b"/nix/store/563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56,"
        b"/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"
    )
    verify_sig(
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        "cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==",
        fp,
    )
    # and our signer produces signatures that verify the same way
    kp = Keypair.generate("k")
    verify_sig(kp.public_key, kp.sign(fp), fp)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidSignature
        verify_sig(kp.public_key, kp.sign(fp + b"x"), fp)


def test_zstd_requires_module() -> None:
    try:
        import zstandard
    except ImportError:
        with pytest.raises(ValueError, match="zstandard"):
            AtticTestServer(compression="zstd")
    else:
        with AtticTestServer(compression="zstd") as srv:
            srv.create_cache("pub", public=True)
            obj = srv.add_object("pub", f"/nix/store/{rand_hash()}-z", b"z" * 1000)
            h = obj.store_path.split("/")[-1].split("-")[0]
            text = httpx.get(srv.url + f"pub/{h}.narinfo").text
            assert "Compression: zstd" in text
            nar = httpx.get(srv.url + f"pub/nar/{h}.nar").content
            assert zstandard.ZstdDecompressor().decompressobj().decompress(nar) == b"z" * 1000


# ------------------------------------------------------------------------------------------------
# faults


def test_fault_fail_rate(srv: AtticTestServer, c: httpx.Client) -> None:
    token = auth(srv.make_token({"team": {"r": 1}}))
    srv.faults.fail_rate = 1.0
    assert_error(c.get("_api/v1/cache-config/team", headers=token), 500, "InternalServerError")
    assert srv.requests[-1].error_kind == "fault:fail"
    assert c.get("pub/nix-cache-info").status_code == 200  # binary cache spared by default
    srv.faults.include_binary_cache = True
    assert_error(c.get("pub/nix-cache-info"), 500, "InternalServerError")
    srv.faults.fail_status = 502
    r = c.get("_api/v1/cache-config/team", headers=token)
    assert r.status_code == 502 and r.text == "502 Bad Gateway\n"
    assert r.headers["content-type"].startswith("text/plain")
    srv.faults.fail_rate = 0.0
    assert c.get("_api/v1/cache-config/team", headers=token).status_code == 200


def test_fault_fail_rate_is_seeded() -> None:
    def run(seed: int) -> list[int]:
        with AtticTestServer() as srv, httpx.Client(base_url=srv.url) as c:
            srv.faults.seed = seed
            srv.faults.fail_rate = 0.5
            return [c.get("_api/v1/cache-config/x").status_code for _ in range(40)]

    a, b = run(7), run(7)
    assert a == b
    assert set(a) == {401, 500}  # nonexistent cache, anonymous -> 401 when not failed


def test_fault_reset(srv: AtticTestServer, c: httpx.Client) -> None:
    srv.faults.reset_rate = 1.0
    with pytest.raises(httpx.TransportError):
        c.get("pub/nix-cache-info")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /pub/nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            s.recv(100)
    assert srv.requests[-1].status is None and srv.requests[-1].error_kind == "fault:reset"
    srv.faults.reset_rate = 0.0
    assert c.get("pub/nix-cache-info").status_code == 200


def test_fault_status_script(srv: AtticTestServer, c: httpx.Client) -> None:
    srv.faults.status_script = [(429, {"Retry-After": "2"}, b"slow down"), (503, {}, b"")]
    assert c.get("pub/nix-cache-info").status_code == 200  # binary cache: script untouched
    r = c.get("_api/v1/cache-config/pub")
    assert r.status_code == 429 and r.headers["retry-after"] == "2" and r.content == b"slow down"
    r = c.post("_api/v1/get-missing-paths", json={})
    assert r.status_code == 503 and r.content == b""
    assert c.get("_api/v1/cache-config/pub").status_code == 200
    assert srv.faults.status_script == []
    assert srv.count(status=429) == 1 and srv.count(method="POST", status=503) == 1


def test_fault_max_body_size(srv: AtticTestServer, c: httpx.Client, w: str) -> None:
    srv.faults.max_body_size = 100_000
    big = os.urandom(300_000)
    for body in (big, iter([big[:150_000], big[150_000:]])):
        r = put(c, nar_info("team", big), body, w)
        assert r.status_code == 413
        assert r.text.startswith("<html><head><title>413 Request Entity Too Large</title>")
        assert r.headers["content-type"] == "text/html"
        assert srv.requests[-1].error_kind == "fault:max_body_size"
    small = os.urandom(50_000)
    assert put(c, nar_info("team", small), small, w).status_code == 200
    assert put(c, nar_info("team", small), iter([small[:10], small[10:]]), w).status_code == 200
    assert srv.objects("team") and all(o.nar_size == 50_000 for o in srv.objects("team").values())


def test_fault_slow_body(srv: AtticTestServer, c: httpx.Client, objs: dict[str, str]) -> None:
    srv.faults.slow_body_delay = 0.2
    t0 = time.monotonic()
    r = c.get("pub/nix-cache-info")
    assert time.monotonic() - t0 >= 0.2 and r.status_code == 200


def test_set_down_refuses_then_returns_on_same_port(srv: AtticTestServer, c: httpx.Client) -> None:
    port = srv.port
    assert c.get("pub/nix-cache-info").status_code == 200  # a pooled keep-alive connection
    srv.set_down(True)
    with pytest.raises(httpx.ConnectError):
        c.get("pub/nix-cache-info")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    srv.set_down(False)
    assert srv.port == port and srv.url == f"http://127.0.0.1:{port}/"
    assert c.get("pub/nix-cache-info").status_code == 200


def test_request_records(srv: AtticTestServer, c: httpx.Client) -> None:
    c.get("pub/nix-cache-info")
    c.post("_api/v1/get-missing-paths", json={"cache": "pub", "store_path_hashes": []})
    assert srv.count() == 2
    assert srv.count(method="POST", path_prefix="/_api/", status=403) == 1
    rec = srv.requests[-1]
    assert (rec.method, rec.path, rec.status, rec.error_kind) == (
        "POST",
        "/_api/v1/get-missing-paths",
        403,
        "AccessError",
    )
    assert rec.body_bytes == len(b'{"cache":"pub","store_path_hashes":[]}')
    srv.clear_records()
    assert srv.count() == 0


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_prints_url_and_root_token() -> None:
    cmd = [sys.executable, "-m", "tests.attic_server", "--port", "0"]
    cmd += ["--cache", "team", "--cache", "pub:public", "--print-token"]
    with subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            token = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/")
            caches = jwt.decode(token, options={"verify_signature": False})[NAMESPACE]["caches"]
            assert caches == {"*": ALL_FLAGS}
            r = httpx.get(url + "_api/v1/cache-config/team", headers=auth(token))
            assert r.status_code == 200
            assert httpx.get(url + "pub/nix-cache-info").status_code == 200
            assert httpx.get(url + "_api/v1/cache-config/team").status_code == 401
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "cache team team:" in err and "cache pub pub:" in err


# ------------------------------------------------------------------------------------------------
# real Nix


@pytest.mark.nix
@pytest.mark.skipif(
    shutil.which("nix-build") is None, reason="needs Nix: install Nix with scripts/setup.sh"
)
def test_real_nix_substitutes_from_the_server(tmp_path: Path) -> None:
    nonce = uuid.uuid4().hex
    expr = (
        'builtins.derivation { name = "hookd-attic-test"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = ["-c" "echo {nonce} > $out"]; PATH = "/usr/bin:/bin"; }}'
    )
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, text=True).stdout  # noqa: E731
    out = run("nix-build", "--no-out-link", "-E", expr).strip()
    infos = json.loads(run("nix", "path-info", "--json", out))
    (pi,) = infos.values() if isinstance(infos, dict) else infos  # newer Nix: keyed by path
    nar = subprocess.run(["nix-store", "--dump", out], check=True, capture_output=True).stdout
    digest = sha256_digest(pi["narHash"])  # SRI from Nix
    assert digest == hashlib.sha256(nar).digest() and pi["narSize"] == len(nar)
    base = os.path.basename(out)

    with AtticTestServer() as srv, httpx.Client(base_url=srv.url) as c:
        srv.create_cache("team")  # private: Nix authenticates with Basic via netrc
        info = {
            "cache": "team",
            "store_path_hash": base.split("-", 1)[0],
            "store_path": out,
            "references": [os.path.basename(r) for r in pi.get("references", [])],
            "system": None,
            "deriver": None,
            "sigs": pi.get("signatures", []),
            "ca": pi.get("ca"),
            "nar_hash": "sha256:" + digest.hex(),
            "nar_size": len(nar),
        }
        r = put(c, info, nar, srv.make_token({"team": {"w": 1}}))
        assert r.status_code == 200, r.text
        netrc = tmp_path / "netrc"
        netrc.write_text(
            f"machine 127.0.0.1 login x password {srv.make_token({'team': {'r': 1}})}\n"
        )

        def substitute(root: str, key: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "nix-store", "--store", str(tmp_path / root), "-r", out,
                    "--option", "substituters", srv.url + "team",
                    "--option", "trusted-public-keys", key,
                    "--option", "narinfo-cache-negative-ttl", "0",
                    "--option", "netrc-file", str(netrc),
                ],
                check=False, capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        ok = substitute("chroot", srv.public_key("team"))
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "chroot" / out.lstrip("/")).read_text().strip() == nonce
        assert (
            srv.count(method="GET", path_prefix=f"/team/nar/{base.split('-', 1)[0]}", status=200)
            == 1
        )
        bad = substitute("chroot2", Keypair.generate("team").public_key)
        assert bad.returncode != 0
        assert not (tmp_path / "chroot2" / out.lstrip("/")).exists()


def test_concurrent_uploads_of_one_path_all_succeed(srv: AtticTestServer, w: str) -> None:
    nar = os.urandom(200_000)
    info = nar_info("team", nar)
    others = [(nar_info("team", x), x) for x in (os.urandom(70_000) for _ in range(6))]

    def one(item: tuple[dict[str, Any], bytes]) -> int:
        with httpx.Client(base_url=srv.url, timeout=20) as c:
            return put(c, item[0], iter([item[1][:1000], item[1][1000:]]), w).status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(one, [(info, nar)] * 6 + others))
    assert statuses == [200] * 12
    objs = srv.objects("team")
    assert len(objs) == 7
    assert srv.nar_bytes("team", info["store_path_hash"]) == nar
    assert all(srv.nar_bytes("team", i["store_path_hash"]) == x for i, x in others)
