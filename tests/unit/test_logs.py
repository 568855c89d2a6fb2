"""Log lines: one JSON object each, with the logger's name, for the project's loggers and the standard
library's alike; exceptions as structured tracebacks that never carry local variables."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from edge.ops.logs import configure, get


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure("info", out)
    yield out
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_project_and_standard_library_lines_are_json_with_their_logger_name(lines):
    get("edge.daemon").info("started", frames="tcp://*:5555")
    get("edge.daemon").debug("below the level")
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 0.2)
    first, second = records(lines)
    assert first["event"] == "started" and first["logger"] == "edge.daemon" and first["level"] == "info"
    assert first["frames"] == "tcp://*:5555" and first["timestamp"].endswith("Z")
    assert second == {
        "event": "Executing <Task> took 0.200 seconds",
        "level": "warning",
        "logger": "asyncio",
        "timestamp": second["timestamp"],
    }


def test_exceptions_are_structured_and_keep_no_locals(lines):
    password = "pw-3b1e-do-not-log"
    try:
        raise ConnectionError(f"broker refused {len(password)}")
    except ConnectionError:
        get("edge.publish.mqtt").exception("connect_failed")
    (line,) = records(lines)
    (exc,) = line["exception"]
    assert exc["exc_type"] == "ConnectionError" and exc["frames"][-1]["name"].startswith("test_exceptions")
    assert password not in lines.getvalue()
