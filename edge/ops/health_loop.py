"""The health loop: every interval, pet systemd's watchdog while every critical task lives, then run each
health round (Triton's readiness, the outbox's backlog and quota, wafers due a summary, gauges). A round
handles its own store errors; one that raises anyway ends the loop, a critical task, and so the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from edge.ops.http import Health
from edge.ops.sdnotify import Notifier


async def health_loop(
    interval_s: float, notifier: Notifier, health: Health, rounds: Sequence[Callable[[], Awaitable[None]]]
) -> None:
    if notifier.watchdog_interval_s:
        interval_s = min(interval_s, notifier.watchdog_interval_s)
    while True:
        await asyncio.sleep(interval_s)
        if not health.stalled:  # a dead intake or batch loop must not look healthy to systemd
            notifier.watchdog()
        for round_ in rounds:
            await round_()
