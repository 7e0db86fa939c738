"""YAML configuration → validated, typed config. Errors name the file, the key and what is expected."""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hookd.errors import ConfigError

CACHE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_+]{0,49}")

TOP_KEYS = {
    "socket",
    "socket_group",
    "state_dir",
    "spool_dir",
    "allowed_users",
    "allowed_groups",
    "servers",
    "attic_config",
    "targets",
    "filter",
    "upload",
    "nix",
    "log",
    "nice",
}
SERVER_KEYS = {"endpoint", "token_file"}
FILTER_KEYS = {"include", "exclude", "skip_drv", "skip_sources", "skip_fixed_output"}
UPLOAD_KEYS = {
    "concurrency",
    "max_backoff",
    "min_backoff",
    "retry_attempts",
    "batch_size",
    "request_timeout",
    "breaker_threshold",
    "breaker_cooldown",
    "ignore_upstream",
    "stop_timeout",
    "batch_window",
    "remember_pushed",
}
NIX_KEYS = {"bin_dir", "timeout", "dump_timeout", "gc_roots"}
LOG_KEYS = {"format", "level"}


@dataclass(frozen=True)
class ServerConfig:
    name: str
    endpoint: str
    token_file: Path | None = None
    token: str | None = None  # only from attic's own config.toml `token =`; never from our YAML

    def __repr__(self) -> str:  # never let a token reach a log line or a traceback
        return f"ServerConfig(name={self.name!r}, endpoint={self.endpoint!r}, token_file={self.token_file!r})"


@dataclass(frozen=True)
class AtticTargetConfig:
    server: str
    cache: str

    @property
    def id(self) -> str:
        return f"attic:{self.server}/{self.cache}"


@dataclass(frozen=True)
class StoreTargetConfig:
    store: str
    secret_key_file: Path | None = None

    @property
    def id(self) -> str:
        return f"store:{self.store}"


TargetConfig = AtticTargetConfig | StoreTargetConfig


@dataclass(frozen=True)
class FilterConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_drv: bool = True
    skip_sources: bool = True
    skip_fixed_output: bool = False


@dataclass(frozen=True)
class UploadConfig:
    concurrency: int = 4
    min_backoff: float = 1.0
    max_backoff: float = 900.0
    retry_attempts: int = 4  # in-process attempts before the item gets a due time
    batch_size: int = 256
    request_timeout: float = 300.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    ignore_upstream: bool = False
    remember_pushed: float = 3600.0  # trust "the cache has it" this long, then ask again
    batch_window: float = 0.2  # after idle, wait this long so a burst of builds shares a batch
    stop_timeout: float = 20.0  # on SIGTERM, in-flight uploads get this long; the rest stays queued


@dataclass(frozen=True)
class NixConfig:
    bin_dir: Path | None = None
    timeout: float = 120.0
    dump_timeout: float = 3600.0
    gc_roots: bool = True


@dataclass(frozen=True)
class Config:
    path: Path | None
    socket: Path
    state_dir: Path
    spool_dir: Path
    socket_group: str | None = None
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    targets: tuple[TargetConfig, ...] = ()
    filter: FilterConfig = FilterConfig()
    upload: UploadConfig = UploadConfig()
    nix: NixConfig = NixConfig()
    log_format: str = "auto"
    log_level: str = "info"
    nice: int = 10  # the daemon's CPU priority: builds come first

    @property
    def db_path(self) -> Path:
        return self.state_dir / "queue.sqlite"

    @property
    def default_cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def default_key_file(self) -> Path:
        return self.state_dir / "cache-key.sec"

    @property
    def default_public_key_file(self) -> Path:
        return self.state_dir / "cache-key.pub"

    @property
    def gc_roots_dir(self) -> Path:
        """Below Nix's gcroots: one directory per state directory, so daemons never share one."""
        nix_state = Path(os.environ.get("NIX_STATE_DIR", "/nix/var/nix"))
        name = "hookd"
        if self.state_dir != Path("/var/lib/hookd"):
            name += "-" + hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        if is_root():
            return nix_state / "gcroots" / name
        user = os.environ.get("USER") or str(os.geteuid())
        return nix_state / "gcroots" / "per-user" / user / name


