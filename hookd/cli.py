"""The `hookd` command. Exit codes: 0 ok, 1 failure, 2 usage or configuration error."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookd import __version__
from hookd import protocol as proto
from hookd.config import AtticTargetConfig, Config, load_config
from hookd.duration import is_duration, parse_duration
from hookd.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, HookdError, run_command
from hookd.logs import setup_logging
from hookd.provision import options as provision_options

if TYPE_CHECKING:
    from hookd.tokens import TokenStore


class DaemonUnreachable(HookdError):
    pass


class Client:
    """A blocking client of the daemon's socket (one request, one reply per call)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, message: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout or self.timeout)
        try:
            s.connect(str(self.path))
            s.sendall(proto.encode(message))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
        except FileNotFoundError:
            raise DaemonUnreachable(
                f"no daemon socket at {self.path}; start it with `hookd daemon`"
            ) from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(
                f"daemon socket {self.path} refused the connection; is `hookd daemon` running?"
            ) from None
        except TimeoutError:
            raise DaemonUnreachable(f"daemon at {self.path} did not answer in time") from None
        except PermissionError:
            raise DaemonUnreachable(
                f"no permission to use {self.path} (join the socket's group)"
            ) from None
        finally:
            s.close()
        reply: dict[str, Any] = json.loads(buf) if buf else {}
        if not reply:
            raise DaemonUnreachable(
                f"daemon at {self.path} closed the connection without answering"
            )
        return reply


def _paths_from(args: Sequence[str]) -> list[str]:
    items = list(args)
    if items == ["-"]:
        items = [line.strip() for line in sys.stdin if line.strip()]
    out = []
    for item in items:
        p = item
        if not p.startswith(proto.store_dir() + "/"):
            # ./result and other symlinks into the store: resolve to the top-level store path
            real = os.path.realpath(p)
            if real.startswith(proto.store_dir() + "/"):
                p = "/".join(real.split("/")[: len(proto.store_dir().split("/")) + 1])
        elif p.count("/") > proto.store_dir().count("/") + 1:
            p = "/".join(p.split("/")[: proto.store_dir().count("/") + 2])
        out.append(proto.validate_store_path(p))
    return out


def _enqueue(client: Client, paths: list[str]) -> int:
    queued = 0
    for i in range(0, len(paths), 1000):
        reply = _check(
            client.call({"op": "enqueue", "out_paths": paths[i : i + 1000], "source": "cli"})
        )
        queued += bool(reply.get("queued"))
    return queued


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise HookdError(f"{reply.get('error', 'error')}: {reply.get('message', '')}")
    return reply


# -- commands --------------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace, config: Config) -> int:
    from hookd.daemon import run_daemon

    return run_daemon(config)


def cmd_enqueue(args: argparse.Namespace, config: Config) -> int:
    paths = _paths_from(args.paths)
    _enqueue(Client(config.socket), paths)
    print(f"queued {len(paths)} path(s)")
    return EXIT_OK


def cmd_push(args: argparse.Namespace, config: Config) -> int:
    client = Client(config.socket)
    paths = _paths_from(args.paths)
    _enqueue(client, paths)
    if not args.wait:
        print(f"queued {len(paths)} path(s); `hookd wait` or `hookd status` to follow")
        return EXIT_OK
    return _wait_for(client, paths, args.timeout, progress=sys.stderr.isatty())


def _wait_for(
    client: Client, paths: list[str] | None, timeout: float | None, *, progress: bool
) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 1.0 if progress else 30.0
        if deadline is not None:
            step = max(0.0, min(step, deadline - time.monotonic()))
        message: dict[str, Any] = {"op": "wait", "timeout": step}
        if paths is not None:
            message["paths"] = paths
        reply = _check(client.call(message, timeout=step + 10))
        if progress:
            _draw_progress(reply, paths)
        if reply.get("drained"):
            if progress:
                sys.stderr.write("\n")
            return _report_settled(reply, paths)
        if deadline is not None and time.monotonic() >= deadline:
            if progress:
                sys.stderr.write("\n")
            print("timed out: the queue is not drained yet (see `hookd status`)", file=sys.stderr)
            return EXIT_FAILURE


