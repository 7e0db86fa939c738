"""YAML config → typed config: defaults, every key, env overrides, attic's config.toml, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookd import config as cfgmod
from hookd.config import (
    FILTER_KEYS,
    LOG_KEYS,
    METRICS_KEYS,
    NIX_KEYS,
    SERVER_KEYS,
    TOP_KEYS,
    UPLOAD_KEYS,
    AtticTargetConfig,
    Config,
    FilterConfig,
    MetricsConfig,
    NixConfig,
    ServerConfig,
    StoreTargetConfig,
    UploadConfig,
    load_config,
    parse_config,
)
from hookd.errors import ConfigError

HOOKD = str(Path(sys.executable).parent / "hookd")
TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.TOP-SECRET-SIGNATURE"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ambient HOOKD_*/XDG_* settings; attic's config.toml is looked for under tmp only."""
    for var in (
        "HOOKD_CONFIG",
        "HOOKD_SOCKET",
        "HOOKD_STATE_DIR",
        "XDG_RUNTIME_DIR",
        "XDG_STATE_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    xdg = tmp_path / "xdg-config"
    xdg.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    return xdg


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(raw: object, source: str = "/etc/hookd/test.yaml") -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source=source)
    message = str(e.value)
    assert message.startswith(f"error: {source}: "), message  # always names the file
    return message


def assert_key_error(raw: object, key: str, *expected: str) -> str:
    message = error_of(raw)
    assert f"'{key}'" in message, message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    return message


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_for_an_empty_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cfgmod, "is_root", lambda: False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    raws: tuple[object, ...] = ({}, None)
    for raw in raws:
        c = parse_config(raw)
        state = tmp_path / "home" / ".local" / "state" / "hookd"
        assert c.state_dir == state
        assert c.spool_dir == state / "spool"
        assert c.socket == state / "hookd.sock"
        assert c.db_path == state / "queue.sqlite"
        assert c.default_cache_dir == state / "cache"
        assert c.default_key_file == state / "cache-key.sec"
        assert c.default_public_key_file == state / "cache-key.pub"
        assert c.path is None
        assert c.socket_group is None
        assert c.allowed_users == () and c.allowed_groups == ()
        assert c.servers == {} and c.targets == ()
        assert c.filter == FilterConfig()
        assert c.filter.skip_drv and c.filter.skip_sources and not c.filter.skip_fixed_output
        assert c.upload == UploadConfig()
        assert (c.upload.concurrency, c.upload.min_backoff, c.upload.max_backoff) == (4, 1.0, 900.0)
        assert c.nix == NixConfig()
        assert (c.nix.bin_dir, c.nix.timeout, c.nix.dump_timeout, c.nix.gc_roots) == (
            None,
            120.0,
            3600.0,
            True,
        )
        assert (c.log_format, c.log_level) == ("auto", "info")


def test_xdg_locations_for_a_normal_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cfgmod, "is_root", lambda: False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    c = parse_config({})
    assert c.state_dir == tmp_path / "state" / "hookd"
    assert c.socket == tmp_path / "run" / "hookd" / "hookd.sock"
    assert (
        cfgmod.default_config_path()
        == Path(os.environ["XDG_CONFIG_HOME"]) / "hookd" / "config.yaml"
    )


def test_root_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfgmod, "is_root", lambda: True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/0")  # ignored for root
    c = parse_config({})
    assert c.state_dir == Path("/var/lib/hookd")
    assert c.spool_dir == Path("/var/lib/hookd/spool")
    assert c.socket == Path("/run/hookd/hookd.sock")
    assert cfgmod.default_config_path() == Path("/etc/hookd/config.yaml")


def test_missing_default_file_means_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cfgmod, "default_config_path", lambda: tmp_path / "absent.yaml")
    c = load_config()
    assert c.path is None and c.targets == ()
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found"):
        load_config(required=True)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    p = write(tmp_path / "c.yaml", "# nothing here\n")
    c = load_config(p)
    assert c.path == p and c.upload == UploadConfig()


# -- every key --------------------------------------------------------------------------------

