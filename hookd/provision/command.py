"""`hookd provision` (and its `attic-provision` name): the options and the run.

Flow (a bad input changes nothing, because every check runs before the first write):

1. load and validate the YAML (+ ``ATTIC_SERVER_URL`` / ``ATTIC_ADMIN_TOKEN``), the signing secret
   and the output destinations;
2. plan: one GET per cache; a missing cache is planned as *create*, a field that differs as
   *update old → new*, ``state: absent`` as *destroy*;
3. check the plan against the admin token's own claims (decoded, not verified): ``cc`` for a
   create, ``cr`` for an update, ``cq`` too when ``retention_period`` changes, ``cd`` for a destroy;
4. ``--dry-run`` stops here and prints the plan; otherwise apply (POST, one PATCH per cache with
   only the fields that differ, DELETE), then mint the tokens locally (Attic has no token
   endpoint: a token is a JWT signed with the server's own secret) and write them out;
5. print each cache's substituter URL and public key, and write them with ``--nix-config``.

Neither the admin token nor a minted token is ever printed, except minted tokens on stdout with
``--json`` (and as netrc lines by `attic-provision` without an output option), whose purpose
that is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from hookd.duration import format_duration
from hookd.errors import EXIT_OK, EXIT_USAGE, ConfigError, run_command
from hookd.provision.admin import AtticAdmin
from hookd.provision.keys import (
    AdminToken,
    MintedToken,
    SigningKey,
    check_signing_key,
    inspect_admin_token,
    iso,
    load_signing_key,
    mint,
)
from hookd.provision.options import ATTIC_PROVISION, build_parser
from hookd.provision.output import (
    Output,
    PullSettings,
    check_nix_config_path,
    netrc_line,
    update_netrc,
    write_nix_config,
    write_token_dir,
)
from hookd.provision.plan import (
    Change,
    Plan,
    apply_plan,
    build_plan,
    check_permissions,
    print_plan,
    print_summary,
)
from hookd.provision.spec import (
    ENV_ADMIN_TOKEN,
    ProvisionConfig,
    load_config,
)


def main(argv: Sequence[str] | None = None, *, prog: str = "hookd provision") -> int:
    """Entry point for ``hookd provision ARGS…`` (argv excludes the word "provision")."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    return run_parsed(args, netrc_on_stdout=prog == ATTIC_PROVISION)


def attic_provision_main() -> int:
    """The `attic-provision` console script: hookd provision as that tool behaved."""
    return main(sys.argv[1:], prog=ATTIC_PROVISION)


def run_parsed(args: argparse.Namespace, *, netrc_on_stdout: bool = False) -> int:
    """Run parsed options (from build_parser or hookd.cli's subparser); errors → exit codes."""
    stdout_mode = netrc_on_stdout and _destination(args) is None
    args.netrc_on_stdout = stdout_mode
    out = Output(sys.stdout, sys.stderr, json_mode=args.json or stdout_mode)
    return run_command(lambda: run(args, out, os.environ), out.error)


# Where minted tokens go; "stdout" is attic-provision's netrc lines when no option says otherwise.
Destination = Literal["output-dir", "netrc", "json", "stdout"]


def _destination(args: argparse.Namespace) -> Destination | None:
    if args.output_dir is not None:
        return "output-dir"
    if args.netrc is not None:
        return "netrc"
    if args.json:
        return "json"
    return "stdout" if getattr(args, "netrc_on_stdout", False) else None


def _preflight_destination(args: argparse.Namespace) -> None:
    """Fail before any change when the tokens could not be written afterwards."""
    if args.output_dir is not None:
        target: Path = args.output_dir
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--output-dir {target}: not a directory")
    else:
        target = args.netrc
        if target.is_dir():
            raise ConfigError(f"--netrc {target}: is a directory")
        target = target.parent  # the file is replaced through a temporary file next to it
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write tokens under {existing}: permission denied")


def _signing_key(
    args: argparse.Namespace,
    config: ProvisionConfig,
    n_tokens: int,
    out: Output,
    env: Mapping[str, str],
) -> SigningKey:
    dest = _destination(args)
    if dest is None and not args.dry_run:
        raise ConfigError(
            f"{config.source} declares {n_tokens} token(s): say where they go with "
            "--output-dir DIR, --netrc FILE or --json (or pass --no-tokens)"
        )
    key = load_signing_key(args.secret_file, env)
    out.add_secret(key.text)
    if isinstance(key.secret, bytes) and len(key.secret) < 32:
        out.warn(
            f"the HS256 signing secret ({key.source}) is only {len(key.secret)} bytes "
            "(32 or more recommended)"
        )
    if dest in ("output-dir", "netrc") and not args.dry_run:
        _preflight_destination(args)
    if dest in ("netrc", "stdout") and n_tokens > 1:
        out.warn(
            f"{n_tokens} tokens go to one netrc for {config.host}: Nix uses the first "
            "entry for a host"
        )
    if dest == "stdout" and not args.dry_run:
        out.warn(
            "tokens are printed on stdout as netrc lines (attic-provision's behaviour); keep them "
            "out of terminals and CI logs with --netrc FILE or --output-dir DIR"
        )
    return key