def _draw_progress(reply: dict[str, Any], paths: list[str] | None) -> None:
    if paths is not None:
        states = [s["state"] for per in reply.get("paths", {}).values() for s in per.values()]
        total = max(len(states), 1)
        done = sum(1 for s in states if s != "pending")
    else:
        counts = reply.get("targets", {}).values()
        total = max(sum(sum(c.values()) for c in counts), 1)
        done = total - sum(c.get("pending", 0) for c in counts)
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def _report_settled(reply: dict[str, Any], paths: list[str] | None) -> int:
    bad = 0
    if paths is not None:
        for path, per in sorted(reply.get("paths", {}).items()):
            for target, state in sorted(per.items()):
                if state["state"] != "done":
                    bad += 1
                    print(
                        f"{state['state']}: {path} → {target}: {state.get('reason') or ''}",
                        file=sys.stderr,
                    )
        print(f"{len(paths)} path(s) settled; {bad} not pushed")
    else:
        for target, c in sorted(reply.get("targets", {}).items()):
            bad += c.get("failed", 0) + c.get("parked", 0)
            print(f"{target}: done {c['done']}, failed {c['failed']}, parked {c['parked']}")
    return EXIT_FAILURE if bad else EXIT_OK


def cmd_wait(args: argparse.Namespace, config: Config) -> int:
    return _wait_for(Client(config.socket), None, args.timeout, progress=sys.stderr.isatty())


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    reply = _check(Client(config.socket).call({"op": "status"}))
    reply.pop("ok", None)
    reply.pop("v", None)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return EXIT_OK
    print(
        f"hookd {reply['version']} (pid {reply['pid']}, up {reply['uptime']:.0f} s), socket {reply['socket']}"
    )
    print(
        f"requests awaiting resolution: {reply['requests_pending']}; done in the last minute: {reply['done_last_minute']}"
    )
    live = reply.get("liveness")
    if live:
        stuck = {name: state for name, state in live["components"].items() if state != "running"}
        print(
            f"liveness: {'alive' if live['alive'] else 'NOT ALIVE'} (event loop lag "
            f"{live['loop_lag']:.2f} s, queue writer {'running' if live['queue_writer'] else 'DEAD'})"
            + (
                f"; not running: {', '.join(f'{n} {s}' for n, s in sorted(stuck.items()))}"
                if stuck
                else ""
            )
        )
    for t in reply["targets"]:
        age = (
            f", oldest pending {t['oldest_pending_age']:.0f} s"
            if t.get("oldest_pending_age")
            else ""
        )
        print(
            f"  {t['id']}: pending {t['pending']}, done {t['done']}, failed {t['failed']}, parked {t['parked']}"
            f"{age}; breaker {t['breaker']}"
        )
        if t.get("last_error"):
            print(f"    last error: {t['last_error']}")
    if reply.get("default_cache"):
        dc = reply["default_cache"]
        print(f"default cache: {dc['url']}\n  public key: {dc['public_key']}")
    for problem in reply.get("problems", [])[:10]:
        print(f"  {problem['state']}: {problem['path']} → {problem['target']}: {problem['reason']}")
    for server, issues in (reply.get("token_problems") or {}).items():
        for issue in issues:
            print(f"  token {server}: {issue}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, config: Config) -> int:
    if not args.all and not args.paths:
        print("hookd retry: give store paths or --all", file=sys.stderr)
        return EXIT_USAGE
    message: dict[str, Any] = {"op": "retry"}
    if args.all:
        message["all"] = True
    else:
        message["paths"] = _paths_from(args.paths)
    reply = _check(Client(config.socket).call(message))
    print(f"retrying {reply['retried']} item(s)")
    return EXIT_OK


def cmd_drop(args: argparse.Namespace, config: Config) -> int:
    reply = _check(Client(config.socket).call({"op": "drop", "paths": _paths_from(args.paths)}))
    print(f"dropped {reply['dropped']} item(s)")
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace, config: Config) -> int:
    since = _parse_since(args.since) if args.since else 0.0
    reply = _check(Client(config.socket).call({"op": "backfill", "since": since}, timeout=900))
    print(f"scanned {reply['scanned']} path(s); queued {reply['queued']} locally built path(s)")
    return EXIT_OK