FULL = """\
socket: /run/hookd/test.sock
socket_group: nixbld
state_dir: /var/lib/hookd-test
spool_dir: /var/spool/hookd-test
allowed_users: [ci, 1001]
allowed_groups: [wheel]
attic_config: false
servers:
  prod:
    endpoint: "https://cache.example.com"
    token_file: /run/secrets/attic-prod
    allowed_origins: ["https://api.cache.example.com"]
    ca_file: /etc/ssl/private-ca.pem
    client_cert: /run/secrets/hookd.crt
    client_key: /run/secrets/hookd.key
  staging: {endpoint: "http://10.0.0.2:8080/"}
ca_file: /etc/ssl/certs/ca-certificates.crt
targets:
  - {server: prod, cache: team}
  - {server: staging, cache: "ci_cache+1"}
  - {store: "file:///var/cache/nix-mirror?compression=zstd", secret_key_file: /run/secrets/mirror-key}
  - {store: "s3://bucket?region=eu-west-1"}
filter:
  skip_drv: false
  skip_sources: false
  skip_fixed_output: true
  include: ["^/nix/store/[a-z0-9]+-my"]
  exclude: ["-nixos-vm$", "\\\\.iso$"]
upload:
  concurrency: 8
  min_backoff: 0.5
  max_backoff: 60
  retry_attempts: 2
  batch_size: 64
  request_timeout: 30.5
  breaker_threshold: 3
  breaker_cooldown: 10
  ignore_upstream: true
  stop_timeout: 5
  batch_window: 0.05
  remember_pushed: 60
  max_timeouts: 5
nix:
  bin_dir: /opt/nix/bin
  timeout: 30
  dump_timeout: 600
  gc_roots: false
log: {format: json, level: debug}
nice: 5
metrics: {listen: "[::1]:9100", textfile: /var/lib/node-exporter/hookd.prom, textfile_interval: 30}
"""


def test_every_key_is_parsed(tmp_path: Path) -> None:
    p = write(tmp_path / "full.yaml", FULL)
    c = load_config(p)
    assert isinstance(c, Config)
    assert c.path == p
    assert c.socket == Path("/run/hookd/test.sock")
    assert c.socket_group == "nixbld"
    assert c.state_dir == Path("/var/lib/hookd-test")
    assert c.spool_dir == Path("/var/spool/hookd-test")
    assert c.db_path == Path("/var/lib/hookd-test/queue.sqlite")
    assert c.allowed_users == ("ci", "1001")
    assert c.allowed_groups == ("wheel",)
    system_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    assert c.servers == {
        "prod": ServerConfig(
            "prod",
            "https://cache.example.com/",
            Path("/run/secrets/attic-prod"),
            # normalised like the client's origins: default port explicit
            allowed_origins=("https://api.cache.example.com:443",),
            ca_file=Path("/etc/ssl/private-ca.pem"),
            client_cert=Path("/run/secrets/hookd.crt"),
            client_key=Path("/run/secrets/hookd.key"),
        ),
        "staging": ServerConfig("staging", "http://10.0.0.2:8080/", None, ca_file=system_ca),
    }
    assert c.targets == (
        AtticTargetConfig("prod", "team"),
        AtticTargetConfig("staging", "ci_cache+1"),
        StoreTargetConfig(
            "file:///var/cache/nix-mirror?compression=zstd", Path("/run/secrets/mirror-key")
        ),
        StoreTargetConfig("s3://bucket?region=eu-west-1", None),
    )
    assert [t.id for t in c.targets] == [
        "attic:prod/team",
        "attic:staging/ci_cache+1",
        "store:file:///var/cache/nix-mirror?compression=zstd",
        "store:s3://bucket?region=eu-west-1",
    ]
    assert c.filter == FilterConfig(
        include=("^/nix/store/[a-z0-9]+-my",),
        exclude=("-nixos-vm$", r"\.iso$"),
        skip_drv=False,
        skip_sources=False,
        skip_fixed_output=True,
    )
    assert c.upload == UploadConfig(
        concurrency=8,
        min_backoff=0.5,
        max_backoff=60,
        retry_attempts=2,
        batch_size=64,
        request_timeout=30.5,
        breaker_threshold=3,
        breaker_cooldown=10,
        ignore_upstream=True,
        stop_timeout=5,
        batch_window=0.05,
        remember_pushed=60,
        max_timeouts=5,
    )
    assert c.nix == NixConfig(
        bin_dir=Path("/opt/nix/bin"), timeout=30, dump_timeout=600, gc_roots=False
    )
    assert (c.log_format, c.log_level) == ("json", "debug")
    assert c.nice == 5
    prod, staging = c.servers["prod"], c.servers["staging"]
    assert (prod.ca_file, prod.client_cert, prod.client_key) == (
        Path("/etc/ssl/private-ca.pem"),
        Path("/run/secrets/hookd.crt"),
        Path("/run/secrets/hookd.key"),
    )
    # the top-level ca_file is every other server's bundle
    assert staging.ca_file == Path("/etc/ssl/certs/ca-certificates.crt")
    assert staging.client_cert is None
    assert c.metrics == MetricsConfig(
        listen=("::1", 9100),
        textfile=Path("/var/lib/node-exporter/hookd.prom"),
        textfile_interval=30,
    )


