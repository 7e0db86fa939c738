"""hookd: push every Nix build result to binary caches without slowing or failing a build."""

from __future__ import annotations

__version__ = "0.1.0"
