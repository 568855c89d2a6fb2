"""The one thread every SQLite call of the daemon runs on (the outbox and the calibration store), awaited from
the event loop: SQLite's blocking calls never hold the loop, and one thread keeps them in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

_R = TypeVar("_R")
_Ts = TypeVarTuple("_Ts")


class AsyncDb:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def __call__(self, fn: Callable[[*_Ts], _R], /, *args: *_Ts) -> _R:
        """``fn(*args)`` on the database thread; its result (or its exception) here."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def close(self) -> None:
        """Wait for the calls already queued, then end the thread; a later call raises ``RuntimeError``."""
        self._thread.shutdown(wait=True)