def test_full_example_uses_every_known_key() -> None:
    """FULL above really exercises every key the parser knows (so the test above is complete)."""
    raw = yaml.safe_load(FULL)
    assert set(raw) == TOP_KEYS
    assert set(raw["filter"]) == FILTER_KEYS
    assert set(raw["upload"]) == UPLOAD_KEYS
    assert set(raw["nix"]) == NIX_KEYS
    assert set(raw["log"]) == LOG_KEYS
    assert set(raw["servers"]["prod"]) == SERVER_KEYS
    assert set(raw["metrics"]) == METRICS_KEYS


@pytest.mark.parametrize(
    ("listen", "expected"),
    [(9469, ("127.0.0.1", 9469)), ("0.0.0.0:9469", ("0.0.0.0", 9469)), ("[::]:1", ("::", 1))],
)
def test_metrics_listen_is_loopback_unless_a_host_is_given(
    listen: object, expected: tuple[str, int]
) -> None:
    c = parse_config({"attic_config": False, "metrics": {"listen": listen}})
    assert c.metrics.listen == expected
    assert parse_config({"attic_config": False}).metrics == MetricsConfig()  # off by default


@pytest.mark.parametrize("listen", ["localhost", "host:0", ":9469x", "h:70000", ":80"])
def test_bad_metrics_listen_names_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen.*HOST:PORT"):
        parse_config({"attic_config": False, "metrics": {"listen": listen}})


def test_client_cert_without_key_names_the_missing_key() -> None:
    server = {"endpoint": "https://x/", "client_cert": "/run/c.pem"}
    with pytest.raises(ConfigError, match=r"servers\.x\.client_key.*together"):
        parse_config({"attic_config": False, "servers": {"x": server}})


def test_readme_example_parses() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    c = parse_config(yaml.safe_load(block) | {"attic_config": False})
    assert c.targets[0] == AtticTargetConfig("prod", "team")
    assert c.filter.exclude == ("-nixos-vm$",)


def test_state_dir_moves_spool_but_not_an_explicit_socket() -> None:
    c = parse_config({"state_dir": "/srv/h", "socket": "/run/h.sock", "attic_config": False})
    assert c.spool_dir == Path("/srv/h/spool") and c.socket == Path("/run/h.sock")


def test_target_without_server_uses_the_only_server() -> None:
    c = parse_config(
        {
            "attic_config": False,
            "servers": {"only": {"endpoint": "https://x/"}},
            "targets": [{"cache": "c"}],
        }
    )
    assert c.targets == (AtticTargetConfig("only", "c"),)


def test_integer_values_are_accepted_where_numbers_are_expected() -> None:
    c = parse_config({"attic_config": False, "upload": {"max_backoff": 60, "min_backoff": 0}})
    assert c.upload.max_backoff == 60 and c.upload.min_backoff == 0


# -- environment ------------------------------------------------------------------------------


def test_hookd_config_env_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = write(tmp_path / "env.yaml", {"state_dir": "/srv/from-env", "attic_config": False})
    monkeypatch.setenv("HOOKD_CONFIG", str(p))
    c = load_config()
    assert c.path == p and c.state_dir == Path("/srv/from-env")
    assert cfgmod.default_config_path() == p


def test_explicit_path_beats_hookd_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", {"state_dir": "/srv/a", "attic_config": False})
    b = write(tmp_path / "b.yaml", {"state_dir": "/srv/b", "attic_config": False})
    monkeypatch.setenv("HOOKD_CONFIG", str(a))
    assert load_config(b).state_dir == Path("/srv/b")


