"""Every call of the nix CLI. Each has a timeout and returns typed values, never raw processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from hookd import nar
from hookd.errors import NixError
from hookd.models import PathInfo, nix32_encode, sha256_digest

log = structlog.get_logger("hookd.nix")

# path-info and friends take paths on argv; stay well under ARG_MAX.
ARG_CHUNK = 1000
DUMP_CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SMALL_NAR = 1 << 20  # NARs up to this size are built in-process (verified against narHash)
_JSON_FORMAT_FLAG: dict[str, bool] = {}  # nix executable -> has `path-info --json-format`
# ... and up to this size on the event loop itself: a few file reads cost less than the two
# thread hops of asyncio.to_thread (issue 14: 4 % of the CPU per tiny path).
INLINE_NAR = 64 << 10


@dataclass(frozen=True)
class Nix:
    """Where the nix binaries live and how long a call may take."""

    bin_dir: Path | None = None
    timeout: float = 120.0
    dump_timeout: float = 3600.0
    # Builds come first: every nix process the daemon starts runs at this niceness (the
    # daemon itself does not, so that it accepts hooks promptly on a busy machine).
    nice: int = 0

    def _lower_priority(self, pid: int) -> None:
        # Right after the spawn rather than in a preexec_fn (unsafe in a threaded process);
        # the child's own children inherit it.
        if self.nice <= 0:
            return
        try:
            current = os.getpriority(os.PRIO_PROCESS, pid)
            if self.nice > current:
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)
        except OSError:  # already exited, or not ours to change
            pass

    def exe(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir else name

    def env(self) -> dict[str, str]:
        # The hook's NIX_CONFIG carries the whole daemon config (post-build-hook included);
        # never let a child nix re-run our hook or inherit secrets from our environment.
        keep = (
            "PATH",
            "HOME",
            "NIX_REMOTE",
            "NIX_STORE_DIR",
            "NIX_STATE_DIR",
            "NIX_CONF_DIR",
            "NIX_USER_CONF_FILES",
            "TMPDIR",
            "LANG",
            "LC_ALL",
            "XDG_CACHE_HOME",
        )
        env = {k: v for k, v in os.environ.items() if k in keep}
        env["NIX_CONFIG"] = "post-build-hook =\nexperimental-features = nix-command"
        return env

    # -- synchronous core ------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True) -> str:
        return self.run_process(argv, timeout=timeout, check=check).stdout

    def run_process(
        self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.exe(argv[0]), *argv[1:]]
        limit = self.timeout if timeout is None else timeout
        log.debug("nix.run", argv=argv)
        try:
            with subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="surrogateescape",
                env=self.env(),
            ) as child:
                self._lower_priority(child.pid)
                try:
                    out, err = child.communicate(timeout=limit)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.communicate()
                    raise
        except subprocess.TimeoutExpired:
            raise _timed_out(argv, limit) from None
        except FileNotFoundError:
            raise _not_found(argv) from None
        proc = subprocess.CompletedProcess(argv, child.returncode, out, err)
        if check and proc.returncode != 0:
            raise _failed(argv, proc.returncode, proc.stderr.strip()[-2000:])
        return proc

    def stream_lines(self, argv: Sequence[str], *, timeout: float | None = None) -> Iterator[str]:
        """The non-empty lines of a nix command's stdout, one at a time (each at most 64 KiB),
        for outputs too large to hold; killed at the timeout like every other call."""
        argv = [self.exe(argv[0]), *argv[1:]]
        limit = self.timeout if timeout is None else timeout
        log.debug("nix.stream", argv=argv)
        expired = threading.Event()
        with tempfile.TemporaryFile() as err:
            try:
                child = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    errors="surrogateescape",
                    env=self.env(),
                )
            except FileNotFoundError:
                raise _not_found(argv) from None
            self._lower_priority(child.pid)

            def expire() -> None:
                expired.set()
                child.kill()

            timer = threading.Timer(limit, expire)
            timer.start()
            try:
                assert child.stdout is not None
                while line := child.stdout.readline(1 << 16):
                    if line := line.strip():
                        yield line
                returncode = child.wait()
            finally:
                timer.cancel()
                if child.poll() is None:
                    child.kill()
                child.wait()
                if child.stdout is not None:
                    child.stdout.close()
            if expired.is_set():
                raise _timed_out(argv, limit)
            if returncode != 0:
                err.seek(0)
                message = err.read(4096).decode("utf-8", "replace").strip()
                raise _failed(argv, returncode, message)

    # -- queries ---------------------------------------------------------------------------

    def path_info(self, paths: Iterable[str], *, recursive: bool = False) -> list[PathInfo]:
        """``nix path-info [--recursive] --json``; invalid paths are left out (not raised)."""
        result: dict[str, PathInfo] = {}
        paths = list(dict.fromkeys(paths))
        for i in range(0, len(paths), ARG_CHUNK):
            chunk = paths[i : i + ARG_CHUNK]
            for info in self._path_info_chunk(chunk, recursive=recursive):
                result[info.path] = info
        return list(result.values())

    def _path_info_argv(self) -> list[str]:
        """``nix path-info --json``, plus ``--json-format 2`` where Nix has it (2.33+: plain
        ``--json`` is deprecated there and announced to become an error)."""
        exe = self.exe("nix")
        if exe not in _JSON_FORMAT_FLAG:
            probe = self.run_process(
                ["nix", "path-info", "--json", "--json-format", "2", "--", self.store_dir()],
                check=False,
            )
            # Older Nix and Lix: "unrecognised flag '--json-format'"; any other outcome means
            # the flag was understood (the store dir itself is not a store path: rc 1 is fine).
            _JSON_FORMAT_FLAG[exe] = "json-format" not in probe.stderr
        return [
            "nix",
            "path-info",
            "--json",
            *(["--json-format", "2"] if _JSON_FORMAT_FLAG[exe] else []),
        ]

    def _path_info_chunk(self, paths: list[str], *, recursive: bool) -> list[PathInfo]:
        argv = self._path_info_argv()
        proc = self.run_process(
            [*argv, *(["--recursive"] if recursive else []), "--", *paths], check=False
        )
        if proc.returncode == 0 or not recursive:
            return parse_path_info(proc.stdout)
        # Nix 2.8 answers `[]` (exit 1) for the whole recursive query when one root is invalid
        # (garbage-collected): find the valid roots without --recursive (exit 0), then ask again.
        valid = [p.path for p in parse_path_info(self.run([*argv, "--", *paths], check=False))]
        if not valid:
            return []
        return parse_path_info(self.run([*argv, "--recursive", "--", *valid]))

    def query_outputs(self, drv_path: str) -> list[str]:
        out = self.run(["nix-store", "--query", "--outputs", drv_path])
        return [line for line in out.splitlines() if line]

    def derivation_outputs(self, drv_path: str) -> tuple[list[str], bool]:
        """The outputs of a .drv and whether it is fixed-output.

        Read from the .drv file itself (an ATerm in the store) when it can be: that costs no
        process, which matters because the hook fires once per build. Falls back to
        ``nix-store --query --outputs`` (content-addressed derivations have no output paths
        in the file; a remote store has no local file).
        """
        try:
            with open(drv_path, "rb") as f:
                outputs = parse_drv_outputs(f.read(1 << 20).decode("utf-8", "surrogateescape"))
        except (OSError, ValueError):
            outputs = []
        if outputs and all(path for _, path, _ in outputs):
            return [path for _, path, _ in outputs], any(algo for _, _, algo in outputs)
        return self.query_outputs(drv_path), False

    def store_dir(self) -> str:
        return os.environ.get("NIX_STORE_DIR", "/nix/store")

    def paths_registered_since(self, since: float) -> list[PathInfo]:
        """All valid store paths registered at or after ``since`` (seconds since the epoch)."""
        # `--all --json` at once is the whole store's metadata in one string (190 MiB of RSS on
        # a developer's store): list the paths, then read their metadata a chunk at a time.
        # Even the bare listing is tens of MiB on a large store: it is streamed, never held.
        found: list[PathInfo] = []
        chunk: list[str] = []

        def flush() -> None:
            infos = self._path_info_chunk(chunk, recursive=False)
            found.extend(p for p in infos if (p.registration_time or 0) >= since)
            chunk.clear()

        for path in self.stream_lines(
            ["nix", "path-info", "--all"], timeout=max(self.timeout, 600)
        ):
            chunk.append(path)
            if len(chunk) == ARG_CHUNK:
                flush()
        if chunk:
            flush()
        return found

    # -- keys, signing, copying ------------------------------------------------------------

    def generate_key(self, name: str, secret: Path, public: Path) -> None:
        self.run(["nix-store", "--generate-binary-cache-key", name, str(secret), str(public)])

    def copy_to(self, url: str, paths: Sequence[str]) -> None:
        for i in range(0, len(paths), ARG_CHUNK):
            self.run(
                ["nix", "copy", "--no-check-sigs", "--to", url, "--", *paths[i : i + ARG_CHUNK]],
                timeout=self.dump_timeout,
            )

    def sign(self, paths: Sequence[str], key_file: Path) -> None:
        for i in range(0, len(paths), ARG_CHUNK):
            self.run(
                [
                    "nix",
                    "store",
                    "sign",
                    "--key-file",
                    str(key_file),
                    "--",
                    *paths[i : i + ARG_CHUNK],
                ]
            )

    def store_info(self, url: str) -> str:
        """`nix store ping --store URL`: reach a store (2.8 prints on stderr)."""
        return self.run(["nix", "store", "ping", "--store", url])

    # -- async wrappers --------------------------------------------------------------------

    async def apath_info(self, paths: Iterable[str], *, recursive: bool = False) -> list[PathInfo]:
        return await asyncio.to_thread(self.path_info, list(paths), recursive=recursive)

    @contextlib.asynccontextmanager
    async def dump(
        self, path: str, *, nar_hash: bytes | None = None, nar_size: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream the NAR of ``path`` in chunks of up to 1 MiB, never whole in memory.

        Given the path's recorded ``nar_hash``/``nar_size`` and a NAR of at most 1 MiB, the NAR
        is built in-process (no `nix-store` process: most build outputs are small) and used only
        if it matches both; otherwise, and for larger paths, it streams `nix-store --dump`. The
        caller must consume the iterator; on exit the process is reaped (killed if the caller
        stopped early) and a non-zero exit raises NixError.
        """
        if nar_hash is not None and nar_size is not None:
            data = await self.small_nar(path, nar_hash, nar_size)
            if data is not None:
                yield _once(data)
                return
        async with self._dump_process(path) as chunks:
            yield chunks

    async def small_nar(self, path: str, nar_hash: bytes, nar_size: int) -> bytes | None:
        """The whole NAR of ``path`` built in-process when it is at most ``SMALL_NAR`` bytes
        and matches ``nar_hash``/``nar_size``; None otherwise (then use ``dump``)."""
        if nar_size > SMALL_NAR:
            return None
        if nar_size <= INLINE_NAR:
            return _small_nar(path, nar_hash, nar_size)
        return await asyncio.to_thread(_small_nar, path, nar_hash, nar_size)

    @contextlib.asynccontextmanager
    async def _dump_process(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        # Our own pipe, enlarged to 1 MiB: with the default 64 KiB one, a 500 MiB NAR costs
        # thousands of small reads and as many HTTP writes.
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, F_SETPIPE_SZ, DUMP_CHUNK)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.exe("nix-store"),
                "--dump",
                path,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.PIPE,
                env=self.env(),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._lower_priority(proc.pid)
        stdout = asyncio.StreamReader(limit=DUMP_CHUNK)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(read_fd, "rb", buffering=0)
        )
        assert proc.stderr is not None
        stderr = proc.stderr
        eof = False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal eof
            while True:
                block = await asyncio.wait_for(stdout.read(DUMP_CHUNK), self.dump_timeout)
                if not block:
                    eof = True
                    return
                yield block

        try:
            yield chunks()
        finally:
            # A caller that stopped reading (an error, or a server that answered early) leaves
            # nix-store blocked on a full pipe: kill it rather than wait for it forever.
            if not eof and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            transport.close()
            err = await stderr.read()
            rc = await proc.wait()
            if eof and rc != 0:
                raise NixError(
                    f"nix-store --dump {path} failed ({rc}): {err.decode(errors='replace').strip()}"
                )


