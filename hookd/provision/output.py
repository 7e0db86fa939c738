"""What provision writes: redacted human output, token files, netrc lines, and the pull-side
settings (substituters and public keys) as JSON or a Nix attrset."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hookd.attic.redact import Redactor
from hookd.errors import ConfigError, ProvisionError
from hookd.provision.keys import MintedToken


class Output:
    """Human output goes to stdout (stderr with ``--json``); every line is scrubbed of secrets."""

    def __init__(self, stdout: TextIO, stderr: TextIO, *, json_mode: bool = False) -> None:
        self.stdout, self.stderr, self.json_mode = stdout, stderr, json_mode
        # the daemon's redaction: secrets, fragments of them and anything shaped like a JWT
        self._redactor = Redactor(mask="[REDACTED]")

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret) >= 8:
            self._redactor.add(secret)

    def redact(self, text: str) -> str:
        return self._redactor.redact(text)

    def info(self, text: str) -> None:
        print(self.redact(text), file=self.stderr if self.json_mode else self.stdout)

    def warn(self, text: str) -> None:
        print(self.redact(f"warning: {text}"), file=self.stderr)

    def error(self, text: str) -> None:
        print(self.redact(text), file=self.stderr)

    def data_lines(self, lines: Iterable[str]) -> None:
        """attic-provision's netrc lines on stdout (they carry the tokens, on purpose)."""
        for line in lines:
            print(line, file=self.stdout)

    def data(self, obj: object) -> None:
        """The --json document: the one place a minted token may appear."""
        print(json.dumps(obj, indent=2), file=self.stdout)


def write_secret_file(path: Path, content: str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``content``, with ``mode`` from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_token_dir(directory: Path, tokens: Sequence[MintedToken]) -> list[Path]:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = []
        for t in tokens:
            path = directory / f"{t.spec.name}.token"
            write_secret_file(path, t.token + "\n")
            paths.append(path)
    except OSError as e:
        raise ProvisionError(f"cannot write tokens to {directory}: {e.strerror or e}") from None
    return paths


def netrc_line(host: str, token: MintedToken) -> str:
    return f"machine {host} login {token.spec.name} password {token.token}"


def update_netrc(path: Path, host: str, tokens: Sequence[MintedToken]) -> None:
    """Replace the ``machine HOST login NAME`` lines of these tokens, keep every other line."""
    try:
        existing = path.read_text().splitlines() if path.exists() else []
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}") from None
    names = {t.spec.name for t in tokens}

    def ours(line: str) -> bool:
        words = line.split()
        return (
            len(words) >= 4
            and words[0] == "machine"
            and words[1] == host
            and words[2] == "login"
            and words[3] in names
        )

    lines = [line for line in existing if not ours(line)]
    lines.extend(netrc_line(host, t) for t in tokens)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret_file(path, "\n".join(lines) + "\n")
    except OSError as e:
        raise ProvisionError(f"cannot write {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# The pull side: what a Nix client needs to substitute from the caches


@dataclass(frozen=True)
class PullSettings:
    """One cache as a Nix client uses it."""

    cache: str
    substituter: str
    public_key: str | None
    public: bool


NIX_CONFIG_FORMATS = (".json", ".nix")


def check_nix_config_path(path: Path) -> None:
    if path.suffix not in NIX_CONFIG_FORMATS:
        raise ConfigError(
            f"--nix-config {path}: the name must end in .json or .nix (that chooses the format)"
        )
    if path.is_dir():
        raise ConfigError(f"--nix-config {path}: is a directory")


def nix_settings(caches: Sequence[PullSettings]) -> dict[str, list[str]]:
    """``nix.settings``-shaped values; caches without a known key get no trusted key."""
    return {
        "substituters": [c.substituter for c in caches],
        "trusted-public-keys": [c.public_key for c in caches if c.public_key],
    }


def _nix_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def render_nix_config(caches: Sequence[PullSettings], source: str) -> str:
    lines = [
        f"# Written by `hookd provision` from {source}; do not edit (it is rewritten).",
        "# nix.settings-shaped: `nix.settings = import ./this-file.nix;` (or merge it).",
        "{",
    ]
    for key, values in nix_settings(caches).items():
        lines.append(f"  {key} = [")
        lines.extend(f"    {_nix_string(v)}" for v in values)
        lines.append("  ];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_json_config(caches: Sequence[PullSettings]) -> str:
    return json.dumps(nix_settings(caches), indent=2) + "\n"


def write_nix_config(path: Path, caches: Sequence[PullSettings], source: str) -> None:
    content = (
        render_json_config(caches) if path.suffix == ".json" else render_nix_config(caches, source)
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_file(path, content, mode=0o644)  # public keys and URLs: no secret
    except OSError as e:
        raise ProvisionError(f"cannot write {path}: {e.strerror or e}") from None