def test_missing_hookd_config_file_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOOKD_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config()


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gone\.yaml: config file not found"):
        load_config(tmp_path / "gone.yaml")


def test_empty_hookd_config_means_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOOKD_CONFIG", "")
    monkeypatch.setattr(cfgmod, "is_root", lambda: False)
    assert (
        cfgmod.default_config_path()
        == Path(os.environ["XDG_CONFIG_HOME"]) / "hookd" / "config.yaml"
    )
    assert load_config().path is None  # the default file does not exist: defaults, no error


def test_hookd_socket_overrides_the_config_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOKD_SOCKET", "/tmp/env.sock")
    assert parse_config({"socket": "/run/conf.sock"}).socket == Path("/tmp/env.sock")
    assert parse_config({}).socket == Path("/tmp/env.sock")
    monkeypatch.setenv("HOOKD_SOCKET", "")  # empty means unset
    assert parse_config({"socket": "/run/conf.sock"}).socket == Path("/run/conf.sock")


def test_hookd_state_dir_sets_the_default_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfgmod, "is_root", lambda: False)
    monkeypatch.setenv("HOOKD_STATE_DIR", "/srv/env-state")
    c = parse_config({"attic_config": False})
    assert c.state_dir == Path("/srv/env-state")
    assert c.spool_dir == Path("/srv/env-state/spool")
    assert c.db_path == Path("/srv/env-state/queue.sqlite")
    assert c.socket == Path("/srv/env-state/hookd.sock")  # no XDG_RUNTIME_DIR: next to the state
    monkeypatch.setattr(cfgmod, "is_root", lambda: True)
    assert parse_config({}).state_dir == Path("/srv/env-state")  # for root too
    # a state_dir written in the config file is the more specific setting
    assert parse_config({"state_dir": "/srv/file"}).state_dir == Path("/srv/file")


# -- broken YAML ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("state_dir: /x\nservers:\n  prod: {endpoint: https://x/\n", 4),  # unclosed flow mapping
        ("a: 1\nb: 2\n  c: 3\n", 3),  # bad indentation
        ("upload:\n\tconcurrency: 3\n", 2),  # a tab
        ("x: [1, 2\ny: 3\n", 2),
        ('socket: "unterminated\n', 2),
    ],
)
def test_broken_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    p = write(tmp_path / "broken.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    message = str(e.value)
    assert message.startswith(f"error: {p}: not valid YAML")
    assert f"line {line}," in message, message


def test_yaml_with_an_unhashable_key_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path / "k.yaml", "? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 1"):
        load_config(p)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"socket_group: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not valid UTF-8"):
        load_config(p)


def test_absurdly_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path / "deep.yaml", "allowed_users: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml"):
        load_config(p)


