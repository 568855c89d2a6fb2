"""structlog set-up: JSON lines on stdout (journald), the standard library's records included, and a rate limiter
for bad-input warnings."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

# What every line gets, whether it came from structlog or from the standard library (grpc, asyncio, paho).
_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """One JSON object a line on ``stream`` (stdout: journald), for the project's loggers and for records of
    the standard library's, with the logger's name and exceptions as structured tracebacks."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # structured tracebacks without the frames' locals: they could hold a password or a key
                structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    """The logger called ``name`` (its lines carry ``"logger": name``)."""
    # structlog types it Any; configure()'s wrapper_class, like structlog's default one, is a filtering bound logger
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


class RateLimited:
    """Allows one line per key every ``interval_s``; counts what it held back."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise how many lines for ``key`` were held back since the last one."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
