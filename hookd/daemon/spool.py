"""The spool: imports the request files the hook wrote while the daemon was unreachable.

Each file is read off the event loop with O_NOFOLLOW | O_NONBLOCK (a symlink or a FIFO planted
in the spool can neither redirect nor block the read), must be a regular file of bounded size,
and is deleted only after its request is committed to the queue. Anything else is moved to the
quarantine directory; quarantining can fail (a file in its way, a read-only directory) but
never stops the import of the other files.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from hookd import metrics
from hookd import protocol as proto
from hookd.queue import Queue

log = structlog.get_logger("hookd.daemon")

QUARANTINE = "corrupt"
MAX_SPOOL_FILE = proto.MAX_MESSAGE_BYTES + 2
RESCAN_MS = 5000
# The hook renames its hidden temp file within milliseconds; one this old was abandoned by a
# hook that died or hit a full disk between write and rename.
STALE_TMP_SECONDS = 600.0


class SpoolFileError(Exception):
    """A spool entry that is not a readable, bounded, regular file."""


def read_spool_file(path: Path, limit: int = MAX_SPOOL_FILE) -> bytes:
    """The bytes of one spool file; blocking, so call it in a thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SpoolFileError("a symbolic link, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpoolFileError("not a regular file")
        if st.st_size > limit:
            raise SpoolFileError(f"{st.st_size} bytes, more than the {limit} a request may have")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew after fstat
            raise SpoolFileError(f"more than the {limit} bytes a request may have")
        return b"".join(chunks)
    finally:
        os.close(fd)


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        queue: Queue,
        stopping: asyncio.Event,
        on_import: Callable[[], None],
    ) -> None:
        self.directory = directory
        self.queue = queue
        self.stopping = stopping
        self.on_import = on_import
        # Files that could not be moved to quarantine: skipped (not re-logged) while they exist.
        self._stuck: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def quarantine_dir(self) -> Path:
        return self.directory / QUARANTINE

    def _names(self) -> list[str]:
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        self._stuck &= set(entries)
        self._clean_tmp([n for n in entries if n.startswith(".") and n.endswith(".tmp")])
        return sorted(
            n
            for n in entries
            if not n.startswith(".") and n.endswith(".json") and n not in self._stuck
        )

    def _clean_tmp(self, names: list[str]) -> None:
        now = time.time()
        for name in names:
            path = self.directory / name
            try:
                st = path.lstat()
                if now - st.st_mtime > STALE_TMP_SECONDS:
                    path.unlink()
                    log.info("spool.stale_tmp_removed", file=str(path))
            except OSError:
                continue

    async def import_all(self) -> int:
        # One import at a time: the watcher and `wait` both call this.
        async with self._lock:
            return await self._import_all()

    async def _import_all(self) -> int:
        names = await asyncio.to_thread(self._names)
        imported = 0
        for name in names:
            path = self.directory / name
            try:
                raw = await asyncio.to_thread(read_spool_file, path)
                request = proto.parse_request(raw.strip())
                if not isinstance(request, proto.Enqueue):
                    raise proto.ProtocolError(
                        "bad-op", "spool files hold enqueue requests, not another op"
                    )
            except FileNotFoundError:
                continue
            except (proto.ProtocolError, SpoolFileError, OSError) as e:
                await asyncio.to_thread(self.quarantine, path, str(e))
                continue
            await self.queue.add_request(request.drv_path, request.out_paths, "spool")
            path.unlink(missing_ok=True)  # only after the commit above
            metrics.record_requests("spool", request.source)
            imported += 1
        if imported:
            log.info("spool.imported", files=imported)
            self.on_import()
        return imported

    def quarantine(self, path: Path, reason: str) -> None:
        """Move ``path`` out of the way; on any failure, remember it and carry on."""
        metrics.record_quarantined()
        moved_to = self.quarantine_dir / path.name
        try:
            if not self.quarantine_dir.is_dir() or self.quarantine_dir.is_symlink():
                try:
                    self.quarantine_dir.mkdir()
                except FileExistsError:
                    # Something not a directory holds the name: keep the file in the spool
                    # under a name the import ignores.
                    moved_to = path.with_name(path.name + ".corrupt")
            os.replace(path, moved_to)
        except OSError as e:
            self._stuck.add(path.name)
            log.error(
                "spool.corrupt",
                file=str(path),
                reason=reason,
                quarantine_failed=f"{type(e).__name__}: {e}",
                fix=f"move or delete {path} by hand",
            )
            return
        log.error("spool.corrupt", file=str(path), moved_to=str(moved_to), reason=reason)

    async def watch(self) -> None:
        import watchfiles

        # A rescan on every wake-up and at least every few seconds: files spooled while the
        # start-up import ran (before the watch was armed) are picked up too.
        async for _changes in watchfiles.awatch(
            self.directory,
            stop_event=self.stopping,
            debounce=50,
            step=20,
            recursive=False,
            rust_timeout=RESCAN_MS,
            yield_on_timeout=True,
        ):
            await self.import_all()
