"""Accepted frames to batches: each waits for its wafer's process log (at most the join window, and not at all when
the log is not expected: ``edge.mes.join``), then for a batch
(at most the batch delay, fair across tools), then goes to the inspector; at most ``max_concurrent_batches``
are in work at once. Every batch ends recorded and answered, or answered ``busy`` when a defect cut it short."""

from __future__ import annotations

import asyncio
import time

from edge.flow import Frame, ProcessLog
from edge.inference.batcher import Batcher
from edge.inference.inspector import Inspector, not_inspected
from edge.mes.join import SKIPPED, Joiner
from edge.ops.logs import get
from edge.publish.recorder import Recorder
from edge.shared import Shared

log = get("edge.inference.batching")


class Batching:
    def __init__(self, shared: Shared, joiner: Joiner, inspector: Inspector, recorder: Recorder) -> None:
        self.cfg = cfg = shared.cfg
        self._joiner = joiner
        self._inspector = inspector
        self._recorder = recorder
        self._inflight = shared.inflight
        self._spawn = shared.spawn
        self._metrics = shared.metrics
        self._health = shared.health
        self._batcher: Batcher[Frame] = Batcher(cfg.batching.max_batch, cfg.batching.max_delay_ms / 1000)
        self._ready = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.batching.max_concurrent_batches)

    def submit(self, frame: Frame) -> None:
        """An accepted frame: batched at once when its process log is known (or no join is asked for),
        else when the log comes or the join window runs out, whichever is first."""
        window_s = self.cfg.join.window_ms / 1000
        admitted = self._joiner.admit(frame, time.monotonic(), wait=window_s > 0)
        if admitted == "waiting":
            asyncio.get_running_loop().call_later(window_s, self._expire, frame)
            return
        if admitted in SKIPPED:
            self._metrics.join_skipped.labels(frame.header.tool_id, admitted).inc()
        self._enqueue(frame)

    def on_log(self, process_log: ProcessLog) -> None:
        """A process log came: the frames of its wafer that waited for it go on (and a silent tool is heard)."""
        for frame in self._joiner.on_log(process_log, time.monotonic()):
            self._joined(frame)
        self._silent_changed()

    async def run(self) -> None:
        """Form batches as they fill or their delay runs out; each runs as its own task."""
        while True:
            await self._slots.acquire()
            batch = None
            while batch is None:
                batch = self._batcher.poll(time.monotonic())
                if batch is None:
                    self._ready.clear()
                    deadline = self._batcher.next_deadline()
                    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        await asyncio.wait_for(self._ready.wait(), timeout)
                    except TimeoutError:
                        pass
            self._metrics.queue_depth.set(len(self._batcher))
            self._spawn(self._run_batch(batch))

    async def finish(self, timeout_s: float) -> None:
        """At the stop: no frame waits for a log any more; wait (bounded) until every frame in work is answered."""
        for frame in self._joiner.release_all():
            self._enqueue(frame)
        end = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < end:
            self._ready.set()
            await asyncio.sleep(0.01)

    def _expire(self, frame: Frame) -> None:
        for released in self._joiner.expire(frame):
            self._joined(released)
        self._silent_changed()

    def _silent_changed(self) -> None:
        silent = sorted(self._joiner.silent)
        health = self._health
        if silent != health.mes_silent:
            for tool in set(silent) ^ set(health.mes_silent):
                self._metrics.mes_silent.labels(tool).set(1 if tool in silent else 0)
                if tool in silent:
                    log.warning("mes_silent", tool=tool, after_wafers=self.cfg.join.silent_after_wafers)
                else:
                    log.info("mes_heard", tool=tool)
            health.mes_silent = silent

    def _joined(self, frame: Frame) -> None:
        frame.timings["join_wait"] = time.monotonic() - frame.received
        self._metrics.stage_latency.labels("join_wait").observe(frame.timings["join_wait"])
        self._enqueue(frame)

    def _enqueue(self, frame: Frame) -> None:
        if frame.context is None:
            self._metrics.context_missing.labels(frame.header.tool_id).inc()
        if frame.note is None:
            self._metrics.notes_missing.labels(frame.header.tool_id).inc()
        self._batcher.add(frame, time.monotonic(), key=frame.header.tool_id)
        self._metrics.queue_depth.set(len(self._batcher))
        self._ready.set()

    async def _run_batch(self, batch: list[Frame]) -> None:
        try:
            started = time.monotonic()
            for frame in batch:
                frame.timings["queue"] = started - frame.received
                self._metrics.stage_latency.labels("queue").observe(frame.timings["queue"])
            live = [f for f in batch if f.deadline > started]
            outcomes = [not_inspected(f, "deadline_passed") for f in batch if f.deadline <= started]
            if live:
                outcomes += await self._inspector.inspect(live)
            await self._recorder.record_and_answer(outcomes)
        except Exception:  # a defect must cost one batch, never leave its frames unanswered
            log.exception("batch_failed", frames=len(batch))
            self._metrics.internal_errors.labels("batch").inc()
            await self._recorder.answer_busy([f for f in batch if f.key in self._inflight], "internal_error")
        finally:
            self._slots.release()
