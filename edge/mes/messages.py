"""What the MES and engineers say to the station, over MQTT or a ZeroMQ MES gateway: process logs (joined to
frames and watched for drift), lot events (wafer ends, lot ends that drive calibration), reviews and
re-baselines. One router (a table of topics) hands each message to its handler; bad input is counted and
logged, rate-limited, and never stops the station."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from edge.decision.calibration_loop import CalibrationLoop
from edge.errors import OutboxError
from edge.flow import EventRow, LotEvent, ProcessLog, Rejected, WaferKey
from edge.ingest.zmq_sockets import MesFeed
from edge.mes.context import parse_lot_event, parse_process_log
from edge.mes.router import MessageRouter
from edge.ops.logs import get
from edge.publish.outbox import Outbox
from edge.shared import Shared
from edge.watch import rebaseline
from edge.watch.guard import GuardedWatch

log = get("edge.mes.messages")


class MesMessages:
    def __init__(
        self,
        shared: Shared,
        watch: GuardedWatch,
        joined: Callable[[ProcessLog], None],
        calibration: CalibrationLoop,
        record_rows: Callable[[list[EventRow]], Coroutine[Any, Any, None]],
        outbox: Outbox,
    ) -> None:
        self.cfg = cfg = shared.cfg
        self._watch = watch
        self._joined = joined
        self._calibration = calibration
        self._record_rows = record_rows
        self._db = shared.db
        self._outbox = outbox
        self._spawn = shared.spawn
        self._metrics = shared.metrics
        self._log_limiter = shared.log_limiter
        self.review_listeners: list[Callable[[bytes], None]] = []  # beside calibration: the canary's guardrails
        own = f"{cfg.mqtt.prefix}/{cfg.station}"
        self.router = MessageRouter(
            [
                (cfg.mqtt.mes_process_topic, self.on_process_log),
                (cfg.mqtt.mes_lot_topic, self.on_lot_event),
                (f"{own}/{cfg.calibration.reviews_topic}", self.on_review),
                (f"{own}/{cfg.drift.rebaseline_topic}", self.on_rebaseline),
            ]
        )

    async def run_zmq(self, feed: MesFeed) -> None:
        """MES messages from a ZeroMQ gateway, handled as the same topics on MQTT."""
        try:
            while True:
                message = await feed.recv()
                if message is None:
                    self.rejected(Rejected("bad_multipart", "MES gateway message is not [topic, payload]"))
                else:
                    self.router.on_message(*message)
        finally:
            feed.close()

    def on_process_log(self, payload: bytes) -> None:
        parsed = parse_process_log(payload)
        if isinstance(parsed, Rejected):
            return self.rejected(parsed)
        self._metrics.mes_messages.labels("process_log").inc()
        watched, rows = self._watch(self._watch.watch.process_log, parsed) or (parsed, [])
        if rows:
            self._spawn(self._record_rows(rows))
        self._joined(watched)

    def on_lot_event(self, payload: bytes) -> None:
        parsed = parse_lot_event(payload)
        if isinstance(parsed, Rejected):
            return self.rejected(parsed)
        self._metrics.mes_messages.labels(parsed.kind).inc()
        self._lot_event(parsed)

    def on_review(self, payload: bytes) -> None:
        self._spawn(self._calibration.review(payload))
        for listener in self.review_listeners:
            listener(payload)

    def on_rebaseline(self, payload: bytes) -> None:
        """An engineer re-baselines a tool after a service: drift and parameter statistics start again."""
        command = rebaseline.parse(payload, self.cfg.tool_ids, self.cfg.recipes)
        if isinstance(command, Rejected):
            self._metrics.rebaselines.labels(command.reason).inc()
            held = self._log_limiter.allow("rebaseline:" + command.reason)
            if held is not None:
                log.warning(
                    "rebaseline_rejected", reason=command.reason, detail=command.detail, similar_since_last=held
                )
            return
        if self._watch(self._watch.watch.repeated, command):  # the broker handed the command over again
            self._metrics.rebaselines.labels("repeated").inc()
            log.info("rebaseline_repeated", tool_id=command.tool_id, command_id=command.command_id)
            return
        rows = self._watch(self._watch.watch.rebaseline, command)
        if rows is None:
            return
        self._metrics.rebaselines.labels("accepted").inc()
        log.info(
            "rebaselined",
            tool_id=command.tool_id,
            recipes=list(command.recipes),
            by=command.by,
            reason=command.reason,
            drift_cleared=len(rows),
        )
        self._spawn(self._record_rows(rows))
        self._spawn(self._watch.save())  # a restart must not bring the old reference back

    def rejected(self, rejected: Rejected) -> None:
        self._metrics.mes_rejected.labels(rejected.reason).inc()
        held = self._log_limiter.allow("mes:" + rejected.reason)
        if held is not None:
            log.warning("mes_message_rejected", reason=rejected.reason, detail=rejected.detail, similar_since_last=held)

    def _lot_event(self, event: LotEvent) -> None:
        ended = self._watch(self._watch.watch.lot_event, event)
        if ended:  # kept, so that a restart before their summaries still knows they ended
            self._spawn(self._end_wafers(ended))
        if event.kind == "wafer_end":
            return
        log.info("lot_event", kind=event.kind, lot_id=event.lot_id, tool_id=event.tool_id, recipe_id=event.recipe_id)
        if event.kind != "lot_end":
            return
        if event.tool_id not in self.cfg.tool_ids or event.recipe_id not in self.cfg.recipes:
            return self.rejected(Rejected("unknown_tool", f"lot_end for {event.recipe_id} x {event.tool_id}"))
        self._spawn(self._calibration.close_lot(event))

    async def _end_wafers(self, ended: list[tuple[WaferKey, str]]) -> None:
        try:
            await self._db(self._outbox.end_wafers, ended)
        except OutboxError as err:  # the wafers still end in this run; only a restart would not know
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("wafer_ends_not_kept", error=str(err))