def _small_nar(path: str, nar_hash: bytes, nar_size: int) -> bytes | None:
    try:
        data = nar.serialize(path, limit=nar_size)
    except (OSError, nar.TooLarge):
        return None
    if len(data) != nar_size or hashlib.sha256(data).digest() != nar_hash:
        log.warning("nar.mismatch", path=path, action="falling back to nix-store --dump")
        return None
    return data


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _not_found(argv: Sequence[str]) -> NixError:
    return NixError(f"{argv[0]}: not found; install Nix or set nix.bin_dir")


def _timed_out(argv: Sequence[str], limit: float) -> NixError:
    return NixError(f"`{' '.join(argv[:3])} …` timed out after {limit:g} s")


def _failed(argv: Sequence[str], returncode: int, stderr: str) -> NixError:
    return NixError(f"`{' '.join(argv[:3])} …` failed ({returncode}): {stderr}")


def path_info_entries(text: str) -> dict[str, dict[str, Any] | None]:
    """``nix path-info --json`` output of any Nix as ``{full store path: entry or None}``.

    The shapes (docs/nix-versions.md): Nix 2.8-2.18 print a list of objects with ``"path"``
    (``"valid": false`` for an invalid path); 2.19+ an object keyed by full path (``null`` for an
    invalid path); 2.33+ with ``--json-format 2``/``3`` wrap it as ``{"version", "storeDir",
    "info"}`` keyed by base name. ``None`` marks an invalid path.
    """
    if not text.strip():
        return {}
    try:
        data: Any = json.loads(text)
    except ValueError as e:
        raise NixError(f"path-info printed invalid JSON: {e}") from None
    if isinstance(data, list):
        out: dict[str, dict[str, Any] | None] = {}
        for d in data:
            if not isinstance(d, dict):
                raise NixError(f"unexpected path-info list entry of type {type(d).__name__}")
            out[str(d.get("path", ""))] = None if d.get("valid") is False else d
        return out
    if not isinstance(data, dict):
        raise NixError(f"unexpected path-info JSON of type {type(data).__name__}")
    store_dir = None
    if isinstance(data.get("version"), int) and isinstance(data.get("info"), dict):
        store_dir = str(data.get("storeDir") or "/nix/store")
        data = data["info"]
    out = {}
    for key, v in data.items():
        path = key if store_dir is None or key.startswith("/") else f"{store_dir}/{key}"
        if v is None or (isinstance(v, dict) and v.get("valid") is False):
            out[path] = None
        elif isinstance(v, dict):
            out[path] = v
        else:
            raise NixError(f"unexpected path-info entry for {key!r}: {type(v).__name__}")
    return out