def _parse_since(text: str) -> float:
    if is_duration(text):
        return time.time() - parse_duration(text, "--since")
    if text.isdigit():
        return float(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since: expected a duration like 2h, 3d or 1y, epoch seconds or an ISO date, "
            f"got {text!r}"
        ) from None


def _same(value: str | None) -> str | None:
    return value


def _netrc_password(path: Path, endpoint: str) -> str | None:
    """The password of the netrc entry Nix would use for ``endpoint`` (None: no entry)."""
    import netrc
    from urllib.parse import urlsplit

    try:
        entry = netrc.netrc(str(path)).authenticators(urlsplit(endpoint).hostname or "")
    except (OSError, netrc.NetrcParseError) as e:
        # the parse error quotes no secret (only the file, line and the token it choked on
        # when that is not a password), but keep it short anyway
        raise ConfigError(f"--netrc {path}: cannot read it: {type(e).__name__}") from None
    return entry[2] if entry is not None and entry[2] else None


async def _check_pull(
    config: Config, tokens: TokenStore | None, netrc_file: Path | None = None
) -> int:
    """The pull side of every Attic target (hookd.pullcheck); returns the number of problems."""
    from hookd.attic.client import AtticClient
    from hookd.attic.redact import Redactor
    from hookd.attic.tls import TlsConfig
    from hookd.pullcheck import check_pull
    from hookd.queue import Queue

    queue = Queue(config.db_path).open() if config.db_path.exists() else None
    bad = 0
    try:
        for i, t in enumerate(config.targets):
            if not isinstance(t, AtticTargetConfig):
                continue
            server = config.servers[t.server]
            redactor = tokens.redactor if tokens is not None else Redactor()
            try:
                if netrc_file is not None:
                    token = _netrc_password(netrc_file, server.endpoint)
                    redactor.add(token)
                    if token is None:
                        print(f"pull {t.id}: {netrc_file} has no entry for this server's host")
                else:
                    token = tokens.get(server.name) if tokens is not None else None
            except HookdError as e:
                print(f"pull {t.id}: no pull credentials ({e}); checking without a token")
                token = None
            client = AtticClient(
                server.endpoint,
                name=server.name,
                token=functools.partial(_same, token),
                redactor=redactor,
                request_timeout=min(30.0, config.upload.request_timeout),
                allowed_origins=server.allowed_origins,
                tls=TlsConfig.of(server),  # the server's CA bundle and client certificate
            )
            try:
                pushed = await queue.last_pushed(t.id) if queue is not None else None
                report = await check_pull(
                    client,
                    t.cache,
                    configured_key=t.public_key,
                    key_setting=f"targets[{i}].public_key",
                    pushed=pushed,
                )
            finally:
                await client.aclose()
            for note in report.notes:
                print(f"pull {t.id}: {note}")
            for problem in report.problems:
                print(f"pull {t.id}: problem: {problem}")
            bad += len(report.problems)
    finally:
        if queue is not None:
            queue.close()
    return bad


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from hookd.daemon import build_targets
    from hookd.nix import Nix

    problems = 0
    print(f"config: {config.path or '(defaults: no config file)'}: ok")
    nix = Nix(config.nix.bin_dir, config.nix.timeout)
    try:
        version = nix.run(["nix", "--version"]).strip()
        print(f"nix: {version}")
    except HookdError as e:
        print(f"nix: {e}")
        problems += 1
    tokens = None
    if config.servers:
        from hookd.tokens import TokenStore

        tokens = TokenStore(config.servers, store_dir=nix.store_dir())
        for name in config.servers:
            issues = tokens.check(name)
            for issue in issues:
                print(f"token {name}: {issue}")
            problems += len(issues)
            if not issues:
                print(f"token {name}: ok")
    if config.targets:
        targets = build_targets(config, nix, tokens)

        async def reach() -> int:
            bad = 0
            for t in targets:
                try:
                    print(await t.check())
                except HookdError as e:
                    print(f"{t.id}: {e}")
                    bad += 1
                finally:
                    await t.close()
            return bad

        problems += asyncio.run(reach())
        problems += asyncio.run(_check_pull(config, tokens, args.netrc))
    else:
        print(
            f"targets: none configured; the daemon pushes to the embedded cache file://{config.default_cache_dir}"
        )
    try:
        reply = Client(config.socket, timeout=2).call({"op": "ping"})
        print(f"daemon: running (pid {reply.get('pid')}) at {config.socket}")
    except DaemonUnreachable as e:
        print(f"daemon: {e}")
    return EXIT_FAILURE if problems else EXIT_OK


