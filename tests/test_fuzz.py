"""Property tests: the wire decoder and the config parser accept or refuse, and never crash.

Each property runs at least 10,000 examples; together they stay well under 30 s.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookd.config import (
    FILTER_KEYS,
    LOG_KEYS,
    NIX_KEYS,
    SERVER_KEYS,
    TOP_KEYS,
    UPLOAD_KEYS,
    AtticTargetConfig,
    Config,
    UploadConfig,
    parse_config,
)
from hookd.errors import ConfigError
from hookd.models import nix32_decode, nix32_encode
from hookd.protocol import (
    MAX_MESSAGE_BYTES,
    OPS,
    ProtocolError,
    decode_request,
    validate_store_path,
)

pytestmark = pytest.mark.fault

MANY = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

CODES = {
    "too-large",
    "bad-json",
    "bad-request",
    "bad-version",
    "bad-op",
    "bad-path",
    "outside-store",
    "bad-store-path",
    "bad-drv",
}

# -- building blocks --------------------------------------------------------------------------
#
# Hypothesis's composite strategies cost several ms per example, too slow for 10,000 examples
# of nested structures in a few seconds. So the big properties draw a byte string (cheap, and
# Hypothesis shrinks it well) and a tiny deterministic interpreter turns it into a structure:
# byte 0 always means the simplest choice, so shrinking the bytes shrinks the structure.

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
H = "0c5x8bq0sl1qkysfsfb2y8b2kgdhk0dd"
STORE_PATHS = [
    f"/nix/store/{H}-hello-2.12",
    f"/nix/store/{H}-hello-2.12.drv",
    f"/nix/store/{H}-.hidden",
    f"/nix/store/e{H[1:]}-x",
    f"/nix/store/{H[:31]}-x",
    f"/nix/store/{H}-x/bin",
    f"/nix/store//{H}-x",
    f"/nix/store/../{H}-x.drv",
    f"/nix/store/{H}-a\x00b",
    f"/tmp/{H}-x",
    f"nix/store/{H}-x",
    f"/nix/store/{H}-" + "n" * 212,
    "/nix/store",
    "",
]
INTERESTING = [
    *STORE_PATHS,
    *sorted(OPS),
    "",
    "PING",
    "auto",
    "json",
    "/abs/path",
    "rel/path",
    "https://cache.example/",
    "ftp://x",
    "-nixos-vm$",
    "(",
    "[z-a]",
    "a{4294967296}",
    "x" * 65,
    0,
    1,
    -1,
    2,
    1.0,
    0.5,
    True,
    False,
    None,
    float("nan"),
    float("inf"),
    10**5000,
]
CHARS = "ab/.-_+?=:{}[]()*\\ \x00\n\té€😀\ud800" + NIX32


class Bytes:
    """Reads choices from a byte string; past its end every choice is 0."""

    def __init__(self, data: bytes) -> None:
        self.data, self.i = data, 0

    def byte(self) -> int:
        b = self.data[self.i] if self.i < len(self.data) else 0
        self.i += 1
        return b

    def pick(self, options: list[Any]) -> Any:
        return options[self.byte() % len(options)]

    def text(self) -> str:
        return "".join(self.pick(list(CHARS)) for _ in range(self.byte() % 10))

    def value(self, depth: int = 0) -> Any:
        kind = self.byte() % (9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.pick(INTERESTING)
        if kind == 2:
            return bool(self.byte() & 1)
        if kind == 3:
            return int.from_bytes(
                bytes(self.byte() for _ in range(self.byte() % 9)), "big", signed=True
            )
        if kind == 4:
            return struct.unpack("<d", bytes(self.byte() for _ in range(8)))[0]
        if kind == 5:
            return self.text()
        if kind in (6, 7):
            return [self.value(depth + 1) for _ in range(self.byte() % 4)]
        return {self.key(): self.value(depth + 1) for _ in range(self.byte() % 4)}

    def key(self, known: list[str] | None = None) -> Any:
        r = self.byte() % 16
        if known and r < 14:
            return self.pick(known)
        return self.text() if r != 15 else self.pick([0, 1, True, None, "unknown_key"])


def request_from(data: bytes) -> Any:
    """Mostly request-shaped objects (so decode_request gets past the early checks)."""
    b = Bytes(data)
    if b.byte() % 8 == 7:
        return b.value()

    def mode() -> int:  # 0 (absent) or 1 (valid) half of the time; else 2 (odd path) or 3 (junk)
        n = b.byte()
        return n % 2 if n < 128 else n % 4

    message: dict[Any, Any] = {}
    if b.byte() % 16 != 15:
        message["v"] = 1 if b.byte() % 8 != 7 else b.value()
    if b.byte() % 16 != 15:
        n = b.byte()
        message["op"] = "enqueue" if n < 128 else b.pick(sorted(OPS)) if n % 8 != 7 else b.value()
    valid_drv, valid_out = STORE_PATHS[1], STORE_PATHS[0]
    choices: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "drv_path": (lambda: valid_drv, lambda: b.pick(STORE_PATHS)),
        "out_paths": (
            lambda: [valid_out] * (b.byte() % 3),
            lambda: [b.pick(STORE_PATHS) for _ in range(b.byte() % 4)],
        ),
        "source": (lambda: "hook", lambda: b.pick(["x" * 65, "", 5, None])),
        "paths": (lambda: [valid_out], lambda: [b.pick(STORE_PATHS)]),
        "timeout": (lambda: 30, lambda: b.pick([-1, "x", None])),
        "all": (lambda: True, lambda: b.pick([1, "yes"])),
        "extra": (lambda: "ignored", lambda: b.text()),
    }
    for name, (valid, odd) in choices.items():
        m = mode()
        if m == 1:
            message[name] = valid()
        elif m == 2:
            message[name] = odd()
        elif m == 3:
            message[name] = b.value()
    return message


def config_from(data: bytes) -> Any:
    """Mostly config-shaped documents: known keys at every level, values mostly valid.

    Byte 0 (what Hypothesis shrinks towards) picks the first, valid, option everywhere.
    """
    b = Bytes(data)
    if b.byte() % 16 == 15:
        return b.value()

    def either(*options: Any) -> Any:  # the first (valid) option half of the time
        n = b.byte()
        return options[0] if n < 128 else options[n % len(options)]

    def section(keys: set[str], special: dict[str, Any]) -> Any:
        if b.byte() % 16 == 15:
            return b.value()
        out: dict[Any, Any] = {}
        for _ in range(b.byte() % (len(keys) + 1)):
            k = b.key(sorted(keys))
            out[k] = special[k]() if k in special and b.byte() % 4 != 3 else b.value(1)
        return out

    def number() -> Any:
        return either(4, 1, 0.5, 900, 2, 10**6, 0, -1, float("nan"), float("inf"), True, "4", None)

    def server() -> Any:
        return section(
            SERVER_KEYS,
            {
                "endpoint": lambda: either(
                    "https://c.example", "http://c.example:8080/", "ftp://x", "x", 5
                ),
                "token_file": lambda: either("/run/secrets/t", "t", None),
            },
        )

    def target() -> Any:
        kind = b.byte() % 4
        if kind == 3:
            return b.value(1)
        if kind == 2:
            return {
                "store": either("file:///x", "s3://b", ""),
                "secret_key_file": either("/k", "k"),
            }
        t: dict[str, Any] = {"cache": either("team", "ci+1", "bad name", "-x", "c" * 51)}
        if kind == 0:
            t["server"] = either("fromattic", "prod", "default", "staging", "nope", 5)
        return t

    special: dict[str, Any] = {
        "state_dir": lambda: either("/var/lib/x", "/srv/y", "x", ""),
        "spool_dir": lambda: either("/var/spool/x", "x"),
        "socket": lambda: either("/run/x.sock", "x.sock"),
        "socket_group": lambda: either("nixbld", "", ["x"]),
        "allowed_users": lambda: either(["ci"], [], ["ci", 1001], "ci", [None]),
        "allowed_groups": lambda: either(["wheel"], [], {"a": 1}),
        # never an arbitrary absolute path: the parser would read whatever file it names
        "attic_config": lambda: either(
            "auto", False, None, "relative.toml", "/nonexistent/attic.toml", 0
        ),
        "servers": lambda: {
            either("prod", "staging", "default", "bad name", "", 3): server()
            for _ in range(b.byte() % 3)
        },
        "targets": lambda: [target() for _ in range(b.byte() % 4)],
        "filter": lambda: section(
            FILTER_KEYS,
            {
                "include": lambda: [b.pick(INTERESTING) for _ in range(b.byte() % 3)],
                "exclude": lambda: [b.pick(INTERESTING) for _ in range(b.byte() % 3)],
                "skip_drv": lambda: either(True, False, "no"),
            },
        ),
        "upload": lambda: section(UPLOAD_KEYS, dict.fromkeys(UPLOAD_KEYS, number)),
        "nix": lambda: section(
            NIX_KEYS,
            {
                "timeout": number,
                "dump_timeout": number,
                "gc_roots": lambda: either(True, False, 1),
                "bin_dir": lambda: either("/opt/nix/bin", "bin"),
            },
        ),
        "log": lambda: section(
            LOG_KEYS,
            {
                "format": lambda: either("auto", "json", "console", "xml"),
                "level": lambda: either("info", "debug", "trace"),
            },
        ),
    }
    doc: dict[Any, Any] = {}
    for _ in range(b.byte() % 10):
        key = b.key(sorted(TOP_KEYS))
        if key == "attic_config" or (key in special and b.byte() % 8 != 7):
            doc[key] = special[key]()
        else:
            doc[key] = b.value(1)
    return doc


def check_decoded(line: bytes) -> None:
    try:
        result = decode_request(line)
    except ProtocolError as e:
        assert e.code in CODES, e.code
        assert isinstance(e.message, str) and e.message
        return
    assert isinstance(result, dict)
    assert result["v"] == 1 and result["v"] is not True
    assert result["op"] in OPS
    assert len(line) <= MAX_MESSAGE_BYTES
    if result["op"] == "enqueue":
        paths = list(result.get("out_paths", []))
        if result.get("drv_path") is not None:
            assert result["drv_path"].endswith(".drv")
            paths.append(result["drv_path"])
        assert paths
        for p in paths:
            assert validate_store_path(p) == p


# -- decode_request ---------------------------------------------------------------------------


@MANY
@given(st.binary(max_size=300))
def test_decode_request_on_arbitrary_bytes(line: bytes) -> None:
    check_decoded(line)


@MANY
@given(st.binary(max_size=200), st.booleans())
def test_decode_request_on_arbitrary_json_objects(data: bytes, ascii_only: bool) -> None:
    obj = request_from(data)
    try:
        text = json.dumps(obj, ensure_ascii=ascii_only)
    except ValueError:  # ints over Python's str-conversion limit: not a message anyone can send
        return
    check_decoded(text.encode("utf-8", "surrogatepass"))


def test_request_generator_reaches_every_outcome() -> None:
    """Not vacuous: accepted requests of every op (enqueue included) and every refusal code."""
    accepted: set[str] = set()
    codes: set[str] = set()

    @settings(max_examples=3000, deadline=None, database=None, derandomize=True)
    @given(st.binary(max_size=200))
    def sample(data: bytes) -> None:
        try:
            line = json.dumps(request_from(data)).encode("utf-8", "surrogatepass")
        except ValueError:
            return
        try:
            accepted.add(decode_request(line)["op"])
        except ProtocolError as e:
            codes.add(e.code)

    sample()
    assert accepted == set(OPS)
    assert codes >= CODES - {"too-large", "bad-json"}, codes


# The same property with Hypothesis's own strategies: fewer examples, different shapes.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(STORE_PATHS),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
request_objects = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 0, 2, 1.0, True, "1", None])},
    optional={
        "op": st.sampled_from(sorted(OPS)) | json_values,
        "drv_path": st.sampled_from(STORE_PATHS) | json_values,
        "out_paths": st.lists(st.sampled_from(STORE_PATHS), max_size=3) | json_values,
        "source": st.text(max_size=70) | json_values,
    },
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_objects | json_values)
def test_decode_request_on_hypothesis_json(obj: Any) -> None:
    check_decoded(json.dumps(obj).encode("utf-8", "surrogatepass"))


def test_decode_request_on_hand_picked_nasties() -> None:
    for line in (
        b"[" * 100_000,
        b"{" * 100_000,
        b"1" * 5000,
        b'{"v":1,"op":[]}',
        b'{"v":1,"op":{}}',
        b"NaN",
    ):
        check_decoded(line)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=120) | st.builds(lambda s: "/nix/store/" + s, st.text(max_size=60)))
def test_validate_store_path_on_arbitrary_text(text: str) -> None:
    try:
        assert validate_store_path(text) == text
    except ProtocolError as e:
        assert e.code in {"bad-path", "outside-store", "bad-store-path"}
        return
    assert text.startswith("/nix/store/") and "/" not in text[len("/nix/store/") :]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80))
def test_nix32_round_trip(data: bytes) -> None:
    text = nix32_encode(data)
    assert set(text) <= set(NIX32)
    assert nix32_decode(text) == data


# -- parse_config -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No ambient HOOKD_* settings; attic's config.toml (auto) is a small valid file under tmp."""
    xdg = tmp_path_factory.mktemp("xdg")
    (xdg / "attic").mkdir()
    (xdg / "attic" / "config.toml").write_text(
        'default-server = "fromattic"\n[servers.fromattic]\nendpoint = "https://attic.example/"\n'
        'token = "t0k3n"\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HOOKD_CONFIG", "HOOKD_SOCKET", "HOOKD_STATE_DIR"):
            mp.delenv(var, raising=False)
        mp.setenv("XDG_CONFIG_HOME", str(xdg))
        yield xdg


def check_config(doc: Any) -> Config | None:
    if isinstance(doc, dict):  # the generators never point attic_config at a real file
        setting = doc.get("attic_config")
        assert not (
            isinstance(setting, str) and setting.startswith("/") and os.path.exists(setting)
        )
    try:
        config = parse_config(doc, source="fuzz.yaml")
    except ConfigError as e:
        message = str(e)
        assert message.startswith("error: fuzz.yaml: ") or "config.toml" in message, message
        assert "t0k3n" not in message
        return None
    assert isinstance(config, Config)
    assert config.state_dir.is_absolute() and config.socket.is_absolute()
    assert config.spool_dir.is_absolute()
    assert 0 <= config.upload.min_backoff <= config.upload.max_backoff
    assert isinstance(config.upload.concurrency, int) and config.upload.concurrency >= 1
    assert config.nix.timeout >= 1
    assert config.log_format in ("auto", "json", "console")
    assert config.log_level in ("debug", "info", "warning", "error")
    for t in config.targets:
        if isinstance(t, AtticTargetConfig):
            assert t.server in config.servers
    assert "t0k3n" not in repr(config)
    return config


@MANY
@given(st.binary(max_size=200))
def test_parse_config_accepts_or_refuses_and_never_crashes(data: bytes) -> None:
    check_config(config_from(data))


def test_config_generator_reaches_both_outcomes() -> None:
    """The generator is not vacuous under Hypothesis: valid configs (with targets) and many
    different errors both come out of it."""
    ok: list[Config] = []
    errors: set[str] = set()

    @settings(max_examples=4000, deadline=None, database=None, derandomize=True)
    @given(st.binary(max_size=200))
    def sample(data: bytes) -> None:
        try:
            ok.append(parse_config(config_from(data), source="fuzz.yaml"))
        except ConfigError as e:
            errors.add(str(e).split(": ", 2)[2][:20])

    sample()
    assert len(ok) > 100, len(ok)
    assert sum(bool(c.targets) for c in ok) > 10
    assert any(c.upload != UploadConfig() for c in ok) and any(c.servers for c in ok)
    assert len(errors) > 15, errors


yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([v for v in INTERESTING if not isinstance(v, int) or abs(v) < 10**100])
)
yaml_docs = st.recursive(
    yaml_scalars,
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(sorted(TOP_KEYS | UPLOAD_KEYS | FILTER_KEYS)) | st.text(max_size=6),
            c,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_docs)
def test_parse_config_on_yaml_text_round_trip(doc: Any) -> None:
    """Hypothesis-native documents, through real YAML text (what users write)."""
    if isinstance(doc, dict):
        doc.pop("attic_config", None)
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    check_config(yaml.safe_load(text))
