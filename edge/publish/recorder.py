"""Outcomes to durable records, then replies, then announcements.

A batch's result rows, event rows and open-wafer dies go to the outbox in one transaction (shared with the batches
that came while the commit before was syncing: ``edge.publish.group_commit``); only then is each
tool answered (the reply bytes come from the recorded row, so a resent frame gets the same answer), the events
go to the local feed and the publisher, and calibration books the batch. When the outbox cannot take the batch,
nothing is recorded and every frame is answered ``busy outbox_unavailable``: the tool resends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from calibration.errors import CalibrationError
from edge.capture.keeper import Keeper
from edge.capture.record import BORDERLINE, Capture, capture_of
from edge.decision.thresholds import Calibration, CalibrationRows
from edge.errors import OutboxError
from edge.flow import EventRow, Frame, Outcome, WaferKey
from edge.ingest.admission import Turnaround
from edge.ingest.wire import encode_reply, error_reply
from edge.ops.logs import get
from edge.ops.stage_cpu import clock
from edge.publish.events import EventIds
from edge.publish.group_commit import GroupCommit
from edge.publish.outbox import Outbox, Write
from edge.publish.records import Stamp, records
from edge.shared import Shared
from edge.watch.guard import GuardedWatch
from edge.watch.line_watch import Summaries, die_row

log = get("edge.publish.recorder")


class ReplySocket(Protocol):
    async def send(self, identity: bytes, reply: bytes) -> None: ...


class Recorder:
    def __init__(
        self,
        shared: Shared,
        outbox: Outbox,
        socket: ReplySocket,
        turnaround: Turnaround,
        calibration: Calibration,
        watch: GuardedWatch,
        ids: EventIds,
        announce: Callable[[list[EventRow]], None],
        captures: Keeper | None = None,
    ) -> None:
        self.cfg = shared.cfg
        self._db = shared.db
        self._calibration_db = shared.calibration_db
        self._outbox = outbox
        self._socket = socket
        self._inflight = shared.inflight
        self._turnaround = turnaround
        self._calibration = calibration
        self._watch = watch
        self._ids = ids
        self._metrics = shared.metrics
        self._announce = announce
        self._health = shared.health  # the models Triton serves, for the events
        self._captures = captures
        write_all = shared.metrics.stage_cpu.timed("outbox", outbox.record_all)  # on the outbox thread
        self._commit = GroupCommit(shared.db, write_all, shared.metrics.outbox_group.observe)
        self._apply = shared.metrics.stage_cpu.timed("calibration", calibration.apply)  # on the calibration thread
        # told each batch's outcomes and event ids once recorded (the model lifecycle's review guardrails)
        self.on_recorded: Callable[[list[Outcome], list[str | None]], None] | None = None

    async def record_and_answer(self, outcomes: list[Outcome]) -> None:
        """Record a batch's outcomes, then answer each frame's tool, then announce the events."""
        cfg, cpu = self.cfg, clock()
        stamp = Stamp(cfg.station, cfg.mqtt.prefix, self._health.models, time.monotonic(), time.time())
        results, events, event_ids, captures = [], [], [], []
        for outcome in outcomes:
            event_id = self._ids.new() if outcome.event_decision else None
            h, v = outcome.frame.header, outcome.verdict
            facts = self._calibration.facts(h.recipe_id, h.tool_id, v.top_k[0][0] if v and v.top_k else "")
            capture = self._capture(outcome, event_id, outcome.models or stamp.models, stamp.wall)
            result, event = records(outcome, event_id, stamp, facts, capture is not None and event_id is not None)
            results.append(result)
            event_ids.append(event_id)
            if event:
                events.append(event)
            if capture:
                captures.append(capture)
            self._count(outcome)
        events += self._watch(self._watch.watch.results, outcomes, time.monotonic()) or []
        dies = [die_row(o) for o in outcomes]
        calibration = self._calibration.rows(outcomes, event_ids, stamp.models)
        batch = (self._ids.new(), calibration.dumps()) if calibration is not None else None
        t0 = time.monotonic()
        keeper = self._captures if captures else None
        if keeper is not None:
            keeper.expect(captures)
        self._metrics.stage_cpu.add("record", cpu)
        try:
            await self._commit(Write(results, events, dies, (), batch))
        except OutboxError as err:
            log.error("outbox_write_failed", error=str(err), frames=len(outcomes))
            if keeper is not None:
                keeper.drop(captures)
            await self.answer_busy([o.frame for o in outcomes], "outbox_unavailable")
            return
        self._metrics.stage_latency.labels("outbox").observe(time.monotonic() - t0)
        if self.on_recorded is not None:
            self.on_recorded(outcomes, event_ids)
        cpu = clock()
        for outcome, result in zip(outcomes, results, strict=True):
            frame = outcome.frame
            self._inflight.pop(frame.key)
            await self._socket.send(frame.identity, result.reply)
            turnaround = time.monotonic() - frame.received
            self._metrics.e2e_latency.observe(turnaround)
            self._turnaround.observe(frame.header.tool_id, turnaround)
        self._metrics.stage_cpu.add("reply", cpu)
        if keeper is not None:  # after the replies; the events that show them go out once they are written
            await keeper.submit(captures, lambda: self._announce(events))
        else:
            self._announce(events)
        await self.flush_wafers()
        if batch is not None and calibration is not None:  # after the replies, on the calibration thread
            await self.apply_calibration([(batch[0], calibration)])

    async def apply_calibration(self, batches: list[tuple[str, CalibrationRows]]) -> int:
        """Move batches' calibration rows from the outbox into the calibration store (idempotent per batch); a
        store that fails leaves them in the outbox for the next start. Returns how many moved."""
        moved = []
        for batch, rows in batches:
            try:
                await self._calibration_db(self._apply, batch, rows)
            except CalibrationError as err:
                self._metrics.internal_errors.labels("calibration").inc()
                log.error("calibration_record_failed", error=str(err), batch=batch, dies=len(rows.inspected))
                break
            moved.append(batch)
        if moved:
            try:
                await self._db(self._outbox.forget_calibration, moved)
            except OutboxError as err:  # applied again at the next start: the store skips batches it has
                log.warning("calibration_rows_not_forgotten", error=str(err), batches=len(moved))
        return len(moved)

    async def record_rows(self, rows: list[EventRow], summarised: list[WaferKey] | None = None) -> None:
        """Station messages outside a batch (wafer summaries, alerts, drift events): recorded, then out.
        The open-wafer dies of the ``summarised`` wafers leave the outbox in the same transaction."""
        if not rows and not summarised:
            return
        try:
            await self._commit(Write((), rows, (), summarised or ()))
        except OutboxError as err:
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("outbox_write_failed", error=str(err), messages=len(rows))
            return
        self._announce(rows)

    async def record_summaries(self, summaries: Summaries | None) -> None:
        if summaries is not None:
            await self.record_rows(summaries.rows, summaries.wafers)

    async def flush_wafers(self) -> None:
        """Summarise the wafers that ended and have no frame in work any more."""
        in_work = {frame.wafer_key for frame in self._inflight}
        await self.record_summaries(self._watch(self._watch.watch.due, time.monotonic(), in_work.__contains__))

    async def close_wafers(self) -> None:
        """At the stop: summarise the wafers that ended; open ones go on after a restart."""
        await self.record_summaries(self._watch(self._watch.watch.close_ended))

    async def answer_busy(self, frames: list[Frame], reason: str) -> None:
        """Nothing was recorded for these frames: the tool resends them after ``retry_after_ms``."""
        for frame in frames:
            self._inflight.pop(frame.key)
            reply = error_reply(frame.header.frame_id, "busy", reason, self.cfg.ingest.busy_retry_after_ms)
            await self._socket.send(frame.identity, encode_reply(reply))

    def _capture(self, outcome: Outcome, event_id: str | None, models: dict[str, str],
                 wall: float) -> Capture | None:  # fmt: skip
        """The capture of ``outcome``'s die when it is kept: under its event's id, or a new id (a borderline pass)."""
        reason = self._captures.reason(outcome) if self._captures is not None else None
        if reason is None:
            return None
        capture_id = self._ids.new() if reason == BORDERLINE else event_id
        assert capture_id is not None, "a die kept for its event has an event id"
        return capture_of(outcome, capture_id, reason, models, wall)

    def _count(self, outcome: Outcome) -> None:
        h, verdict = outcome.frame.header, outcome.verdict
        label = verdict.defect_class if verdict else "NONE"
        self._metrics.decisions.labels(h.tool_id, h.recipe_id, outcome.decision, label).inc()
        if verdict and verdict.suppressed:
            self._metrics.suppressed.labels(h.tool_id, verdict.top_k[0][0]).inc()
