"""structlog set-up: JSON lines when not on a TTY (journald, launchd), readable console otherwise."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup_logging(
    fmt: str = "auto",
    level: str = "info",
    stream: object = None,
    redact: structlog.typing.Processor | None = None,
) -> None:
    """Configure structlog; ``redact`` (TokenStore.processor) scrubs tokens from every event."""
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([redact] if redact is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def debug_enabled() -> bool:
    """Whether a debug line would be written: check before a per-path debug line in a hot loop,
    since each call through structlog's lazy logger proxy binds a new logger even when the
    level filters the line out (issue 14: 4 % of the daemon's CPU per tiny path)."""
    wrapper = structlog.get_config()["wrapper_class"]
    check = getattr(wrapper, "is_enabled_for", None)
    return check is None or bool(check(None, logging.DEBUG))
