"""The daemon: intake, MES join, batching, inference, decision, durable record, replies, events.

One asyncio loop. Blocking SQLite work runs on one dedicated thread; paho runs its own thread
and hands callbacks to the loop. Every accepted frame ends as exactly one recorded result and
one reply; nothing waits without a bound.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar, TypeVarTuple

from calibration.errors import CalibrationError
from calibration.table import Bands, BandTable
from edge import decide as rule
from edge import rebaseline
from edge.admission import Inflight, Turnaround, busy_reason, retry_after_ms
from edge.admission import Limits as AdmissionLimits
from edge.async_db import AsyncDb
from edge.batcher import Batcher
from edge.calibrate import Calibration
from edge.config import Config
from edge.context import ContextCache, LotEvent, parse_lot_event, parse_process_log
from edge.errors import ConfigError, CriticalTaskDied, EdgeError, OutboxError, TritonUnavailable
from edge.events import EventIds
from edge.frames import Frame
from edge.http import Health, HttpServer
from edge.imaging import decode
from edge.infer import TritonClient
from edge.inspector import Inspector, not_inspected
from edge.join import Joiner
from edge.line_watch import LineWatch, Summaries, die_row
from edge.logs import RateLimited, get
from edge.message_router import MessageRouter
from edge.metrics import Metrics
from edge.model_facts import bands_from, precision_from
from edge.mqtt import MqttLink, tls_context
from edge.outbox import EventRow, Outbox
from edge.outcomes import Outcome, Stamp, records
from edge.publisher import Publisher
from edge.sdnotify import Notifier
from edge.supervisor import Supervisor
from edge.wafers import WaferKey
from edge.wire import Limits, Rejected, encode_reply, error_reply, parse_frame
from edge.zmq_sockets import EventFeed, FrameSocket, MesFeed, context, load_server_keys

log = get("edge.daemon")

_R = TypeVar("_R")
_Ts = TypeVarTuple("_Ts")


def preflight(cfg: Config) -> None:
    """Read the key material the config names (MQTT TLS, ZeroMQ CURVE), so an unusable certificate or key
    stops the start at once with ``ConfigError`` naming it, not after the models have loaded."""
    if cfg.mqtt.enabled and cfg.mqtt.tls:
        tls_context(cfg.mqtt)
    if cfg.ingest.curve_secret_key_file is not None:
        load_server_keys(cfg.ingest.curve_secret_key_file)


class Daemon:
    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.health = Health(broker_required=cfg.mqtt.enabled)
        self._db = AsyncDb()
        self._limits = Limits(
            cfg.ingest.max_header_bytes, cfg.ingest.max_payload_bytes, cfg.ingest.max_image_pixels,
            cfg.tool_ids, frozenset(cfg.recipes),
        )
        self._ids = EventIds()
        self._jitter = random.Random()  # spreads the retry hints of busy replies
        self._turnaround = Turnaround()
        self._joiner = Joiner(ContextCache(cfg.join.cache_max_wafers, cfg.join.cache_max_age_s))
        self._watch = LineWatch(cfg, self.metrics, self._ids)
        self._inflight: Inflight[Frame] = Inflight()
        self._admission = AdmissionLimits(cfg.ingest.max_inflight_frames, cfg.per_tool_inflight)
        self._outbox_full = False
        self._batcher: Batcher[Frame] = Batcher(cfg.batching.max_batch, cfg.batching.max_delay_ms / 1000)
        self._batch_ready = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.batching.max_concurrent_batches)
        self._tasks = Supervisor(self._critical_ended, self.metrics.task_restarts)
        self._router = MessageRouter([
            (cfg.mqtt.mes_process_topic, self.on_process_log),
            (cfg.mqtt.mes_lot_topic, self.on_lot_event),
            (self._reviews_topic, self._on_review),
            (self._rebaseline_topic, self.on_rebaseline),
        ])
        self._stop = asyncio.Event()
        self._bad_input_log = RateLimited(10.0)
        self._accepting = True
        self.models: dict[str, str] = {}

    # ---- life cycle -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set. Every resource opened is closed on the way out, in reverse order,
        whichever way this ends (stopped, Triton not ready in time, a failure while starting or draining)."""
        cfg = self.cfg
        preflight(cfg)
        async with AsyncExitStack() as opened:
            opened.callback(self._db.close)
            self.outbox = await self._db(Outbox, cfg.outbox.path)
            opened.push_async_callback(self._db, self.outbox.close)
            await self._restore_line_watch()
            self.calibration = await self._db(Calibration, cfg, self.metrics)
            opened.push_async_callback(self._db, self.calibration.close)
            self.triton = TritonClient(cfg.triton.url, cfg.triton.anomaly_model, cfg.triton.classifier_model,
                                       cfg.triton.timeout_ms / 1000)
            opened.push_async_callback(self.triton.close)
            self._inspector = Inspector(cfg, self.triton, self.calibration.threshold, self.metrics,
                                        self._bad_input_log)
            http = HttpServer(cfg.http.host, cfg.http.port, self.metrics.registry, self.health)
            http_port = await http.start()  # /healthz answers, /readyz says 503, while the models load
            opened.push_async_callback(http.close)
            if await self._wait_for_models(stop):
                await self._serve(stop, http_port, opened)

    async def _serve(self, stop: asyncio.Event, http_port: int, opened: AsyncExitStack) -> None:
        cfg = self.cfg
        self._stop = stop
        notifier = Notifier()
        link = None
        if cfg.mqtt.enabled:
            link = MqttLink(cfg.mqtt, cfg.station, asyncio.get_running_loop(), self._on_mqtt_message, self._on_ack,
                            self._on_broker, self._router.filters)
        self.publisher = Publisher(self.outbox, link, self.metrics, self._db, cfg.mqtt.max_inflight,
                                   cfg.mqtt.replay_acked_s)
        self._feed = EventFeed(cfg.local_pub.bind) if cfg.local_pub.bind else None
        if self._feed:
            opened.callback(self._feed.close)
        sock = FrameSocket(context(), cfg.ingest.bind, 2 * (cfg.ingest.max_payload_bytes + cfg.ingest.max_header_bytes),
                           hwm=cfg.ingest.max_inflight_frames * 2,
                           curve_secret_key_file=cfg.ingest.curve_secret_key_file,
                           curve_authorized_keys=cfg.ingest.curve_authorized_keys)
        opened.callback(sock.close)
        if link:
            link.start()
            opened.callback(link.stop)
        opened.push_async_callback(self._tasks.stop)
        self._tasks.critical("publisher", self.publisher.run())
        self.publisher.wake()  # replay what a previous run left undelivered
        self._sock = sock
        self._tasks.critical("batch_loop", self._batch_loop())
        self._tasks.critical("health_loop", self._health_loop(notifier))
        self._tasks.every("calibration_reload", cfg.calibration.refresh_s, self._reload_calibration)
        self._tasks.every("prune", cfg.outbox.prune_interval_s, self._prune, at_start=True)
        self._tasks.every("line_watch_save", cfg.drift.save_interval_s, self._save_line_watch)
        if cfg.process.zmq_connect:
            self._tasks.spawn(self._mes_zmq(MesFeed(context(), cfg.process.zmq_connect,
                                              (cfg.mqtt.mes_process_topic, cfg.mqtt.mes_lot_topic))))
        self.metrics.outbox_quota.set(cfg.outbox.max_bytes)
        intake = self._tasks.critical("intake", self._intake(sock))
        log.info("started", frames=sock.endpoint, http_port=http_port, models=self.models,
                 triton=cfg.triton.url, mqtt=cfg.mqtt.enabled)
        notifier.ready()
        await stop.wait()

        notifier.stopping()
        log.info("draining", inflight=len(self._inflight))
        self._accepting = False
        self.health.draining = True
        intake.cancel()
        await self._finish_inflight(timeout_s=10.0)
        sock.close()
        await self._record_summaries(self._watching(self._watch.close_ended))  # open ones go on after a restart
        await self._save_line_watch()
        delivered = await self.publisher.drain(timeout_s=5.0) if link else True
        log.info("stopped", all_events_acknowledged=delivered)
        if self.health.stalled:  # a non-zero exit: systemd restarts the daemon (Restart=on-failure)
            raise CriticalTaskDied(f"stopped because a critical task ended: {', '.join(self.health.stalled)}")

    def _critical_ended(self, name: str) -> None:
        """A task the daemon cannot serve without ended: stop petting the watchdog, drain and exit non-zero."""
        self.health.stalled.append(name)
        self._stop.set()

    async def _wait_for_models(self, stop: asyncio.Event) -> bool:
        """False when asked to stop first; ``TritonUnavailable`` when the models are not ready in time."""
        deadline = time.monotonic() + self.cfg.triton.ready_timeout_s
        while not await self.triton.ready():
            if stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise TritonUnavailable(f"Triton at {self.cfg.triton.url} not ready within "
                                        f"{self.cfg.triton.ready_timeout_s:.0f} s")
            await asyncio.sleep(0.5)
        await self._learn_models()
        return True

    async def _learn_models(self) -> None:
        self.models = await self.triton.model_versions()
        params = {name: await self.triton.config_parameters(name)
                  for name in (self.triton.anomaly_model, self.triton.classifier_model)}
        self.health.triton_ready = True
        self.health.models = self.models
        self.metrics.model_info.clear()  # a model Triton swapped no longer shows its old version
        for name, version in self.models.items():
            self.metrics.model_info.labels(name, version).set(1)
        precision = {name: precision_from(facts) for name, facts in params.items()}
        self.health.precision = {name: facts.report() for name, facts in precision.items() if facts}
        for name, facts in precision.items():
            if facts and facts.fallback:  # the form asked for missed the precision gate at build time
                log.warning("model_precision_fallback", model=name, served=facts.served, requested=facts.requested,
                            reason=facts.fallback)
        self.metrics.triton_up.set(1)
        declared = bands_from(params[self.triton.anomaly_model])
        entries = {(b.recipe, b.tool): Bands(b.pass_band, b.reject_band) for b in self.cfg.decision.bands}
        default = entries.get(("*", "*"), declared)
        if default is None:
            raise ConfigError("no anomaly bands: the anomaly model declares none and decision.bands has no "
                              "recipe='*', tool='*' entry")
        self._inspector.bands = BandTable(default, entries)

    async def _health_loop(self, notifier: Notifier) -> None:
        interval = self.cfg.triton.health_interval_s
        if notifier.watchdog_interval_s:
            interval = min(interval, notifier.watchdog_interval_s)
        while True:
            await asyncio.sleep(interval)
            if not self.health.stalled:  # a dead intake or batch loop must not look healthy to systemd
                notifier.watchdog()
            ready = await self.triton.ready()
            if ready and not self.health.triton_ready:
                try:
                    await self._learn_models()
                    log.info("triton_recovered", models=self.models)
                except EdgeError as err:
                    log.warning("triton_model_info_failed", error=str(err))
            elif not ready and self.health.triton_ready:
                log.warning("triton_not_ready", url=self.cfg.triton.url)
            self.health.triton_ready = ready
            self.metrics.triton_up.set(int(ready))
            try:  # a failing outbox is reported and looked at again next round; the loop goes on
                self.metrics.outbox_backlog.set(await self.publisher.backlog())
                await self._check_quota()
            except OutboxError as err:
                self.metrics.internal_errors.labels("outbox").inc()
                log.error("outbox_read_failed", error=str(err))
            await self._flush_wafers()
            self.metrics.inflight.set(len(self._inflight))

    async def _check_quota(self) -> None:
        used = await self._db(self.outbox.used_bytes)
        self.metrics.outbox_bytes.set(used)
        full = used >= self.cfg.outbox.max_bytes
        if full and not self._outbox_full:
            log.error("outbox_full", used_bytes=used, quota_bytes=self.cfg.outbox.max_bytes)
        elif self._outbox_full and not full:
            log.info("outbox_below_quota", used_bytes=used, quota_bytes=self.cfg.outbox.max_bytes)
        self._outbox_full = self.health.outbox_full = full

    async def _prune(self) -> None:
        """Results are the de-duplication record and events the replay source: both are kept for the
        retention period (events until acknowledged, however long that takes), then pruned, as are the
        dies of a wafer that saw no die for as long."""
        try:
            before = time.time() - self.cfg.outbox.retention_hours * 3600
            pruned = await self._db(self.outbox.prune, before)
            for table, rows in pruned.items():
                self.metrics.outbox_pruned.labels(table).inc(rows)
            if any(pruned.values()):
                log.info("outbox_pruned", **pruned)
            await self._check_quota()
            forgotten = await self._db(self.calibration.store.prune,
                                       time.time() - self.cfg.calibration.retention_days * 86400)
            if forgotten:
                log.info("calibration_pruned", candidates=forgotten)
        except (OutboxError, CalibrationError) as err:
            stage = "outbox" if isinstance(err, OutboxError) else "calibration"
            self.metrics.internal_errors.labels(stage).inc()
            log.error("prune_failed", error=str(err))

    async def _restore_line_watch(self) -> None:
        """What the previous run left: its open wafers, drift references and windows, parameter statistics."""
        try:
            dies, ends = await self._db(self.outbox.open_dies), await self._db(self.outbox.wafer_ends)
            states = await self._db(self.outbox.load_state)
        except OutboxError as err:
            self.metrics.internal_errors.labels("line_watch").inc()
            log.error("line_watch_restore_failed", error=str(err))
            return
        reopened = self._watching(self._watch.restore, dies, time.monotonic(), ends)
        refused = self._watching(self._watch.restore_state, states) or {}
        kept = {name: len(keyed) - len(refused.get(name, [])) for name, keyed in states.items()}
        if reopened or states:
            log.info("line_watch_restored", wafers_reopened=reopened, kept=kept,
                     started_afresh={name: [list(k) for k in keys] for name, keys in refused.items() if keys})

    async def _save_line_watch(self) -> None:
        states = self._watching(self._watch.export_state)
        if states is None:
            return
        try:
            await self._db(self.outbox.save_state, states)
        except OutboxError as err:
            self.metrics.internal_errors.labels("outbox").inc()
            log.error("line_watch_save_failed", error=str(err))

    async def _finish_inflight(self, timeout_s: float) -> None:
        for frame in self._joiner.release_all():
            self._enqueue(frame)
        end = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < end:
            self._batch_ready.set()
            await asyncio.sleep(0.01)

    # ---- intake -----------------------------------------------------------------------------
    async def _intake(self, sock: FrameSocket) -> None:
        while True:
            identity, parts, tools = await sock.recv()
            try:
                await self._accept(identity, parts, tools)
            except OutboxError as err:
                self.metrics.internal_errors.labels("outbox").inc()
                log.error("outbox_read_failed", error=str(err))
                await self._reply(identity, error_reply(None, "busy", "outbox_unavailable",
                                                        self.cfg.ingest.busy_retry_after_ms))
            except Exception:  # a defect in handling one frame must not stop the intake
                log.exception("intake_failed")
                self.metrics.internal_errors.labels("intake").inc()
                await self._reply(identity, error_reply(None, "busy", "internal_error",
                                                        self.cfg.ingest.busy_retry_after_ms))

    async def _accept(self, identity: bytes, parts: list[bytes], tools: frozenset[str] | None) -> None:
        """One frame from the intake; ``tools``: those the sender's CURVE key speaks for (None: no CURVE)."""
        now, wall = time.monotonic(), time.time()
        parsed = parse_frame(parts, self._limits)
        if isinstance(parsed, Rejected):
            return await self._reject(identity, parsed)
        header, payload = parsed
        if tools is not None and header.tool_id not in tools:
            return await self._reject(identity, Rejected(
                "tool_key_mismatch", f"the connection's CURVE key speaks for {', '.join(sorted(tools)) or 'no tool'}, "
                f"not {header.tool_id}", header.frame_id))
        tool = header.tool_id
        self.metrics.frames_received.labels(tool).inc()
        key = (tool, header.frame_id)
        held = self._inflight.get(key)
        if held is not None:  # resent while still in work: answer the newest connection
            held.identity = identity
            self.metrics.frames_duplicate.labels(tool).inc()
            return
        recorded = await self._db(self.outbox.recorded_reply, tool, header.frame_id)
        if recorded is not None:
            self.metrics.frames_duplicate.labels(tool).inc()
            return await self._sock.send(identity, recorded)
        busy = busy_reason(len(self._inflight), self._inflight.held_by(tool), self._admission,
                           accepting=self._accepting, outbox_full=self._outbox_full)
        if busy is not None:
            self.metrics.frames_busy.labels(tool, busy).inc()
            ing = self.cfg.ingest
            turnaround = self._turnaround.seconds(tool if busy == "tool_share_full" else Turnaround.STATION)
            hint = retry_after_ms(busy, turnaround, ing.busy_retry_after_ms, ing.busy_retry_max_ms,
                                  self._jitter.uniform(0.5, 1.5))
            return await self._reply(identity, error_reply(header.frame_id, "busy", busy, hint))
        ing = self.cfg.ingest
        tensors = decode(header, payload, (ing.image_height, ing.image_width), ing.max_image_pixels, ing.resize)
        if isinstance(tensors, Rejected):
            return await self._reject(identity, tensors)
        budget_ms = min(header.deadline_ms or ing.default_deadline_ms, ing.max_deadline_ms)
        frame = Frame(identity, header, tensors, now, now + budget_ms / 1000, wall)
        frame.timings["ingest"] = time.monotonic() - now
        self.metrics.stage_latency.labels("ingest").observe(frame.timings["ingest"])
        self._inflight.add(frame)
        if self._joiner.admit(frame, now, wait=self.cfg.join.window_ms > 0):
            self._enqueue(frame)
        else:
            asyncio.get_running_loop().call_later(self.cfg.join.window_ms / 1000, self._join_expired, frame)

    async def _reject(self, identity: bytes, rejected: Rejected) -> None:
        self.metrics.frames_rejected.labels(rejected.reason).inc()
        held = self._bad_input_log.allow(rejected.reason)
        if held is not None:
            log.warning("frame_rejected", reason=rejected.reason, detail=rejected.detail,
                        frame_id=rejected.frame_id, similar_since_last=held)
        await self._reply(identity, error_reply(rejected.frame_id, "rejected", f"{rejected.reason}: "
                                                f"{rejected.detail}"))

    async def _reply(self, identity: bytes, reply: dict[str, Any]) -> None:
        await self._sock.send(identity, encode_reply(reply))

    # ---- MES join ---------------------------------------------------------------------------
    @property
    def _reviews_topic(self) -> str:
        return f"{self.cfg.mqtt.prefix}/{self.cfg.station}/{self.cfg.calibration.reviews_topic}"

    @property
    def _rebaseline_topic(self) -> str:
        return f"{self.cfg.mqtt.prefix}/{self.cfg.station}/{self.cfg.drift.rebaseline_topic}"

    async def _mes_zmq(self, feed: MesFeed) -> None:
        """MES messages from a ZeroMQ gateway, handled as the same topics on MQTT."""
        try:
            while True:
                message = await feed.recv()
                if message is None:
                    self._mes_rejected(Rejected("bad_multipart", "MES gateway message is not [topic, payload]"))
                else:
                    self._on_mqtt_message(*message)
        finally:
            feed.close()

    def _on_mqtt_message(self, topic: str, payload: bytes) -> None:
        self._router.on_message(topic, payload)

    def _on_review(self, payload: bytes) -> None:
        self._tasks.spawn(self._review(payload))

    def on_process_log(self, payload: bytes) -> None:
        parsed = parse_process_log(payload)
        if isinstance(parsed, Rejected):
            return self._mes_rejected(parsed)
        self.metrics.mes_messages.labels("process_log").inc()
        watched, rows = self._watching(self._watch.process_log, parsed) or (parsed, [])
        if rows:
            self._tasks.spawn(self._record_rows(rows))
        for frame in self._joiner.on_log(watched, time.monotonic()):
            self._joined(frame)

    def on_lot_event(self, payload: bytes) -> None:
        parsed = parse_lot_event(payload)
        if isinstance(parsed, Rejected):
            return self._mes_rejected(parsed)
        self.metrics.mes_messages.labels(parsed.kind).inc()
        self._lot_event(parsed)

    def on_rebaseline(self, payload: bytes) -> None:
        """An engineer re-baselines a tool after a service: drift and parameter statistics start again."""
        command = rebaseline.parse(payload, self.cfg.tool_ids, self.cfg.recipes)
        if isinstance(command, Rejected):
            self.metrics.rebaselines.labels(command.reason).inc()
            held = self._bad_input_log.allow("rebaseline:" + command.reason)
            if held is not None:
                log.warning("rebaseline_rejected", reason=command.reason, detail=command.detail,
                            similar_since_last=held)
            return
        if self._watching(self._watch.repeated, command):  # the broker handed the command over again
            self.metrics.rebaselines.labels("repeated").inc()
            log.info("rebaseline_repeated", tool_id=command.tool_id, command_id=command.command_id)
            return
        rows = self._watching(self._watch.rebaseline, command)
        if rows is None:
            return
        self.metrics.rebaselines.labels("accepted").inc()
        log.info("rebaselined", tool_id=command.tool_id, recipes=list(command.recipes), by=command.by,
                 reason=command.reason, drift_cleared=len(rows))
        self._tasks.spawn(self._record_rows(rows))
        self._tasks.spawn(self._save_line_watch())  # a restart must not bring the old reference back

    def _lot_event(self, event: LotEvent) -> None:
        ended = self._watching(self._watch.lot_event, event)
        if ended:  # kept, so that a restart before their summaries still knows they ended
            self._tasks.spawn(self._end_wafers(ended))
        if event.kind == "wafer_end":
            return
        log.info("lot_event", kind=event.kind, lot_id=event.lot_id, tool_id=event.tool_id,
                 recipe_id=event.recipe_id)
        if event.kind == "lot_end":
            self._tasks.spawn(self._close_lot(event))

    async def _end_wafers(self, ended: list[tuple[WaferKey, str]]) -> None:
        try:
            await self._db(self.outbox.end_wafers, ended)
        except OutboxError as err:  # the wafers still end in this run; only a restart would not know
            self.metrics.internal_errors.labels("outbox").inc()
            log.error("wafer_ends_not_kept", error=str(err))

    # ---- calibration ------------------------------------------------------------------------
    async def _close_lot(self, event: LotEvent) -> None:
        """Lot end drives calibration: each class of the recipe x tool runs its controller on the lot."""
        if event.tool_id not in self.cfg.tool_ids or event.recipe_id not in self.cfg.recipes:
            return self._mes_rejected(Rejected("unknown_tool", f"lot_end for {event.recipe_id} x {event.tool_id}"))
        try:
            moved = await self._db(self.calibration.lot_end, event.recipe_id, event.tool_id, event.lot_id)
        except CalibrationError as err:
            self.metrics.internal_errors.labels("calibration").inc()
            log.error("lot_calibration_failed", lot_id=event.lot_id, tool_id=event.tool_id, error=str(err))
            return
        self.metrics.lots_closed.labels(event.tool_id).inc()
        log.info("lot_calibrated", lot_id=event.lot_id, tool_id=event.tool_id, recipe_id=event.recipe_id,
                 moved={k: list(v) for k, v in moved.items()})

    async def _review(self, payload: bytes) -> None:
        try:
            result = await self._db(self.calibration.review, payload)
        except CalibrationError as err:  # the store failed (a refused review is a result, not an error)
            self.metrics.internal_errors.labels("calibration").inc()
            log.error("review_not_recorded", error=str(err))
            return
        self.metrics.reviews.labels(result).inc()
        if result != "accepted":
            held = self._bad_input_log.allow("review:" + result)
            if held is not None:
                log.warning("review_rejected", reason=result, similar_since_last=held)

    async def _reload_calibration(self) -> None:
        """Engineers change thresholds from the CLI: pick that up without a restart."""
        try:
            if await self._db(self.calibration.refresh):
                log.info("calibration_reloaded")
        except CalibrationError as err:
            self.metrics.internal_errors.labels("calibration").inc()
            log.error("calibration_reload_failed", error=str(err))

    def _mes_rejected(self, rejected: Rejected) -> None:
        self.metrics.mes_rejected.labels(rejected.reason).inc()
        held = self._bad_input_log.allow("mes:" + rejected.reason)
        if held is not None:
            log.warning("mes_message_rejected", reason=rejected.reason, detail=rejected.detail,
                        similar_since_last=held)

    def _join_expired(self, frame: Frame) -> None:
        if self._joiner.expire(frame):
            self._joined(frame)

    def _joined(self, frame: Frame) -> None:
        frame.timings["join_wait"] = time.monotonic() - frame.received
        self.metrics.stage_latency.labels("join_wait").observe(frame.timings["join_wait"])
        self._enqueue(frame)

    def _enqueue(self, frame: Frame) -> None:
        if frame.context is None:
            self.metrics.context_missing.labels(frame.header.tool_id).inc()
        if frame.note is None:
            self.metrics.notes_missing.labels(frame.header.tool_id).inc()
        self._batcher.add(frame, time.monotonic(), key=frame.header.tool_id)
        self.metrics.queue_depth.set(len(self._batcher))
        self._batch_ready.set()

    # ---- batches ----------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            batch = None
            while batch is None:
                batch = self._batcher.poll(time.monotonic())
                if batch is None:
                    self._batch_ready.clear()
                    deadline = self._batcher.next_deadline()
                    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        await asyncio.wait_for(self._batch_ready.wait(), timeout)
                    except TimeoutError:
                        pass
            self.metrics.queue_depth.set(len(self._batcher))
            self._tasks.spawn(self._run_batch(batch))

    async def _run_batch(self, batch: list[Frame]) -> None:
        try:
            started = time.monotonic()
            for frame in batch:
                frame.timings["queue"] = started - frame.received
                self.metrics.stage_latency.labels("queue").observe(frame.timings["queue"])
            live = [f for f in batch if f.deadline > started]
            outcomes = [not_inspected(f, "deadline_passed") for f in batch if f.deadline <= started]
            if live:
                outcomes += await self._inspector.inspect(live)
            await self._record_and_answer(outcomes)
        except Exception:  # a defect must cost one batch, never leave its frames unanswered
            log.exception("batch_failed", frames=len(batch))
            self.metrics.internal_errors.labels("batch").inc()
            await self._answer_busy([f for f in batch if f.key in self._inflight], "internal_error")
        finally:
            self._slots.release()

    async def _record_and_answer(self, outcomes: list[Outcome]) -> None:
        stamp = Stamp(self.cfg.station, self.cfg.mqtt.prefix, self.models, time.monotonic(), time.time())
        results, events = [], []
        event_ids = []
        for outcome in outcomes:
            event_id = self._ids.new() if outcome.event_decision else None
            h, v = outcome.frame.header, outcome.verdict
            facts = self.calibration.facts(h.recipe_id, h.tool_id, v.top_k[0][0] if v and v.top_k else "")
            result, event = records(outcome, event_id, stamp, facts)
            results.append(result)
            event_ids.append(event_id)
            if event:
                events.append(event)
            self._count(outcome.frame, outcome.decision, outcome.verdict)
        events += self._watching(self._watch.results, outcomes, time.monotonic()) or []
        dies = [die_row(o) for o in outcomes]
        t0 = time.monotonic()
        try:
            await self._db(self.outbox.record, results, events, dies)
        except OutboxError as err:
            log.error("outbox_write_failed", error=str(err), frames=len(outcomes))
            await self._answer_busy([o.frame for o in outcomes], "outbox_unavailable")
            return
        self.metrics.stage_latency.labels("outbox").observe(time.monotonic() - t0)
        for outcome, result in zip(outcomes, results):
            frame = outcome.frame
            self._inflight.pop(frame.key)
            await self._sock.send(frame.identity, result.reply)
            turnaround = time.monotonic() - frame.received
            self.metrics.e2e_latency.observe(turnaround)
            self._turnaround.observe(frame.header.tool_id, turnaround)
        self._announce(events)
        await self._flush_wafers()
        try:  # calibration bookkeeping, after the replies: it never holds one back
            await self._db(self.calibration.record, outcomes, event_ids)
        except CalibrationError as err:
            self.metrics.internal_errors.labels("calibration").inc()
            log.error("calibration_record_failed", error=str(err), frames=len(outcomes))

    def _announce(self, rows: list[EventRow]) -> None:
        """Recorded rows go to the local feed at once, and to MQTT by the publisher."""
        if rows:
            if self._feed:
                for row in rows:
                    self._feed.publish(row.topic, row.payload)
            self.publisher.wake()

    async def _record_rows(self, rows: list[EventRow], summarised: list[WaferKey] | None = None) -> None:
        """Station messages outside a batch (wafer summaries, alerts, drift events): recorded, then out.
        The open-wafer dies of the ``summarised`` wafers leave the outbox in the same transaction."""
        if not rows and not summarised:
            return
        try:
            await self._db(self.outbox.record, [], rows, (), summarised or [])
        except OutboxError as err:
            self.metrics.internal_errors.labels("outbox").inc()
            log.error("outbox_write_failed", error=str(err), messages=len(rows))
            return
        self._announce(rows)

    async def _record_summaries(self, summaries: Summaries | None) -> None:
        if summaries is not None:
            await self._record_rows(summaries.rows, summaries.wafers)

    async def _flush_wafers(self) -> None:
        """Summarise the wafers that ended and have no frame in work any more."""
        in_work = {frame.wafer_key for frame in self._inflight}
        await self._record_summaries(self._watching(self._watch.due, time.monotonic(), in_work.__contains__))

    def _watching(self, fn: Callable[[*_Ts], _R], *args: *_Ts) -> _R | None:
        """Run a piece of line watching (wafers, drift, process statistics); a defect in it costs that
        piece (None, counted and logged), never a frame's verdict or reply."""
        try:
            return fn(*args)
        except Exception:
            self.metrics.internal_errors.labels("line_watch").inc()
            if self._bad_input_log.allow("line_watch") is not None:
                log.exception("line_watch_failed", step=fn.__name__)
            return None

    async def _answer_busy(self, frames: list[Frame], reason: str) -> None:
        """Nothing was recorded for these frames: the tool resends them after ``retry_after_ms``."""
        for frame in frames:
            self._inflight.pop(frame.key)
            await self._reply(frame.identity, error_reply(frame.header.frame_id, "busy", reason,
                                                          self.cfg.ingest.busy_retry_after_ms))

    def _count(self, frame: Frame, decision: str, verdict: rule.Verdict | None) -> None:
        h = frame.header
        label = verdict.defect_class if verdict else "NONE"
        self.metrics.decisions.labels(h.tool_id, h.recipe_id, decision, label).inc()
        if verdict and verdict.suppressed:
            self.metrics.suppressed.labels(h.tool_id, verdict.top_k[0][0]).inc()

    # ---- MQTT callbacks ---------------------------------------------------------------------
    def _on_ack(self, mid: int) -> None:
        self.publisher.on_ack(mid)

    def _on_broker(self, connected: bool) -> None:
        self.health.broker_connected = connected
        self.metrics.broker_up.set(int(connected))
        log.info("mqtt_connected" if connected else "mqtt_disconnected", host=self.cfg.mqtt.host,
                 port=self.cfg.mqtt.port)
        self.publisher.on_link(connected)
