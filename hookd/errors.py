"""Error types. A target classifies each failure once; the pusher acts on the class."""

from __future__ import annotations

from collections.abc import Callable

# Exit status of every hookd command: the same for `hookd …`, `hookd provision` and
# `attic-provision`.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class HookdError(Exception):
    """Base class for every error hookd reports to a user."""

    def __str__(self) -> str:
        return f"error: {super().__str__()}"


class ConfigError(HookdError):
    """The configuration (file, key or value) is wrong; the message says which and what is expected."""


class QueueError(HookdError):
    """A queue transaction failed as a whole (disk full, database locked past the busy timeout,
    I/O error): nothing of it was stored. The writer keeps running; the caller reports the error
    (the hook then spools) and the next transaction tries again."""


class NixError(HookdError):
    """A nix CLI call failed or timed out."""


class PushError(HookdError):
    """A push to a target failed. Subclasses say what the pusher does about it."""

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind  # Attic's error name (e.g. "NoSuchCache") when the server sent one

    def __str__(self) -> str:
        return self.message


class TransientError(PushError):
    """Connect errors, timeouts, resets, 5xx, 408, 429: retried with backoff, then a due time."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message, status=status, kind=kind)
        self.retry_after = retry_after


class AuthError(PushError):
    """401/403: the token is missing, invalid or lacks a permission. Parked until the token changes."""


class ParkedError(PushError):
    """The target cannot accept anything until a person acts (e.g. the cache does not exist)."""


class CacheGoneError(ParkedError):
    """The cache does not exist (any more): whatever it was known to hold must be asked again."""


class TlsConfigError(ParkedError):
    """A configuration error in how the server is reached over TLS: its certificate is not
    trusted, it wants a client certificate, a configured CA/certificate file is unusable, or it
    does not speak TLS. Parked with a message naming the server and the key to set; retrying or
    falling back to plain HTTP cannot help."""


class PermanentError(PushError):
    """This path can never be pushed as things stand (e.g. 413 from a proxy). Dead-lettered."""


class CorruptUploadError(PushError):
    """The server or the local stream disagreed on a NAR hash/size: retried once, then failed."""


class ServerUnreachableError(TransientError):
    """The server could not be reached at all (connect error/timeout) after the retries."""


class DeadlineError(TransientError):
    """A request outlived its total deadline (a server trickling bytes keeps each read short)."""


class BadAnswerError(TransientError):
    """A server answer outside the Attic API contract (wrong JSON shape, too large, not JSON).
    Transient: a proxy's error page or a half-upgraded server is usually temporary; whatever
    was cached from the server is dropped so the next attempt starts from a fresh answer."""


class RedirectError(ParkedError):
    """The server answered 3xx. hookd never follows redirects with a token; the endpoint in the
    configuration has to change, so the target waits for a person (the message says how)."""


class ProvisionError(HookdError):
    """`hookd provision`: the server, the credentials or the current state prevent provisioning
    (exit 1; a ConfigError, exit 2, means the YAML or the command line is wrong)."""


def exit_status(error: HookdError) -> int:
    """A wrong configuration or command line is a usage error (2); anything else a failure (1)."""
    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILURE


def run_command(body: Callable[[], int], report: Callable[[str], None]) -> int:
    """Run a command the one way every hookd command ends: a HookdError is reported (its
    message already says "error: ...") and becomes the exit status; Ctrl-C exits 130."""
    try:
        return body()
    except HookdError as e:
        report(str(e))
        return exit_status(e)
    except KeyboardInterrupt:
        report("error: interrupted")
        return EXIT_INTERRUPTED
