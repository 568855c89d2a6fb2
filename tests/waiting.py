"""Waiting for an outcome in a test without timing it: poll until it holds, up to a bound only a failure reaches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout_s: float, every_s: float = 0.05) -> bool:
    """Whether ``predicate`` holds before ``timeout_s`` has passed (looked at every ``every_s``)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(every_s)
    return False
