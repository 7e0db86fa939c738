"""Which paths are never pushed, and why. Every skip carries a reason that is logged.

Default rules (each can be turned off, and ``include`` overrides them):

- ``skip_drv``: derivation files (``*.drv``) — build recipes, not build results.
- ``skip_sources``: fetched or local sources — names ending in ``-source`` (``fetchFromGitHub``,
  flake inputs, ``builtins.path``), source archives (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``,
  ``.tar.xz``, ``.tar.zst``, ``.zip``, ``.7z``…) and patches (``.patch``, ``.diff``, optionally
  compressed). These are re-fetchable from their origin and often large.
- always: Nix's own throwaway profile builds, ``user-environment`` and ``env-manifest.nix``,
  which ``nix-env`` rebuilds on every change of a profile.
- ``skip_fixed_output`` (off by default): outputs of fixed-output derivations.

Unlike matching ``tmp`` anywhere in a name, nothing here catches ``tmpfiles.d`` or
``python3.11-tempora``: the rules look only at well-defined name endings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hookd.config import FilterConfig

_ARCHIVE = re.compile(
    r"\.(tar|tar\.(gz|bz2|xz|zst|lz|lzma|Z)|tgz|tbz|tbz2|txz|tzst|zip|7z|rar|gem|crate|whl)$"
)
_PATCH = re.compile(r"\.(patch|diff)(\.(gz|bz2|xz|zst))?$")
_PROFILE = frozenset({"user-environment", "env-manifest.nix"})


def _name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split("-", 1)[1] if "-" in base else base


@dataclass(frozen=True)
class Filter:
    config: FilterConfig

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include", [re.compile(p) for p in self.config.include])
        object.__setattr__(self, "_exclude", [re.compile(p) for p in self.config.exclude])

    def skip_reason(self, path: str, *, fixed_output: bool = False) -> str | None:
        """None if ``path`` should be pushed, else a short reason for the log."""
        for rx in self._exclude:  # type: ignore[attr-defined]
            if rx.search(path):
                return f"matches exclude pattern {rx.pattern!r}"
        includes = self._include  # type: ignore[attr-defined]
        if includes:
            for rx in includes:
                if rx.search(path):
                    return None
            return "matches no include pattern"
        return self._default_rule(path, fixed_output=fixed_output)

    def _default_rule(self, path: str, *, fixed_output: bool) -> str | None:
        name = _name(path)
        if self.config.skip_drv and name.endswith(".drv"):
            return "derivation file (.drv)"
        if self.config.skip_sources:
            if name.endswith("-source") or name == "source":
                return "source (name ends in -source)"
            if _ARCHIVE.search(name):
                return "source archive"
            if _PATCH.search(name):
                return "patch file"
        if name in _PROFILE:
            return "nix-env profile build"
        if self.config.skip_fixed_output and fixed_output:
            return "fixed-output derivation (filter.skip_fixed_output)"
        return None
