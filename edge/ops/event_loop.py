"""The daemon's event loop: uvloop (libuv underneath) by default, the standard library's on request (``event_loop``).
On the ceiling bench the event loop's own work (waking for sockets and threads, running callbacks) is most of the
daemon's CPU that no stage names; uvloop does that work in C. The only module that imports uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from edge.config import EventLoop

_R = TypeVar("_R")


def loop_factory(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop of ``kind`` (None: the standard library's default)."""
    return uvloop.new_event_loop if kind == "uvloop" else None


def run(main: Coroutine[Any, Any, _R], kind: EventLoop) -> _R:
    """``main`` to its end on a new loop of ``kind``, closed after (as ``asyncio.run`` does)."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