def run(args: argparse.Namespace, out: Output, env: Mapping[str, str]) -> int:
    config = load_config(args.config, env)
    out.add_secret(config.admin_token)
    for note in config.warnings:
        out.warn(note)
    for path in args.nix_config:
        check_nix_config_path(path)

    tokens = () if args.no_tokens else config.tokens
    key = _signing_key(args, config, len(tokens), out, env) if tokens else None

    admin_info = AdminToken(None)
    if config.caches:
        if not config.admin_token:
            raise ConfigError(
                f"{config.source}: caches are declared but there is no admin token: set "
                f"admin_token_file or {ENV_ADMIN_TOKEN}"
            )
        admin_info = inspect_admin_token(config.admin_token, config.admin_token_source, time.time())
        if admin_info.caches is None:
            out.warn(
                "the admin token is not a readable JWT, so its permissions cannot be checked "
                "before changes are made"
            )
    if key is not None and config.admin_token:
        check_signing_key(config.admin_token, key)

    plan = Plan((), tokens)
    admin = (
        AtticAdmin(config.server_url, config.admin_token, timeout=args.timeout, tls=config.tls())
        if config.caches
        else None
    )
    try:
        built = build_plan(admin, config)
        plan = Plan(built.changes, tokens, built.states)
        check_permissions(plan, admin_info, config.admin_token_source)
        if args.dry_run:
            print_plan(plan, out)
            pull = _pull_settings(admin, config, plan, refresh=False)
            _print_pull(pull, out)
            if args.json:
                out.data(_json_doc(config, plan, plan.changes, None, pull))
            return EXIT_OK
        done = apply_plan(admin, config, plan, out) if admin is not None else []
        pull = _pull_settings(admin, config, plan, refresh=True)
    finally:
        if admin is not None:
            admin.close()

    minted: list[MintedToken] = []
    if tokens:
        assert key is not None
        now = int(time.time())
        minted = [mint(spec, key, now, config) for spec in tokens]
        for t in minted:
            out.add_secret(t.token)
        _write_tokens(args, config, minted, out)
    print_summary(done, minted, out)
    _print_pull(pull, out)
    for path in args.nix_config:
        write_nix_config(path, pull, config.source)
        out.info(f"* wrote substituters and trusted-public-keys to {path}")
    if args.json:
        out.data(_json_doc(config, plan, tuple(done), minted, pull))
    elif _destination(args) == "stdout":
        out.data_lines(netrc_line(config.host, t) for t in minted)
    return EXIT_OK


def _pull_settings(
    admin: AtticAdmin | None, config: ProvisionConfig, plan: Plan, *, refresh: bool
) -> list[PullSettings]:
    """Each present cache as a client uses it. A cache that did not exist when the plan was made
    is read again after the run (``refresh``) for the key it was created with."""
    pull = []
    for spec in config.caches:
        if spec.state != "present" or admin is None:
            continue
        state = plan.states.get(spec.name)
        if state is None and refresh:
            state = admin.get(spec.name)
        if spec.public is not None:  # what the run makes it (a dry run: what it would)
            public = spec.public
        else:
            public = state.public if state is not None else False
        key = state.public_key if state is not None else None
        pull.append(PullSettings(spec.name, admin.substituter(spec.name), key, public))
    return pull


def _print_pull(pull: Sequence[PullSettings], out: Output) -> None:
    for c in pull:
        key = c.public_key or "(not known yet: the cache is created by this run)"
        access = "public" if c.public else "private: pulling needs a token in netrc"
        out.info(f"cache {c.cache} ({access}): substituter {c.substituter} public key {key}")


def _write_tokens(
    args: argparse.Namespace, config: ProvisionConfig, minted: list[MintedToken], out: Output
) -> None:
    if args.output_dir is not None:
        for t, path in zip(minted, write_token_dir(args.output_dir, minted), strict=True):
            out.info(f"* wrote token {t.spec.name} to {path} (expires {iso(t.expires_at)})")
    elif args.netrc is not None:
        update_netrc(args.netrc, config.host, minted)
        for t in minted:
            out.info(
                f"* wrote token {t.spec.name} to {args.netrc} as machine {config.host} "
                f"login {t.spec.name} (expires {iso(t.expires_at)})"
            )
    else:
        for t in minted:
            out.info(f"* minted token {t.spec.name} (expires {iso(t.expires_at)}), on stdout")


def _json_doc(
    config: ProvisionConfig,
    plan: Plan,
    changes: Sequence[Change],
    minted: Sequence[MintedToken] | None,
    pull: Sequence[PullSettings],
) -> dict[str, object]:
    doc: dict[str, object] = {
        "server_url": config.server_url,
        "dry_run": minted is None,
        "changes": [c.to_json() for c in changes],
        "caches": {
            c.cache: {"substituter": c.substituter, "public_key": c.public_key, "public": c.public}
            for c in pull
        },
    }
    if minted is None:
        doc["tokens"] = {
            s.name: {
                "sub": s.sub,
                "validity": format_duration(s.validity),
                "caches": s.caches_claim(),
            }
            for s in plan.tokens
        }
    else:
        doc["tokens"] = {t.spec.name: {**t.summary(), "token": t.token} for t in minted}
    return doc