def parse_path_info(text: str) -> list[PathInfo]:
    """Parse ``nix path-info --json`` of any Nix version (see :func:`path_info_entries`)."""
    infos = []
    for path, d in path_info_entries(text).items():
        if d is None or "narHash" not in d:
            continue
        try:
            info = PathInfo(
                path=path,
                nar_hash=_nar_hash(d["narHash"]),
                nar_size=int(d["narSize"]),
                references=tuple(_full(r, path) for r in d.get("references") or []),
                deriver=_full(d["deriver"], path) if d.get("deriver") else None,
                signatures=tuple(_signature(s) for s in d.get("signatures") or []),
                ca=_ca(d.get("ca")),
                registration_time=d.get("registrationTime"),
                ultimate=bool(d.get("ultimate", False)),
            )
        except (KeyError, TypeError, ValueError) as e:  # binascii.Error is a ValueError
            raise NixError(f"path-info entry for {path!r} not understood: {e!r}") from None
        infos.append(info)
    return infos


def _signature(value: Any) -> str:
    # --json-format 3 (Nix 2.35+): {"keyName": K, "sig": S}; before: the string "K:S".
    if isinstance(value, dict):
        return f"{value['keyName']}:{value['sig']}"
    return str(value)


def _nar_hash(value: Any) -> bytes:
    # Newer Nix may give a structured hash {"algorithm": "sha256", "format": F, "hash": H} where
    # F is base64, base16, nix32 or sri (Nix's hash-v1 schema; base64 when "format" is absent).
    if isinstance(value, dict):
        algo = value.get("algorithm") or value.get("algo")
        if algo != "sha256":
            raise NixError(f"unsupported narHash algorithm {algo!r}")
        fmt, text = value.get("format", "base64"), str(value["hash"])
        if fmt == "base64":
            return sha256_digest("sha256-" + text)
        if fmt in ("base16", "nix32", "base32"):
            return sha256_digest("sha256:" + text)
        if fmt == "sri":
            return sha256_digest(text if text.startswith("sha256-") else "sha256-" + text)
        raise NixError(f"unsupported narHash format {fmt!r}")
    return sha256_digest(str(value))


