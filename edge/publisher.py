"""Drains the outbox to MQTT with QoS 1: rows are marked delivered on PUBACK, never before.

At start the cursor is 0, so whatever a previous run left undelivered is replayed first.
Messages handed to paho stay in its session while the broker is away and are resent on
reconnect; the outbox still holds them until their PUBACK arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from edge.logs import get
from edge.metrics import Metrics
from edge.mqtt import MqttLink
from edge.outbox import Outbox

log = get("edge.publisher")


class Publisher:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink | None,
        metrics: Metrics,
        run_db: Callable[..., Awaitable],
        max_inflight: int,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._metrics = metrics
        self._db = run_db
        self._max_inflight = max_inflight
        self._cursor = 0
        self._inflight: dict[int, tuple[int, str, float]] = {}  # mid -> (seq, decision, handed to paho at)
        self._acked: list[int] = []
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def on_ack(self, mid: int) -> None:
        item = self._inflight.pop(mid, None)
        if item is not None:
            self._acked.append(item[0])
            self._metrics.events_published.labels(item[1]).inc()
            self._metrics.stage_latency.labels("publish").observe(time.monotonic() - item[2])
            self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def backlog(self) -> int:
        return await self._db(self._outbox.backlog)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.step()

    async def step(self) -> None:
        """Record acknowledgements, then hand paho as many pending events as the window allows."""
        if self._acked:
            acked, self._acked = self._acked, []
            await self._db(self._outbox.mark_delivered, acked)
        if self._link is None:  # MQTT off: the local feed is the only consumer, nothing to wait for
            pending = await self._db(self._outbox.pending, self._cursor, 1000)
            if pending:
                await self._db(self._outbox.mark_delivered, [p.seq for p in pending])
                self._cursor = pending[-1].seq
            return
        while self._link.connected and len(self._inflight) < self._max_inflight:
            room = self._max_inflight - len(self._inflight)
            pending = await self._db(self._outbox.pending, self._cursor, room)
            if not pending:
                break
            for event in pending:
                mid = self._link.publish(event.topic, event.payload, qos=1)
                if mid is None:
                    return  # disconnected: resume from the cursor once connected again
                self._inflight[mid] = (event.seq, event.decision, time.monotonic())
                self._cursor = event.seq

    async def drain(self, timeout_s: float) -> bool:
        """Publish until nothing is pending or the time is up; True when all was acknowledged."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            await self.step()
            if not self._inflight and not self._acked and await self.backlog() == 0:
                return True
            await asyncio.sleep(0.05)
        return False

