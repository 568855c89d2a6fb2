"""Captures on a running station: chosen as a batch is recorded, written after its replies, and the events that
show them released only then.

The reply path never waits for a capture: the Recorder answers the tools first and hands the batch's captures to
``submit``, a bounded queue; ``run`` (a task of its own) encodes and writes them on the store's thread, releases the
batch's held events to the publisher and announces them. An event therefore never goes out before its capture
exists. A capture whose write fails, or that finds the queue full (a disk that cannot keep up never slows the
inspection), becomes a tombstone that says so, and its event still goes out. ``settle`` (at the start and every
health round) releases what a stopped run or a failed release left held, recording captures never written as such;
``finish`` waits for the queue at a stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from edge.capture.record import Capture, capture_reason
from edge.capture.store import CaptureStore
from edge.errors import CaptureError, OutboxError
from edge.flow import Outcome
from edge.ops.async_db import AsyncDb
from edge.ops.logs import get
from edge.publish.outbox import Outbox
from edge.shared import Shared

log = get("edge.capture.keeper")

Thresholds = Callable[[str, str, str], float]  # (recipe, tool, class) -> confidence threshold in force
QUEUE_BATCHES = 64  # batches of captures waiting for the disk; beyond it they are given up, never waited for


class Keeper:
    def __init__(self, shared: Shared, store: CaptureStore, thread: AsyncDb, outbox: Outbox,
                 thresholds: Thresholds) -> None:  # fmt: skip
        self.cfg = shared.cfg.capture
        self._store = store
        self._thread = thread
        self._db = shared.db
        self._outbox = outbox
        self._thresholds = thresholds
        self._metrics = shared.metrics
        self._write = shared.metrics.stage_cpu.timed("capture", store.write)  # on the store's thread
        self._writing: set[str] = set()  # event ids whose captures are being written now
        self._queue: asyncio.Queue[tuple[Sequence[Capture], Callable[[], None]]] = asyncio.Queue(QUEUE_BATCHES)
        self._metrics.capture_quota.set(self.cfg.max_bytes)
        self._metrics.capture_bytes.set(store.used_bytes)

    def reason(self, outcome: Outcome) -> str | None:
        """Why this die is kept (``edge.capture.record.capture_reason``), None when it is not."""
        h = outcome.frame.header

        def threshold_of(name: str) -> float:
            return self._thresholds(h.recipe_id, h.tool_id, name)

        return capture_reason(outcome, threshold_of, self.cfg.borderline_margin)

    def expect(self, captures: Sequence[Capture]) -> None:
        """These captures' events are about to be recorded held: ``settle`` leaves them to ``keep`` (or ``drop``)."""
        self._writing.update(c.event_id for c in captures if c.event_id)

    def drop(self, captures: Sequence[Capture]) -> None:
        """Their batch was not recorded after all."""
        self._writing.difference_update(c.event_id for c in captures if c.event_id)

    async def submit(self, captures: Sequence[Capture], then: Callable[[], None]) -> None:
        """Queue a batch's captures (its replies are sent); ``then`` (announce the batch's events) runs once they are
        written. A full queue gives them up at once: tombstones, released events, ``then``."""
        try:
            self._queue.put_nowait((captures, then))
        except asyncio.QueueFull:
            self._metrics.capture_failures.labels("queue_full").inc(len(captures))
            log.error("capture_queue_full", captures=len(captures), queued_batches=QUEUE_BATCHES)
            try:
                await self._tombstone([c.capture_id for c in captures], "queue_full", captures)
                await self._release([c.event_id for c in captures if c.event_id])
            finally:
                self.drop(captures)
                then()

    async def run(self) -> None:
        """Write the queued batches in order, each followed by its ``then``."""
        while True:
            captures, then = await self._queue.get()
            try:
                await self.keep(captures)
            finally:
                self._queue.task_done()
                then()

    async def finish(self, timeout_s: float) -> bool:
        """At a stop: wait until every queued capture is written; False when the time ran out."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def keep(self, captures: Sequence[Capture]) -> None:
        """Write ``captures`` (after their frames were answered), then release their events."""
        held = [c.event_id for c in captures if c.event_id]
        try:
            t0 = time.monotonic()
            try:
                written = await self._thread(self._write, captures)
            except CaptureError as err:
                self._metrics.capture_failures.labels("write_failed").inc(len(captures))
                log.error("capture_write_failed", error=str(err), captures=len(captures))
                await self._tombstone([c.capture_id for c in captures], "write_failed", captures)
            else:
                self._metrics.capture_write.observe(time.monotonic() - t0)
                for capture in captures:
                    self._metrics.captures.labels(capture.reason).inc()
                self._counted(written.pruned_for_quota, "quota")
            if held:
                await self._release(held)
        finally:
            self.drop(captures)

    async def settle(self) -> None:
        """Release held events that no write is working on: a capture the store has (kept or gone) is settled; one
        it never got was lost with a stopped run and is recorded so."""
        try:
            held = [e for e in await self._db(self._outbox.held_events) if e not in self._writing]
        except OutboxError as err:
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("held_events_unreadable", error=str(err))
            return
        if not held:
            return
        missing = []
        for event_id in held:
            try:
                if await self._thread(self._store.get, event_id) is None:
                    missing.append(event_id)
            except CaptureError as err:
                log.error("capture_index_unreadable", error=str(err))
                missing.append(event_id)
        if missing:
            log.warning("captures_not_written", events=len(missing))
            await self._tombstone(missing, "not_written")
        await self._release(held)

    async def prune(self) -> None:
        try:
            pruned = await self._thread(self._store.prune)
        except CaptureError as err:
            self._metrics.internal_errors.labels("capture").inc()
            log.error("capture_prune_failed", error=str(err))
            return
        self._counted(pruned["retention"], "retention")
        self._counted(pruned["quota"], "quota")
        if any(pruned.values()):
            log.info("captures_pruned", **pruned)

    def _counted(self, n: int, why: str) -> None:
        if n:
            self._metrics.captures_pruned.labels(why).inc(n)
        self._metrics.capture_bytes.set(self._store.used_bytes)

    async def _tombstone(self, capture_ids: list[str], why: str, facts: Sequence[Capture] = ()) -> None:
        try:
            await self._thread(self._store.mark_gone, capture_ids, why, facts)
        except CaptureError as err:
            self._metrics.internal_errors.labels("capture").inc()
            log.error("capture_tombstone_failed", error=str(err), reason=why)

    async def _release(self, event_ids: list[str]) -> None:
        try:
            await self._db(self._outbox.release, event_ids)
        except OutboxError as err:  # held until the next settle
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("events_release_failed", error=str(err), events=len(event_ids))