_CA_METHOD_PREFIX = {"text": "text:", "flat": "fixed:", "nar": "fixed:r:", "git": "fixed:git:"}


def _ca(value: Any) -> str | None:
    """The content address as narinfo's ``CA:`` string (what Attic and narinfo take).

    ``--json-format 2``+ (Nix 2.33+) gives ``{"method": M, "hash": SRI}`` instead of the string.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("method") in _CA_METHOD_PREFIX:
        algo, _, b64 = str(value["hash"]).partition("-")
        digest = base64.b64decode(b64, validate=True)
        return f"{_CA_METHOD_PREFIX[value['method']]}{algo}:{nix32_encode(digest)}"
    raise ValueError(f"content address not understood: {value!r}")


def _full(ref: str, path: str) -> str:
    """Newer Nix prints references as basenames; 2.8 prints full paths."""
    return ref if ref.startswith("/") else os.path.join(os.path.dirname(path), ref)


def _aterm_string(text: str, i: int) -> tuple[str, int]:
    if text[i] != '"':
        raise ValueError(f"expected a string at offset {i}")
    out = []
    i += 1
    escapes = {"n": "\n", "r": "\r", "t": "\t"}
    while text[i] != '"':
        ch = text[i]
        if ch == "\\":
            i += 1
            ch = escapes.get(text[i], text[i])
        out.append(ch)
        i += 1
    return "".join(out), i + 1


def parse_drv_outputs(text: str) -> list[tuple[str, str, str]]:
    """``(name, path, hash algorithm)`` of each output in a .drv's ATerm text; ValueError if
    the text is not one."""
    try:
        return _parse_drv_outputs(text)
    except IndexError:
        raise ValueError("truncated derivation") from None


def _parse_drv_outputs(text: str) -> list[tuple[str, str, str]]:
    prefix = "Derive(["
    if not text.startswith(prefix):
        raise ValueError("not a derivation in ATerm format")
    i = len(prefix)
    outputs = []
    while text[i] == "(":
        fields = []
        i += 1
        for n in range(4):
            value, i = _aterm_string(text, i)
            fields.append(value)
            expected = "," if n < 3 else ")"
            if text[i] != expected:
                raise ValueError(f"expected {expected!r} at offset {i}")
            i += 1
        outputs.append((fields[0], fields[1], fields[2]))
        if text[i] == ",":
            i += 1
    if text[i] != "]":
        raise ValueError(f"expected ']' at offset {i}")
    return outputs
