"""The daemon's event loop (edge.ops.event_loop): uvloop unless the config asks for the standard library's, either
one running a coroutine with signal handlers, threads handing results back, and the loop closed at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest
import uvloop

from edge.config import parse_config
from edge.ops import event_loop


def test_uvloop_is_the_default_and_asyncio_can_be_asked_for():
    minimal = {"tools": [{"id": "AOI-01"}], "recipes": {"R1": {}}}
    assert parse_config(minimal).event_loop == "uvloop"
    assert parse_config({**minimal, "event_loop": "asyncio"}).event_loop == "asyncio"


@pytest.mark.parametrize(("kind", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_either_loop_runs_the_daemons_kind_of_work(kind, loop_type):
    async def main() -> tuple[asyncio.AbstractEventLoop, int, str]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)  # as the daemon's SIGTERM handler
        loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(stop.wait(), 5)
        loop.remove_signal_handler(signal.SIGUSR1)
        from_thread = await loop.run_in_executor(None, sum, [1, 2, 3])
        told = asyncio.Event()
        threading.Thread(target=loop.call_soon_threadsafe, args=(told.set,)).start()  # as paho's thread does
        await asyncio.wait_for(told.wait(), 5)
        return loop, from_thread, type(loop).__module__

    loop, from_thread, module = event_loop.run(main(), kind)
    assert isinstance(loop, loop_type) and from_thread == 6 and loop.is_closed()
    assert module.startswith("uvloop") == (kind == "uvloop")
