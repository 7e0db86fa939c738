"""The post-build hook: hand the build's paths to the daemon, or to the spool, then exit 0.

Standard library only, and nothing from the hookd package: it runs once per build as root inside
nix-daemon, so it must start fast (it can run as ``python3 -I -S hook.py``). Contract:

- reads ``DRV_PATH`` and ``OUT_PATHS`` (empty on Nix 2.8, NixOS/nix#6446: the daemon then
  resolves the outputs from the .drv);
- sends one NDJSON ``enqueue`` request over the Unix socket and waits for the acknowledgement,
  which the daemon sends only after the request is committed to its durable queue;
- the whole call is bounded by 2 s; if the socket is missing, refuses, times out or answers an
  error, the request is written atomically (temp file, fsync, rename) into the spool directory,
  which the daemon imports at start and while it runs;
- prints at most one short line to stderr, and exits 0 in every case, its own bugs included:
  a failing post-build hook would abort the user's build.
"""

import _socket  # the C module: `socket` would pull in enum, selectors… (a third of our start-up)
import os
import sys
import time

# macOS has no /run (and its root volume is read-only): the socket lives in the state directory,
# as the nix-darwin module configures it.
DEFAULT_SOCKET = (
    "/var/lib/hookd/hookd.sock" if sys.platform == "darwin" else "/run/hookd/hookd.sock"
)
DEFAULT_SPOOL = "/var/lib/hookd/spool"
BOUND = 2.0  # the whole hook, from exec to exit
SPOOL_RESERVE = 0.25  # kept back for writing the spool file and exiting


def _arg(argv: list[str], flag: str, env: str, default: str) -> str:
    if flag in argv:
        i = argv.index(flag)
        if i + 1 < len(argv):
            return argv[i + 1]
    for a in argv:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return os.environ.get(env) or default


def _json_string(text: str) -> str:
    """A JSON string literal (json.dumps semantics for str) without importing json."""
    out = ['"']
    for ch in text:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f" or ch > "\x7e":
            code = ord(ch)
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _request() -> tuple[bytes, bool]:
    """The enqueue request as one NDJSON line, and whether it carries anything at all."""
    drv = os.environ.get("DRV_PATH", "").strip()
    outs = os.environ.get("OUT_PATHS", "").split()
    fields = ['"v":1', '"op":"enqueue"', '"source":"hook"']
    fields.append('"out_paths":[' + ",".join(_json_string(p) for p in outs) + "]")
    if drv:
        fields.append('"drv_path":' + _json_string(drv))
    line = "{" + ",".join(fields) + "}\n"
    return line.encode("utf-8", "surrogateescape"), bool(drv or outs)


def _acknowledged(reply: bytes) -> bool:
    # The daemon answers compact JSON: {"v":1,"ok":true,...}. Only a positive answer counts.
    return reply.startswith(b"{") and b'"ok":true' in reply


def _send(sock_path: str, payload: bytes, deadline: float) -> None:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        while True:
            try:
                s.connect(sock_path)
                break
            except BlockingIOError:  # the listen backlog is full for a moment: the daemon is busy
                if time.monotonic() > deadline - 0.02:
                    raise
                time.sleep(0.01)
        s.sendall(payload)
        reply = b""
        while not reply.endswith(b"\n"):
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        s.close()
    if not _acknowledged(reply):
        raise RuntimeError(_reason(reply))


def _reason(reply: bytes) -> str:
    if not reply:
        return "no acknowledgement from the daemon"
    marker = b'"message":"'
    i = reply.find(marker)
    if i < 0:
        return "unexpected reply from the daemon"
    text = reply[i + len(marker) :].split(b'"', 1)[0].decode("utf-8", "replace")
    # The build log shows this line: long enough for the daemon's fix, marked where it is cut.
    return text if len(text) <= 400 else text[:399] + "…"


def _spool(spool_dir: str, payload: bytes) -> str:
    os.makedirs(spool_dir, mode=0o755, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}.json"
    tmp = os.path.join(spool_dir, "." + name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    final = os.path.join(spool_dir, name)
    try:
        try:
            view = memoryview(payload)
            while view:  # a short write (disk almost full) must not leave half a request
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        # ENOSPC and friends: leave no hidden half-written file behind (it would never be read).
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(spool_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return final


def _age() -> float:
    """Seconds since this process was started: interpreter start-up counts against the bound
    (on a loaded machine it alone can take a second)."""
    if sys.platform != "linux":
        return 0.0  # no /proc (macOS): count from here
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except Exception:  # /proc not mounted (a container or chroot): count from here
        return 0.0


def run(argv: list[str]) -> None:
    deadline = time.monotonic() + BOUND - SPOOL_RESERVE - _age()
    payload, has_paths = _request()
    if not has_paths:
        sys.stderr.write("hookd-hook: DRV_PATH and OUT_PATHS are empty; nothing to queue\n")
        return
    sock_path = _arg(argv, "--socket", "HOOKD_SOCKET", DEFAULT_SOCKET)
    try:
        if deadline - time.monotonic() < 0.05:
            raise TimeoutError("no time left after start-up")
        _send(sock_path, payload, deadline)
        return
    except Exception as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    spool_dir = _arg(argv, "--spool", "HOOKD_SPOOL_DIR", DEFAULT_SPOOL)
    try:
        where = _spool(spool_dir, payload)
        sys.stderr.write(f"hookd-hook: daemon not reachable ({reason}); spooled to {where}\n")
    except Exception as e:
        sys.stderr.write(
            f"hookd-hook: daemon not reachable ({reason}) and spool failed ({e}); "
            "run `hookd backfill` to catch up\n"
        )


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except BaseException as e:  # never fail the build, whatever happened
        try:
            sys.stderr.write(f"hookd-hook: internal error: {e!r}\n")
        except BaseException:
            pass
    try:
        sys.stderr.flush()
    except BaseException:
        pass
    return 0


if __name__ == "__main__":
    main()
    os._exit(0)
