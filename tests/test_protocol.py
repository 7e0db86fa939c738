"""The socket wire format: store-path validation and request decoding, with stable error codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hookd import protocol
from hookd.protocol import (
    MAX_MESSAGE_BYTES,
    OPS,
    ProtocolError,
    decode_request,
    encode,
    error_reply,
    validate_store_path,
)

H = "0c5x8bq0sl1qkysfsfb2y8b2kgdhk0dd"  # 32 valid nix-base32 chars
P = f"/nix/store/{H}-hello-2.12"
DRV = f"/nix/store/{H}-hello-2.12.drv"


@pytest.fixture(autouse=True)
def _default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIX_STORE_DIR", raising=False)


def code_of(path: object, store: str | None = None) -> str:
    with pytest.raises(ProtocolError) as e:
        validate_store_path(path, store)
    assert e.value.message == str(e.value)
    return e.value.code


def req(**fields: Any) -> bytes:
    return json.dumps({"v": 1, **fields}).encode() + b"\n"


def decode_code(line: bytes) -> str:
    with pytest.raises(ProtocolError) as e:
        decode_request(line)
    assert e.value.message  # every refusal explains itself
    return e.value.code


# -- validate_store_path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        P,
        DRV,
        f"/nix/store/{H}-a",
        f"/nix/store/{H}-source",
        f"/nix/store/{H}-python3.11-tempora-5.0",
        f"/nix/store/{H}-foo+bar_baz?x=y",
        f"/nix/store/{H}-" + "n" * 211,
        f"/nix/store/{H}-0day",
        f"/nix/store/{H}--leading-dash",
        "/nix/store/00000000000000000000000000000000-x",
        "/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-x",
    ],
)
def test_valid_store_paths_are_returned_unchanged(path: str) -> None:
    assert validate_store_path(path) == path


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (f"nix/store/{H}-hello", "bad-path"),  # relative
        (f"./{H}-hello", "bad-path"),
        ("", "bad-path"),
        (f"/nix/store/../store/{H}-hello", "bad-path"),
        (f"/nix/store/{H}-hello/..", "bad-path"),
        (f"/nix/store/./{H}-hello", "bad-path"),
        (f"/nix//store/{H}-hello", "bad-path"),
        (f"/nix/store//{H}-hello", "bad-path"),
        (f"/nix/store/{H}-hel\x00lo", "bad-path"),
        (f"/nix/store/{H}-hello/bin/hello", "bad-path"),  # subpath
        (f"/nix/store/{H}-hello/", "bad-path"),
        (f"/tmp/{H}-hello", "outside-store"),
        (f"/nix/storex/{H}-hello", "outside-store"),
        (f"/nix/{H}-hello", "outside-store"),
        ("/nix/store", "outside-store"),
        ("/nix/store/", "bad-store-path"),
        (f"/nix/store/{H}", "bad-store-path"),  # no name
        (f"/nix/store/{H}-", "bad-store-path"),  # empty name
        (f"/nix/store/{H}-.hidden", "bad-store-path"),
        (f"/nix/store/{H}-..", "bad-store-path"),  # name starts with a dot
        (f"/nix/store/{H}-" + "n" * 212, "bad-store-path"),
        (f"/nix/store/{H[:-1]}-hello", "bad-store-path"),  # 31 chars
        (f"/nix/store/{H}0-hello", "bad-store-path"),  # 33 chars
        (f"/nix/store/{H.upper()}-hello", "bad-store-path"),
        (f"/nix/store/{H}-hel lo", "bad-store-path"),
        (f"/nix/store/{H}-hél", "bad-store-path"),
        (f"/nix/store/{H}-a/b", "bad-path"),
        (f"/nix/store/{H}-a:b", "bad-store-path"),
    ],
)
def test_invalid_store_paths_are_refused_with_a_code(path: str, code: str) -> None:
    assert code_of(path) == code


@pytest.mark.parametrize("bad", ["e", "o", "u", "t"])
def test_hash_letters_outside_nix_base32_are_refused(bad: str) -> None:
    h = bad + H[1:]
    assert code_of(f"/nix/store/{h}-hello") == "bad-store-path"
    # the same position with an allowed letter is fine, so the letter is the reason
    assert validate_store_path(f"/nix/store/a{H[1:]}-hello")


@pytest.mark.parametrize("value", [None, 1, b"/nix/store/x", ["/nix/store/x"], {"p": 1}])
def test_non_strings_are_refused(value: object) -> None:
    assert code_of(value) == "bad-path"


def test_name_length_limit_is_exactly_211() -> None:
    assert validate_store_path(f"/nix/store/{H}-" + "a" * 211)
    assert code_of(f"/nix/store/{H}-" + "a" * 212) == "bad-store-path"


def test_custom_store_directory_argument_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = f"/srv/nix/store/{H}-hello"
    assert validate_store_path(mine, "/srv/nix/store") == mine
    assert code_of(P, "/srv/nix/store") == "outside-store"
    monkeypatch.setenv("NIX_STORE_DIR", "/srv/nix/store/")  # trailing slash tolerated
    assert protocol.store_dir() == "/srv/nix/store"
    assert validate_store_path(mine) == mine
    assert code_of(P) == "outside-store"


def test_store_prefix_is_not_a_string_prefix_match(monkeypatch: pytest.MonkeyPatch) -> None:
    assert code_of(f"/nix/store-evil/{H}-x") == "outside-store"


# -- decode_request ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(OPS - {"enqueue"}))
def test_every_known_op_decodes(op: str) -> None:
    assert decode_request(req(op=op)) == {"v": 1, "op": op}


def test_enqueue_with_drv_and_outputs_decodes() -> None:
    line = req(op="enqueue", drv_path=DRV, out_paths=[P], source="hook")
    assert decode_request(line) == {
        "v": 1,
        "op": "enqueue",
        "drv_path": DRV,
        "out_paths": [P],
        "source": "hook",
    }


def test_enqueue_with_only_drv_or_only_outputs_decodes() -> None:
    assert decode_request(req(op="enqueue", drv_path=DRV))["drv_path"] == DRV
    assert decode_request(req(op="enqueue", out_paths=[P, DRV]))["out_paths"] == [P, DRV]


def test_request_without_trailing_newline_and_with_whitespace_decodes() -> None:
    assert decode_request(b'  {"v": 1, "op": "ping"}  ')["op"] == "ping"


def test_exactly_max_size_is_allowed_one_more_byte_is_too_large() -> None:
    head = b'{"v":1,"op":"ping","pad":"'
    tail = b'"}'
    fill = MAX_MESSAGE_BYTES - len(head) - len(tail)
    line = head + b"x" * fill + tail
    assert len(line) == MAX_MESSAGE_BYTES
    assert decode_request(line)["op"] == "ping"
    assert decode_code(head + b"x" * (fill + 1) + tail) == "too-large"


def test_oversized_garbage_is_too_large_before_parsing() -> None:
    assert decode_code(b"\xff" * (MAX_MESSAGE_BYTES + 1)) == "too-large"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\n",
        b"{",
        b"{'v': 1}",
        b'{"v":1,"op":"ping"',
        b"\xff\xfe\xfd",
        b"\x00",
        b'{"v":1,"op":"ping"}{"v":1}',
        b"[" * 200_000,  # nesting deeper than the JSON parser's recursion limit
        b"1" * 5000,  # an integer beyond Python's int-digit limit
        b'{"v": 1' + b"0" * 5000 + b"}",
    ],
)
def test_bad_json_is_refused(line: bytes) -> None:
    assert decode_code(line) == "bad-json"


@pytest.mark.parametrize("line", [b"[]", b"[1]", b'"ping"', b"1", b"null", b"true"])
def test_non_object_is_bad_request(line: bytes) -> None:
    assert decode_code(line) == "bad-request"


@pytest.mark.parametrize("version", [None, 0, 2, "1", True, [1], {"v": 1}])
def test_wrong_or_missing_version_is_refused(version: object) -> None:
    message: dict[str, Any] = {"op": "ping"}
    if version is not None:
        message["v"] = version
    assert decode_code(json.dumps(message).encode()) == "bad-version"


@pytest.mark.parametrize("op", [None, "", "PING", "shutdown", 1, ["ping"], {"x": 1}, True])
def test_unknown_op_is_refused(op: object) -> None:
    message: dict[str, Any] = {"v": 1}
    if op is not None:
        message["op"] = op
    with pytest.raises(ProtocolError) as e:
        decode_request(json.dumps(message).encode())
    assert e.value.code == "bad-op"
    assert "enqueue" in e.value.message  # lists the known ops


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"out_paths": []},
        {"drv_path": None, "out_paths": []},
    ],
)
def test_enqueue_without_paths_is_bad_request(fields: dict[str, Any]) -> None:
    assert decode_code(req(op="enqueue", **fields)) == "bad-request"


@pytest.mark.parametrize("outs", ["/nix/store/x", {"a": P}, 3, P])
def test_enqueue_out_paths_must_be_a_list(outs: object) -> None:
    assert decode_code(req(op="enqueue", out_paths=outs)) == "bad-request"


def test_enqueue_drv_path_must_end_in_drv() -> None:
    assert decode_code(req(op="enqueue", drv_path=P)) == "bad-drv"
    assert decode_code(req(op="enqueue", drv_path=P, out_paths=[P])) == "bad-drv"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"drv_path": "relative.drv"}, "bad-path"),
        ({"drv_path": f"/tmp/{H}-x.drv"}, "outside-store"),
        ({"drv_path": 5}, "bad-path"),
        ({"out_paths": [P, "/etc/passwd"]}, "outside-store"),
        ({"out_paths": [P, f"/nix/store/{H}-x/../../etc"]}, "bad-path"),
        ({"out_paths": [f"/nix/store/{H}-x/bin"]}, "bad-path"),
        ({"out_paths": [f"/nix/store/e{H[1:]}-x"]}, "bad-store-path"),
        ({"out_paths": [None]}, "bad-path"),
    ],
)
def test_enqueue_validates_every_path(fields: dict[str, Any], code: str) -> None:
    assert decode_code(req(op="enqueue", **fields)) == code


@pytest.mark.parametrize("source", [5, None, ["hook"], "x" * 65])
def test_enqueue_source_must_be_a_short_string(source: object) -> None:
    assert decode_code(req(op="enqueue", out_paths=[P], source=source)) == "bad-request"
    assert decode_request(req(op="enqueue", out_paths=[P], source="x" * 64))["source"] == "x" * 64


def test_encode_adds_version_and_one_newline_and_round_trips() -> None:
    line = encode({"op": "enqueue", "out_paths": [P]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == {"v": 1, "op": "enqueue", "out_paths": [P]}


def test_error_reply_shape() -> None:
    reply = json.loads(error_reply("bad-op", "nope"))
    assert reply == {"v": 1, "ok": False, "error": "bad-op", "message": "nope"}


def test_protocol_error_is_a_value_error_with_code() -> None:
    e = ProtocolError("bad-json", "text")
    assert isinstance(e, ValueError)
    assert (e.code, e.message, str(e)) == ("bad-json", "text", "text")