# -- parser ----------------------------------------------------------------------------


def get_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="YAML config (default: $HOOKD_CONFIG, /etc/hookd/config.yaml or ~/.config/hookd/config.yaml)",
    )
    common.add_argument(
        "--socket",
        type=Path,
        help="daemon socket (default: $HOOKD_SOCKET or the config's `socket`)",
    )
    parser = argparse.ArgumentParser(
        prog="hookd", description="Push every Nix build result to binary caches."
    )
    parser.add_argument("--version", action="version", version=f"hookd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    add("daemon", "run the daemon in the foreground (systemd/launchd run this)")
    p = add("enqueue", "queue store paths by hand (- reads one per line from stdin)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = add(
        "push", "queue paths and, with --wait, follow them until every target has them or failed"
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--wait", action="store_true", help="wait until pushed (progress bar on a TTY)")
    p.add_argument(
        "--timeout", type=float, help="with --wait: give up after this many seconds (exit 1)"
    )
    p = add("status", "queue depth and per-target state, last errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("wait", "block until the queue is drained (exit 1 on timeout or if anything failed)")
    p.add_argument("--timeout", type=float, help="seconds (default: no limit)")
    p = add("retry", "retry failed or parked paths now")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--all", action="store_true", help="every failed and parked item")
    p = add("drop", "forget queued, failed or parked paths")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = add("backfill", "queue locally built store paths registered since T (missed by the hook)")
    p.add_argument(
        "--since",
        help="a duration (2h, 3d, 1w2d, 1y), epoch seconds or an ISO date (default: all)",
    )
    p = add(
        "check",
        "validate config and token files, reach every target, check each Attic target's pull side",
    )
    p.add_argument(
        "--netrc",
        type=Path,
        metavar="FILE",
        help="check the pull side with the credentials in this netrc, as Nix clients use it "
        "(default: the server's token, which the pull modules put in the clients' netrc)",
    )
    # no `common` parent: provision's --config is its YAML, and it needs no daemon config
    p = sub.add_parser(
        "provision",
        help="create/configure Attic caches and mint tokens (see `hookd provision --help`)",
        description=provision_options.DESCRIPTION,
    )
    provision_options.add_arguments(p)
    return parser


COMMANDS = {
    "daemon": cmd_daemon,
    "enqueue": cmd_enqueue,
    "push": cmd_push,
    "status": cmd_status,
    "wait": cmd_wait,
    "retry": cmd_retry,
    "drop": cmd_drop,
    "backfill": cmd_backfill,
    "check": cmd_check,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.command == "provision":  # its own YAML and errors; no daemon config
        from hookd.provision.command import run_parsed

        return run_parsed(args)

    def body() -> int:
        try:
            config = load_config(args.config)
            if args.socket:
                config = _with_socket(config, args.socket)
            setup_logging(config.log_format, config.log_level)
            return COMMANDS[args.command](args, config)
        except proto.ProtocolError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return EXIT_USAGE

    return run_command(body, lambda text: print(text, file=sys.stderr))


def _with_socket(config: Config, socket_path: Path) -> Config:
    from dataclasses import replace

    return replace(config, socket=socket_path)


if __name__ == "__main__":
    sys.exit(main())