def test_huge_decimal_integer_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path / "big.yaml", "upload:\n  concurrency: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: not valid YAML"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("upload:\n  concurrency: -0x" + "f" * 5000 + "\n", "upload.concurrency"),
        ("allowed_users: [0x" + "f" * 5000 + "]\n", "allowed_users"),
        ("? 0x" + "f" * 5000 + "\n: 1\n", None),  # explicit keys may exceed 1024 chars
        (
            "servers:\n  ? 0x" + "f" * 5000 + "\n  : {endpoint: https://x/}\n",
            "servers.<int too large to show>",
        ),
    ],
)
def test_huge_hex_integers_are_config_errors_with_a_short_message(
    tmp_path: Path, text: str, key: str | None
) -> None:
    p = write(tmp_path / "hex.yaml", text + "attic_config: false\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    message = str(e.value)
    assert str(p) in message and len(message) < 600
    if key:
        assert f"'{key}'" in message
    else:
        assert "unknown key(s)" in message


def test_a_directory_as_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    p = write(tmp_path / "list.yaml", "- socket: /x\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: key '': expected a mapping, got 'list'"):
        load_config(p)
    error_of("just a string")


# -- unknown keys -----------------------------------------------------------------------------


def known_list(message: str) -> set[str]:
    return set(message.rsplit("known keys: ", 1)[1].split(", "))


def test_unknown_top_level_key_names_it_and_lists_known_keys() -> None:
    message = error_of({"sockets": "/x", "attic_config": False})
    assert "unknown key(s) sockets in the top level" in message
    assert known_list(message) == TOP_KEYS


def test_several_unknown_keys_are_all_named() -> None:
    message = error_of({"zeta": 1, "alpha": 2})
    assert "alpha, zeta" in message


@pytest.mark.parametrize(
    ("raw", "where", "unknown", "known"),
    [
        ({"upload": {"concurency": 4}}, "'upload'", "concurency", UPLOAD_KEYS),
        ({"filter": {"exclude_regex": []}}, "'filter'", "exclude_regex", FILTER_KEYS),
        ({"nix": {"bin-dir": "/x"}}, "'nix'", "bin-dir", NIX_KEYS),
        ({"log": {"fmt": "json"}}, "'log'", "fmt", LOG_KEYS),
        (
            {"servers": {"prod": {"endpoint": "https://x/", "token": "abc"}}},
            "'servers.prod'",
            "token",
            SERVER_KEYS,
        ),
        (
            {
                "servers": {"p": {"endpoint": "https://x/"}},
                "targets": [{"server": "p", "cache": "c", "x": 1}],
            },
            "'targets[0]'",
            "x",
            {"server", "cache", "public_key"},
        ),
        (
            {"targets": [{"store": "file:///x", "key": "/k"}]},
            "'targets[0]'",
            "key",
            {"store", "secret_key_file"},
        ),
    ],
)
def test_unknown_nested_key_names_it_where_and_lists_known_keys(
    raw: dict[str, Any], where: str, unknown: str, known: set[str]
) -> None:
    message = error_of({"attic_config": False, **raw})
    assert f"unknown key(s) {unknown} in {where}" in message
    assert known_list(message) == known


# -- wrong types and values -------------------------------------------------------------------

SERVER = {"prod": {"endpoint": "https://cache.example.com/"}}


@pytest.mark.parametrize(
    ("raw", "key", "expected"),
    [
        ({"upload": {"concurrency": -1}}, "upload.concurrency", "an integer >= 1"),
        ({"upload": {"concurrency": 0}}, "upload.concurrency", "an integer >= 1"),
        ({"upload": {"concurrency": 2.5}}, "upload.concurrency", "an integer >= 1"),
        ({"upload": {"concurrency": "4"}}, "upload.concurrency", "an integer >= 1"),
        ({"upload": {"concurrency": True}}, "upload.concurrency", "an integer >= 1"),
        ({"upload": {"batch_size": 0}}, "upload.batch_size", "an integer >= 1"),
        ({"upload": {"max_backoff": -0.5}}, "upload.max_backoff", "a number >= 0"),
        ({"upload": {"max_backoff": float("nan")}}, "upload.max_backoff", "a number >= 0"),
        ({"upload": {"request_timeout": float("inf")}}, "upload.request_timeout", "a number >= 0"),
        ({"upload": {"request_timeout": None}}, "upload.request_timeout", "a number >= 0"),
        (
            {"upload": {"min_backoff": 10, "max_backoff": 5}},
            "upload.min_backoff",
            "upload.max_backoff",
        ),
        ({"upload": {"ignore_upstream": "yes"}}, "upload.ignore_upstream", "true or false"),
        ({"upload": [1]}, "upload", "a mapping"),
        ({"nix": {"timeout": 0}}, "nix.timeout", "a number >= 1"),
        ({"nix": {"dump_timeout": "1h"}}, "nix.dump_timeout", "a number >= 1"),
        ({"nix": {"gc_roots": 1}}, "nix.gc_roots", "true or false"),
        ({"nix": {"bin_dir": "bin"}}, "nix.bin_dir", "an absolute path"),
        ({"filter": {"include": ["(unclosed"]}}, "filter.include[0]", "a valid regular expression"),
        (
            {"filter": {"exclude": ["ok", "[z-a]"]}},
            "filter.exclude[1]",
            "a valid regular expression",
        ),
        (
            {"filter": {"exclude": ["a{4294967296}"]}},
            "filter.exclude[0]",
            "a valid regular expression",
        ),
        ({"filter": {"exclude": "-vm$"}}, "filter.exclude", "a list of strings"),
        ({"filter": {"include": [{"re": "x"}]}}, "filter.include", "a list of strings"),
        ({"filter": {"skip_drv": "no"}}, "filter.skip_drv", "true or false"),
        ({"filter": {"skip_fixed_output": None}}, "filter.skip_fixed_output", "true or false"),
        ({"state_dir": "var/lib/hookd"}, "state_dir", "an absolute path"),
        ({"state_dir": ""}, "state_dir", "a non-empty string"),
        ({"state_dir": 5}, "state_dir", "a non-empty string"),
        ({"socket": "hookd.sock"}, "socket", "an absolute path"),
        ({"spool_dir": "~/spool"}, "spool_dir", "an absolute path"),
        ({"socket_group": ["a"]}, "socket_group", "a non-empty string"),
        ({"allowed_users": "ci"}, "allowed_users", "a list of strings"),
        ({"allowed_groups": [None]}, "allowed_groups", "a list of strings"),
        ({"servers": ["prod"]}, "servers", "a mapping"),
        ({"servers": 5}, "servers", "a mapping"),
        ({"servers": {"prod": "https://x/"}}, "servers.prod", "a mapping"),
        (
            {"servers": {"bad name": {"endpoint": "https://x/"}}},
            "servers.bad name",
            "a server name",
        ),
        ({"servers": {"prod": {}}}, "servers.prod.endpoint", "the server's URL"),
        (
            {"servers": {"prod": {"endpoint": "cache.example.com"}}},
            "servers.prod.endpoint",
            "http:// or https://",
        ),
        (
            {"servers": {"prod": {"endpoint": "ftp://x/"}}},
            "servers.prod.endpoint",
            "http:// or https://",
        ),
        ({"servers": {"prod": {"endpoint": 8080}}}, "servers.prod.endpoint", "a non-empty string"),
        (
            {"servers": {"prod": {"endpoint": "https://x/", "token_file": "secrets/t"}}},
            "servers.prod.token_file",
            "an absolute path",
        ),
        (
            {"servers": {"prod": {"endpoint": "https://x/", "allowed_origins": ["x.org"]}}},
            "servers.prod.allowed_origins[0]",
            "an origin such as",
        ),
        (
            {"servers": {"prod": {"endpoint": "https://x/", "allowed_origins": ["https://x/a"]}}},
            "servers.prod.allowed_origins[0]",
            "an origin such as",
        ),
        ({"targets": {"server": "prod"}}, "targets", "a list of"),
        ({"targets": 5}, "targets", "a list of"),
        ({"targets": "prod"}, "targets", "a list of"),
        ({"servers": SERVER, "targets": ["prod/team"]}, "targets[0]", "a mapping"),
        (
            {"servers": SERVER, "targets": [{"cache": "team", "public_key": "team:c2hvcnQ="}]},
            "targets[0].public_key",
            "a Nix public key NAME:BASE64 (32 bytes)",
        ),
        (
            {"servers": SERVER, "targets": [{"server": "prod"}]},
            "targets[0]",
            "{server: NAME, cache: NAME}",
        ),
        (
            {"servers": SERVER, "targets": [{"server": "prod", "cache": "bad name"}]},
            "targets[0].cache",
            "Attic cache name",
        ),
        (
            {"servers": SERVER, "targets": [{"server": "prod", "cache": "-x"}]},
            "targets[0].cache",
            "Attic cache name",
        ),
        (
            {"servers": SERVER, "targets": [{"server": "prod", "cache": "c" * 51}]},
            "targets[0].cache",
            "Attic cache name",
        ),
        (
            {"servers": SERVER, "targets": [{"server": "prod", "cache": 7}]},
            "targets[0].cache",
            "a non-empty string",
        ),
        (
            {"servers": SERVER, "targets": [{"server": "nope", "cache": "c"}]},
            "targets[0].server",
            "configured servers (prod)",
        ),
        (
            {"targets": [{"server": "nope", "cache": "c"}]},
            "targets[0].server",
            "configured servers (none)",
        ),
        ({"targets": [{"cache": "c"}]}, "targets[0].server", "configured servers (none)"),
        ({"targets": [{"store": ""}]}, "targets[0].store", "a non-empty string"),
        (
            {"targets": [{"store": "file:///x", "secret_key_file": "k"}]},
            "targets[0].secret_key_file",
            "an absolute path",
        ),
        ({"log": {"format": "xml"}}, "log.format", "one of auto, json, console"),
        ({"log": {"format": ["json"]}}, "log.format", "one of auto, json, console"),
        ({"log": {"level": "trace"}}, "log.level", "one of debug, info, warning, error"),
        ({"log": "json"}, "log", "a mapping"),
        ({"attic_config": "attic.toml"}, "attic_config", "an absolute path"),
        (
            {"attic_config": "/nonexistent/attic.toml"},
            "attic_config",
            "an existing attic config.toml",
        ),
    ],
)
def test_wrong_value_names_the_dotted_key_and_what_is_expected(
    raw: dict[str, Any], key: str, expected: str
) -> None:
    assert_key_error({"attic_config": False, **raw}, key, "expected", expected)


def test_error_shows_the_offending_value() -> None:
    message = assert_key_error({"upload": {"concurrency": -3}}, "upload.concurrency")
    assert message.endswith("got -3")
    message = assert_key_error({"log": {"format": "xml"}}, "log.format")
    assert message.endswith("got 'xml'")


def test_target_without_server_is_ambiguous_with_two_servers() -> None:
    raw = {
        "attic_config": False,
        "servers": {"a": {"endpoint": "https://a/"}, "b": {"endpoint": "https://b/"}},
        "targets": [{"cache": "c"}],
    }
    assert_key_error(raw, "targets[0].server", "configured servers (a, b)")


def test_cache_name_limits() -> None:
    for ok in ("a", "A9", "team-cache_1+x", "c" * 50):
        raw = {
            "attic_config": False,
            "servers": SERVER,
            "targets": [{"server": "prod", "cache": ok}],
        }
        assert parse_config(raw).targets[0] == AtticTargetConfig("prod", ok)


# -- attic's own config.toml ------------------------------------------------------------------

ATTIC_TOML = f"""\
default-server = "main"

[servers.main]
endpoint = "https://attic.example.org"
token = "{TOKEN}"

[servers.other]
endpoint = "http://localhost:8080/"
token-file = "/run/secrets/attic-other"
"""


def test_attic_config_auto_reads_xdg_config_home(clean_env: Path) -> None:
    write(clean_env / "attic" / "config.toml", ATTIC_TOML)
    c = parse_config({"targets": [{"server": "other", "cache": "x"}, {"cache": "y"}]})
    main = c.servers["main"]
    assert (main.name, main.endpoint, main.token, main.token_file) == (
        "main",
        "https://attic.example.org/",
        TOKEN,
        None,
    )
    other = c.servers["other"]
    assert (other.endpoint, other.token, other.token_file) == (
        "http://localhost:8080/",
        None,
        Path("/run/secrets/attic-other"),
    )
    assert c.servers["default"] is main  # default-server is aliased
    # a target without `server` goes to attic's default server
    assert c.targets == (AtticTargetConfig("other", "x"), AtticTargetConfig("main", "y"))
    assert parse_config({"attic_config": "auto"}).servers == c.servers


def test_attic_login_with_a_single_server_needs_no_server_key(clean_env: Path) -> None:
    # `attic login` always writes default-server, so one server means two entries (name + default)
    write(
        clean_env / "attic" / "config.toml",
        'default-server = "p"\n[servers.p]\nendpoint = "https://p/"\n',
    )
    c = parse_config({"targets": [{"cache": "team"}]})
    assert c.targets == (AtticTargetConfig("p", "team"),)


def test_attic_config_auto_without_a_file_is_fine(clean_env: Path) -> None:
    assert not (clean_env / "attic" / "config.toml").exists()
    assert parse_config({}).servers == {}


def test_attic_config_explicit_path(tmp_path: Path) -> None:
    p = write(tmp_path / "elsewhere" / "attic.toml", ATTIC_TOML)
    c = parse_config({"attic_config": str(p)})
    assert set(c.servers) == {"main", "other", "default"}
    assert c.servers["main"].token == TOKEN


def test_attic_config_false_disables_it(clean_env: Path) -> None:
    write(clean_env / "attic" / "config.toml", ATTIC_TOML)
    assert parse_config({"attic_config": False}).servers == {}
    assert parse_config({"attic_config": None}).servers == {}


def test_yaml_servers_override_attic_servers(clean_env: Path) -> None:
    write(clean_env / "attic" / "config.toml", ATTIC_TOML)
    c = parse_config({"servers": {"other": {"endpoint": "https://override/", "token_file": "/t"}}})
    assert c.servers["other"] == ServerConfig("other", "https://override/", Path("/t"))
    assert c.servers["other"].token is None
    assert c.servers["main"].token == TOKEN


def test_attic_config_without_default_server_has_no_alias(tmp_path: Path) -> None:
    p = write(tmp_path / "a.toml", '[servers.x]\nendpoint = "https://x/"\n')
    c = parse_config({"attic_config": str(p), "targets": [{"cache": "c"}]})
    assert set(c.servers) == {"x"}
    assert c.targets == (AtticTargetConfig("x", "c"),)


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("servers = [", "cannot read attic client config"),
        ("[servers.x]\ntoken = 'abc'\n", "servers.x: expected a table with 'endpoint'"),
        ("servers = 3\n", "servers"),
        ("[servers.x]\nendpoint = 'https://x/'\ntoken-file = 5\n", "servers.x.token-file"),
        ("[servers.x]\nendpoint = 'https://x/'\ntoken = [1]\n", "servers.x.token"),
        ("[servers.x]\nendpoint = 'gopher://x/'\n", "key 'servers.x.endpoint'"),
    ],
)
def test_broken_attic_config_names_the_file(tmp_path: Path, toml: str, fragment: str) -> None:
    p = write(tmp_path / "attic.toml", toml)
    with pytest.raises(ConfigError) as e:
        parse_config({"attic_config": str(p)})
    message = str(e.value)
    assert str(p) in message and fragment in message, message
    assert "abc" not in message  # never echo a token


