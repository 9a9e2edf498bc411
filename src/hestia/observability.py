"""Logging (structlog) and request ids.

Logs are JSON lines on stderr, or rendered for people when stderr is a terminal. Every event has
a name (`backend_ready`, `request`, …) and fields; request events carry the request id that is
also echoed to the client in `X-Request-ID`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

import structlog

__all__ = ["configure_logging", "iso_time", "request_id_from"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_MAX_REQUEST_ID = 128


def configure_logging(level: str = "info", *, stream: TextIO | None = None,
                      fmt: str = "auto") -> None:
    """Set up structlog once for the process. `fmt` is `json`, `console` or `auto` (console on a
    terminal, JSON otherwise)."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if console
        else structlog.processors.JSONRenderer())
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # Hypercorn (and any library) logs through the standard library: render those records the
    # same way, so the output stays one format. Hypercorn's own "Running on" is left out at
    # INFO, since `gateway_listening` says it; its warnings and errors (with tracebacks) stay.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if console else [structlog.processors.format_exc_info]),
            renderer,
        ],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           stamp]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, _LEVELS[level]))


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-ID` when it is a sane token, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= _MAX_REQUEST_ID and all(33 <= c < 127 for c in value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()  # as random as a uuid4, at half the cost


def iso_time(ts: float | None) -> str | None:
    """A wall-clock timestamp as the API shows it: `2026-11-24T10:00:00.123Z` (None stays)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
