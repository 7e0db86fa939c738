"""The options of `hookd provision` / `attic-provision`. Kept apart from the run so that `hookd`'s
parser can offer the subcommand without importing the HTTP and JWT libraries."""

from __future__ import annotations

import argparse
from pathlib import Path

from hookd.provision.spec import ENV_HS256, ENV_RS256

ATTIC_PROVISION = "attic-provision"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


DESCRIPTION = (
    "Create and configure Attic caches from a YAML file, and mint Attic tokens with the "
    "server's signing secret. Exit status: 0 ok, 1 failure, 2 usage or config error."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `hookd provision`, for its subparser in hookd.cli and for build_parser."""
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="the YAML file")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (reads the server, changes nothing, writes no file)",
    )
    dest = p.add_mutually_exclusive_group()
    dest.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="write each token to DIR/NAME.token (0600)"
    )
    dest.add_argument(
        "--netrc",
        type=Path,
        metavar="FILE",
        help="write 'machine HOST login NAME password TOKEN' lines to FILE (0600)",
    )
    dest.add_argument(
        "--json",
        action="store_true",
        help="print the plan and the tokens as JSON on stdout (the only output with tokens)",
    )
    p.add_argument(
        "--nix-config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="write the caches' substituters and trusted-public-keys to FILE: JSON when it ends "
        "in .json, a nix.settings-shaped attrset when it ends in .nix (repeatable)",
    )
    p.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help=f"the server's signing secret (default: ${ENV_RS256} or ${ENV_HS256})",
    )
    p.add_argument("--no-tokens", action="store_true", help="converge caches only; mint no token")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="per request (default 30)",
    )


def build_parser(prog: str = "hookd provision") -> argparse.ArgumentParser:
    description = DESCRIPTION
    if prog == ATTIC_PROVISION:
        description += (
            " Without --output-dir, --netrc or --json, tokens are printed as netrc lines on "
            "stdout, as attic-provision did."
        )
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(p)
    return p