def test_attic_default_server_of_a_wrong_type_is_ignored(tmp_path: Path) -> None:
    p = write(tmp_path / "a.toml", 'default-server = ["x"]\n[servers.x]\nendpoint = "https://x/"\n')
    assert set(parse_config({"attic_config": str(p)}).servers) == {"x"}


# -- secrets never leak -----------------------------------------------------------------------


def test_server_repr_never_contains_the_token() -> None:
    s = ServerConfig("prod", "https://x/", Path("/run/secrets/t"), TOKEN)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"prod": s})):
        assert TOKEN not in text and "TOP-SECRET" not in text
        assert "prod" in text and "https://x/" in text
    assert s.token == TOKEN  # still usable


def test_config_repr_never_contains_the_token(clean_env: Path) -> None:
    write(clean_env / "attic" / "config.toml", ATTIC_TOML)
    c = parse_config({})
    assert c.servers["main"].token == TOKEN
    assert "TOP-SECRET" not in repr(c) and "TOP-SECRET" not in str(c)


# -- the CLI ----------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOOKD_")}
    return subprocess.run(
        [HOOKD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )


def test_cli_broken_yaml_exits_2_naming_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "BAD.yaml", "servers:\n  prod: {endpoint: https://x/\n")
    proc = run_cli("status", "--config", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr
    assert "not valid YAML" in proc.stderr and "line 3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_key_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = write(tmp_path / "BAD.yaml", {"upload": {"concurency": 3}})
    proc = run_cli("status", "--config", str(bad))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "concurency" in proc.stderr and "concurrency" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_config_from_env_exits_2(tmp_path: Path) -> None:
    proc = run_cli("status", env={"HOOKD_CONFIG": str(tmp_path / "missing.yaml")})
    assert proc.returncode == 2
    assert "missing.yaml: config file not found" in proc.stderr


@pytest.mark.parametrize("value", [-1, 20, "10", True, 1.5])
def test_nice_must_be_0_to_19(value: object) -> None:
    with pytest.raises(ConfigError, match=r"'nice'.*0 .*19"):
        parse_config({"nice": value})


def test_absurdly_large_numbers_are_refused_with_the_limit() -> None:
    # found by tests/test_fuzz.py: a 5000-digit timeout was accepted and then broke repr()
    with pytest.raises(ConfigError, match=r"nix.timeout.*<= 1e\+12"):
        parse_config({"nix": {"timeout": 10**5000}}, source="c.yaml")
    assert parse_config({"nix": {"timeout": 10**9}}, source="c.yaml").nix.timeout == 10**9