def is_root() -> bool:
    return os.geteuid() == 0


def default_config_path() -> Path:
    env = os.environ.get("HOOKD_CONFIG")
    if env:
        return Path(env)
    if is_root():
        return Path("/etc/hookd/config.yaml")
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "hookd" / "config.yaml"


def default_state_dir() -> Path:
    if env := os.environ.get("HOOKD_STATE_DIR"):
        return Path(env)
    if is_root():
        return Path("/var/lib/hookd")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "hookd"


def default_socket(state_dir: Path) -> Path:
    if env := os.environ.get("HOOKD_SOCKET"):
        return Path(env)
    if is_root():
        return Path("/run/hookd/hookd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "hookd" / "hookd.sock" if runtime else state_dir / "hookd.sock"


def _text(value: object) -> str:
    """str() that cannot fail: YAML hex/octal ints may exceed Python's int-to-str digit limit."""
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


def _show(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 200 else text[:200] + "…"


class _Reader:
    """Walks a YAML mapping, raising ConfigError with file and dotted key on every mistake."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: object = None) -> ConfigError:
        shown = f", got {_show(got)}" if got is not None else ""
        return ConfigError(f"{self.source}: key '{key}': expected {expected}{shown}")

    def mapping(self, value: object, key: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping", type(value).__name__)
        unknown = sorted(set(map(_text, value)) - allowed)
        if unknown:
            where = f"'{key}'" if key else "the top level"
            raise ConfigError(
                f"{self.source}: unknown key(s) {', '.join(unknown)} in {where}; "
                f"known keys: {', '.join(sorted(allowed))}"
            )
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string", value)
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def number(self, value: object, key: str, *, minimum: float = 0, integer: bool = False) -> Any:
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            bad = True
        else:  # math.isfinite only for floats: a huge int would overflow the conversion
            bad = (isinstance(value, float) and not math.isfinite(value)) or value < minimum  # type: ignore[operator]
        if bad:
            kind = "an integer" if integer else "a number"
            raise self.fail(key, f"{kind} >= {minimum}", value)
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise self.fail(key, "a list of strings", value)
        items = tuple(_text(v) for v in value)
        if any(i.startswith("<") and i.endswith("too large to show>") for i in items):
            raise self.fail(key, "a list of strings", value)
        return items

    def regexes(self, value: object, key: str) -> tuple[str, ...]:
        items = self.strings(value, key)
        for i, pattern in enumerate(items):
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as e:
                raise self.fail(
                    f"{key}[{i}]", f"a valid regular expression ({e})", pattern
                ) from None
        return items

    def path(self, value: object, key: str) -> Path:
        text = self.string(value, key)
        if not text.startswith("/"):
            raise self.fail(key, "an absolute path", text)
        return Path(text)


def load_config(path: Path | None = None, *, required: bool = False) -> Config:
    """Load the YAML at ``path`` (or the default location). A missing default file means defaults."""
    explicit = path is not None or bool(os.environ.get("HOOKD_CONFIG"))
    path = path or default_config_path()
    raw: object = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None
        except ValueError as e:  # e.g. an integer over Python's int-digit limit
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    elif explicit or required:
        raise ConfigError(f"{path}: config file not found")
    return parse_config(raw, source=str(path), path=path if path.exists() else None)


def parse_config(raw: object, *, source: str = "<config>", path: Path | None = None) -> Config:
    r = _Reader(source)
    top = r.mapping(raw, "", TOP_KEYS)
    state_dir = r.path(top["state_dir"], "state_dir") if "state_dir" in top else default_state_dir()
    socket = r.path(top["socket"], "socket") if "socket" in top else default_socket(state_dir)
    if env_socket := os.environ.get("HOOKD_SOCKET"):
        socket = Path(env_socket)
    spool = r.path(top["spool_dir"], "spool_dir") if "spool_dir" in top else state_dir / "spool"

    servers = _attic_client_servers(top.get("attic_config", "auto"), r)
    raw_servers = top.get("servers")
    server_names = {_text(k) for k in raw_servers} if isinstance(raw_servers, dict) else set()
    for name, value in r.mapping(raw_servers, "servers", server_names).items():
        key = f"servers.{_text(name)}"
        if not CACHE_NAME_RE.fullmatch(_text(name)):
            raise r.fail(key, "a server name of letters, digits, '-', '_' or '+'", name)
        entry = r.mapping(value, key, SERVER_KEYS)
        if "endpoint" not in entry:
            raise r.fail(f"{key}.endpoint", "the server's URL, e.g. https://cache.example.com/")
        endpoint = _endpoint(r.string(entry["endpoint"], f"{key}.endpoint"), r, f"{key}.endpoint")
        token_file = (
            r.path(entry["token_file"], f"{key}.token_file") if entry.get("token_file") else None
        )
        servers[str(name)] = ServerConfig(str(name), endpoint, token_file)

    if top.get("targets") is not None and not isinstance(top["targets"], list):
        raise r.fail("targets", "a list of {server, cache} or {store, secret_key_file}")
    targets = tuple(
        _target(item, f"targets[{i}]", r, servers)
        for i, item in enumerate(top.get("targets") or [])
    )

    f = r.mapping(top.get("filter"), "filter", FILTER_KEYS)
    filt = FilterConfig(
        include=r.regexes(f.get("include"), "filter.include"),
        exclude=r.regexes(f.get("exclude"), "filter.exclude"),
        **{
            k: r.boolean(f[k], f"filter.{k}")
            for k in ("skip_drv", "skip_sources", "skip_fixed_output")
            if k in f
        },
    )
    u = r.mapping(top.get("upload"), "upload", UPLOAD_KEYS)
    ints = {"concurrency", "retry_attempts", "batch_size", "breaker_threshold"}
    upload_kwargs: dict[str, Any] = {}
    for k, v in u.items():
        if k == "ignore_upstream":
            upload_kwargs[k] = r.boolean(v, "upload.ignore_upstream")
        else:
            upload_kwargs[k] = r.number(
                v, f"upload.{k}", minimum=1 if k in ints else 0, integer=k in ints
            )
    upload = UploadConfig(**upload_kwargs)
    if upload.min_backoff > upload.max_backoff:
        raise r.fail(
            "upload.min_backoff",
            f"a number <= upload.max_backoff ({upload.max_backoff})",
            upload.min_backoff,
        )

    n = r.mapping(top.get("nix"), "nix", NIX_KEYS)
    nix = NixConfig(
        bin_dir=r.path(n["bin_dir"], "nix.bin_dir") if n.get("bin_dir") else None,
        timeout=r.number(n.get("timeout", 120.0), "nix.timeout", minimum=1),
        dump_timeout=r.number(n.get("dump_timeout", 3600.0), "nix.dump_timeout", minimum=1),
        gc_roots=r.boolean(n.get("gc_roots", True), "nix.gc_roots"),
    )
    lg = r.mapping(top.get("log"), "log", LOG_KEYS)
    log_format = lg.get("format", "auto")
    if log_format not in ("auto", "json", "console"):
        raise r.fail("log.format", "one of auto, json, console", log_format)
    log_level = lg.get("level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise r.fail("log.level", "one of debug, info, warning, error", log_level)

    return Config(
        path=path,
        socket=socket,
        state_dir=state_dir,
        spool_dir=spool,
        socket_group=r.string(top["socket_group"], "socket_group")
        if top.get("socket_group")
        else None,
        allowed_users=r.strings(top.get("allowed_users"), "allowed_users"),
        allowed_groups=r.strings(top.get("allowed_groups"), "allowed_groups"),
        servers=servers,
        targets=targets,
        filter=filt,
        upload=upload,
        nix=nix,
        log_format=log_format,
        log_level=log_level,
        nice=_nice(top.get("nice", 10), r),
    )


def _nice(value: object, r: _Reader) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
        raise r.fail("nice", "an integer from 0 (normal priority) to 19 (lowest)", value)
    return value


def _endpoint(url: str, r: _Reader, key: str) -> str:
    if not re.match(r"https?://[^/]+", url):
        raise r.fail(key, "an http:// or https:// URL", url)
    return url if url.endswith("/") else url + "/"


def _target(item: object, key: str, r: _Reader, servers: dict[str, ServerConfig]) -> TargetConfig:
    if isinstance(item, dict) and "store" in item:
        entry = r.mapping(item, key, {"store", "secret_key_file"})
        skf = entry.get("secret_key_file")
        return StoreTargetConfig(
            store=r.string(entry["store"], f"{key}.store"),
            secret_key_file=r.path(skf, f"{key}.secret_key_file") if skf else None,
        )
    entry = r.mapping(item, key, {"server", "cache"})
    if "cache" not in entry:
        raise r.fail(key, "{server: NAME, cache: NAME} or {store: URL}", item)
    cache = r.string(entry["cache"], f"{key}.cache")
    if not CACHE_NAME_RE.fullmatch(cache):
        raise r.fail(
            f"{key}.cache", "an Attic cache name (1-50 of A-Za-z0-9-_+, alphanumeric first)", cache
        )
    server = entry.get("server")
    if server is None and "default" in servers:
        # attic's `default-server` (aliased as "default"); `attic login` always sets one.
        server = servers["default"].name if servers["default"].name in servers else "default"
    if server is None:
        if len(servers) != 1:
            raise r.fail(
                f"{key}.server",
                f"one of the configured servers ({', '.join(sorted(servers)) or 'none'})",
            )
        server = next(iter(servers))
    server = r.string(server, f"{key}.server")
    if server not in servers:
        raise r.fail(
            f"{key}.server",
            f"one of the configured servers ({', '.join(sorted(servers)) or 'none'})",
            server,
        )
    return AtticTargetConfig(server=server, cache=cache)


def attic_client_config_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "attic" / "config.toml"


def _attic_client_servers(setting: object, r: _Reader) -> dict[str, ServerConfig]:
    """Servers from attic's own config.toml, so `attic login` users need no second config."""
    if setting is False or setting is None:
        return {}
    if setting == "auto":
        path = attic_client_config_path()
        if not path.exists():
            return {}
    else:
        path = r.path(setting, "attic_config")
        if not path.exists():
            raise r.fail(
                "attic_config", "an existing attic config.toml, 'auto' or false", str(path)
            )
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read attic client config: {e}") from None
    servers: dict[str, ServerConfig] = {}
    tables = data.get("servers") or {}
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: servers: expected a table of servers")
    for name, entry in tables.items():
        if not isinstance(entry, dict) or "endpoint" not in entry:
            raise ConfigError(f"{path}: servers.{name}: expected a table with 'endpoint'")
        token_file, token = entry.get("token-file"), entry.get("token")
        for k, v in (("token-file", token_file), ("token", token)):
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{path}: servers.{name}.{k}: expected a string")
        servers[name] = ServerConfig(
            name=name,
            endpoint=_endpoint(
                str(entry["endpoint"]), _Reader(str(path)), f"servers.{name}.endpoint"
            ),
            token_file=Path(token_file) if token_file else None,
            token=token,
        )
    default = data.get("default-server")
    if isinstance(default, str) and default in servers and "default" not in servers:
        servers["default"] = servers[default]
    return servers
