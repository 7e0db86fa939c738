"""Pin queued paths with GC roots until every target has them, so garbage collection cannot
remove a path between its build and its upload. A symlink anywhere below Nix's gcroots
directory is a root; removing it releases the path."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger("hookd.gcroots")


class GcRoots:
    def __init__(self, directory: Path, *, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        if enabled:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                log.warning(
                    "gcroots.disabled",
                    directory=str(directory),
                    error=e.strerror,
                    consequence="queued paths are not pinned; a collected path is skipped with a log line",
                )
                self.enabled = False

    def _link(self, path: str) -> Path:
        return self.directory / os.path.basename(path)

    def pin(self, paths: Iterable[str]) -> None:
        if not self.enabled:
            return
        for path in paths:
            link = self._link(path)
            try:
                os.symlink(path, link)
            except FileExistsError:
                pass
            except OSError as e:
                log.warning("gcroots.pin_failed", path=path, error=e.strerror)

    def release_except(self, active: set[str]) -> int:
        """Remove every root whose path has no more work; returns how many were removed."""
        if not self.enabled:
            return 0
        keep = {os.path.basename(p) for p in active}
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        for entry in entries:
            if entry.name not in keep:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
        return removed

    def count(self) -> int:
        if not self.enabled:
            return 0
        try:
            return sum(1 for _ in os.scandir(self.directory))
        except OSError:
            return 0
