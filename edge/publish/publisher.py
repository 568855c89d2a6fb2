"""Drains the outbox to MQTT with QoS 1: rows are marked delivered on PUBACK, never before.

At start the cursor is 0, so whatever a previous run left undelivered is replayed first. The
outbox, not paho, is what gets resent: when the link to the broker drops, paho's unacknowledged
messages are dropped (``MqttLink``) and the publisher starts again from the oldest undelivered row,
so a reconnect hands the broker everything in insertion order.

A broker's PUBACK is only as durable as the broker: one that dies loses the messages it had
accepted but neither handed to its subscribers nor saved. So when the link drops, the events the
broker acknowledged in the last ``replay_acked_s`` seconds before its last acknowledgement are
marked undelivered again and published once more (consumers de-duplicate on ``event_id``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, TypeVarTuple

from edge.ops.logs import get
from edge.ops.metrics import Metrics
from edge.ops.stage_cpu import clock
from edge.publish.mqtt import MqttLink
from edge.publish.outbox import Outbox

log = get("edge.publish.publisher")

_R = TypeVar("_R")
_Ts = TypeVarTuple("_Ts")


class RunDb(Protocol):
    """Runs a blocking outbox call ``fn(*args)`` off the event loop; awaits its result (the daemon's ``_db``)."""

    def __call__(self, fn: Callable[[*_Ts], _R], /, *args: *_Ts) -> Awaitable[_R]: ...


class Publisher:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink | None,
        metrics: Metrics,
        run_db: RunDb,
        max_inflight: int,
        replay_acked_s: float = 0.0,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._metrics = metrics
        self._db = run_db
        self._pending = metrics.stage_cpu.timed("publish", outbox.pending)  # on the outbox thread
        self._delivered = metrics.stage_cpu.timed("publish", outbox.mark_delivered)
        self._max_inflight = max_inflight
        self._replay_acked_s = replay_acked_s
        self._cursor = 0
        self._session = 0  # counts link losses: a step that awaited across one publishes nothing stale
        self._inflight: dict[int, tuple[int, str, float]] = {}  # mid -> (seq, decision, handed to paho at)
        self._acked: list[int] = []
        self._recent: deque[tuple[float, int]] = deque()  # (acknowledged at, seq), replay_acked_s back from the last
        self._replay: list[int] = []
        self._wake = asyncio.Event()
        self._stepping = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    def on_ack(self, mid: int) -> None:
        item = self._inflight.pop(mid, None)
        if item is not None:
            now = time.monotonic()
            self._acked.append(item[0])
            if self._replay_acked_s > 0:
                self._recent.append((now, item[0]))
                while self._recent[0][0] < now - self._replay_acked_s:
                    self._recent.popleft()
            self._metrics.events_published.labels(item[1]).inc()
            self._metrics.stage_latency.labels("publish").observe(now - item[2])
            self._wake.set()

    def on_link(self, connected: bool) -> None:
        """The link came up (publish what is pending) or went down (start again from the outbox)."""
        if not connected:
            self._session += 1
            self._inflight.clear()  # paho drops them too; their rows are still undelivered
            self._cursor = 0
            self._replay += [seq for _, seq in self._recent]  # on_ack keeps only the window's
            self._recent.clear()
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
        """Record acknowledgements (and take back those to replay), then hand paho as many pending
        events as the window allows. One step at a time (the shutdown drain runs beside ``run``)."""
        async with self._stepping:
            await self._step()

    async def _step(self) -> None:
        # Both lists are taken at once: every acknowledgement heard before the link dropped is marked
        # before the replay takes marks back, so none of them is marked delivered after its replay.
        acked, self._acked = self._acked, []
        replay, self._replay = self._replay, []
        if acked:
            await self._db(self._delivered, acked)
        if replay:
            await self._db(self._outbox.mark_undelivered, replay)
            self._metrics.events_republished.inc(len(replay))
            log.info("events_replayed", count=len(replay), window_s=self._replay_acked_s)
        if self._link is None:  # MQTT off: the local feed is the only consumer, nothing to wait for
            pending = await self._db(self._outbox.pending, self._cursor, 1000)
            if pending:
                await self._db(self._outbox.mark_delivered, [p.seq for p in pending])
                self._cursor = pending[-1].seq
            return
        session = self._session
        while self._link.connected and len(self._inflight) < self._max_inflight:
            room = self._max_inflight - len(self._inflight)
            pending = await self._db(self._pending, self._cursor, room)
            if not pending or session != self._session:
                break  # nothing to send, or the link dropped meanwhile: the next step starts over
            cpu = clock()
            for event in pending:
                mid = self._link.publish(event.topic, event.payload, qos=1)
                if mid is None:
                    break  # disconnected: resume from the cursor once connected again
                self._inflight[mid] = (event.seq, event.decision, time.monotonic())
                self._cursor = event.seq
            self._metrics.stage_cpu.add("publish", cpu)
            if mid is None:
                return

    async def drain(self, timeout_s: float) -> bool:
        """Publish until nothing is pending or the time is up; True when all was acknowledged."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            await self.step()
            if not self._inflight and not self._acked and not self._replay and await self.backlog() == 0:
                return True
            await asyncio.sleep(0.05)
        return False
