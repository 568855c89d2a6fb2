"""The daemon: the composition root that builds the stages, opens their resources and waits.

    tools --ZeroMQ--> Intake --submit--> Batching (MES join, batches) --> Inspector (Triton) --> Recorder
        (outbox, replies, captures) --> Publisher (MQTT) and the local feed;  MES / reviews --> MesMessages

One asyncio loop. Blocking SQLite work runs on one dedicated thread (``AsyncDb``), the capture store's (PNG
encoding, files, its index) on another; paho runs its own thread and
hands callbacks to the loop. Every accepted frame ends as exactly one recorded result and one reply; nothing
waits without a bound. Every resource opened is closed on the way out, in reverse order, however the run ends.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from calibration.store import CalibrationError
from edge.capture.keeper import Keeper
from edge.capture.store import CaptureStore
from edge.config import Config
from edge.decision.calibration_loop import CalibrationLoop
from edge.decision.thresholds import Calibration, CalibrationRows
from edge.errors import CriticalTaskDied, EdgeError
from edge.flow import EventRow, Frame
from edge.inference.batching import Batching
from edge.inference.inspector import Inspector
from edge.inference.model_watch import ModelWatch
from edge.inference.triton_client import TritonClient, image_plan
from edge.ingest.admission import Inflight, Turnaround
from edge.ingest.intake import Intake
from edge.ingest.zmq_sockets import EventFeed, FrameSocket, MesFeed, context, load_server_keys
from edge.mes.context import ContextCache
from edge.mes.join import Joiner
from edge.mes.messages import MesMessages
from edge.models.ledger import Ledger
from edge.models.lifecycle import Lifecycle
from edge.ops.async_db import AsyncDb
from edge.ops.health_loop import health_loop
from edge.ops.housekeeping import Housekeeping
from edge.ops.http import Health, HttpServer
from edge.ops.logs import RateLimited, get
from edge.ops.metrics import Metrics
from edge.ops.sdnotify import Notifier
from edge.ops.supervisor import Supervisor
from edge.publish.events import EventIds
from edge.publish.mqtt import MqttLink, tls_context
from edge.publish.outbox import Outbox
from edge.publish.publisher import Publisher
from edge.publish.recorder import Recorder
from edge.shared import Shared
from edge.watch.guard import GuardedWatch
from edge.watch.line_watch import LineWatch

log = get("edge.daemon")


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
        self.db = AsyncDb()
        self.tasks = Supervisor(self._critical_ended, self.metrics.task_restarts)
        self.inflight: Inflight[Frame] = Inflight()
        # bad input and repeated defects: one log line per kind and interval
        limiter = RateLimited(10.0)
        self.shared = Shared(cfg, self.metrics, self.health, self.db, limiter, self.inflight, self.tasks.spawn)
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or a critical task ends: then ``CriticalTaskDied``, a non-zero exit)."""
        cfg, shared = self.cfg, self.shared
        preflight(cfg)
        self._stop = stop
        async with AsyncExitStack() as opened:
            opened.callback(self.db.close)
            self.outbox = await self.db(Outbox, cfg.outbox.path)
            opened.push_async_callback(self.db, self.outbox.close)
            ids = EventIds()
            watch = GuardedWatch(shared, LineWatch(cfg, self.metrics, ids), self.outbox)
            await watch.restore()
            calibration_db = shared.calibration_db
            opened.callback(calibration_db.close)
            self.calibration = await calibration_db(Calibration, cfg, self.metrics)
            opened.push_async_callback(calibration_db, self.calibration.close)
            t = cfg.triton
            triton = self.triton = TritonClient(
                t.url, t.anomaly_model, t.classifier_model, t.timeout_ms / 1000,
                shared_memory=t.shared_memory, plan=image_plan(cfg), metrics=self.metrics,
            )  # fmt: skip
            opened.push_async_callback(triton.close)
            inspector = Inspector(cfg, triton, self.calibration.threshold, self.metrics, shared.log_limiter)
            models = ModelWatch(shared, triton, inspector)
            http = HttpServer(cfg.http.host, cfg.http.port, self.metrics.registry, self.health)
            http_port = await http.start()  # /healthz answers, /readyz says 503, while the models load
            opened.push_async_callback(http.close)
            if await models.wait_ready(stop):
                await self._serve(opened, watch, ids, inspector, models, http_port)

    async def _serve(
        self, opened: AsyncExitStack, watch: GuardedWatch, ids: EventIds, inspector: Inspector, models: ModelWatch,
        http_port: int,
    ) -> None:  # fmt: skip
        cfg, shared, ing = self.cfg, self.shared, self.cfg.ingest
        sock = FrameSocket(
            context(), ing.bind, 2 * (ing.max_payload_bytes + ing.max_header_bytes), hwm=ing.max_inflight_frames * 2,
            also_bind=ing.also_bind, curve_secret_key_file=ing.curve_secret_key_file,
            curve_authorized_keys=ing.curve_authorized_keys, cpu=shared.metrics.stage_cpu,
        )  # fmt: skip
        opened.callback(sock.close)
        feed = EventFeed(cfg.local_pub.bind) if cfg.local_pub.bind else None
        if feed:
            opened.callback(feed.close)

        def announce(rows: list[EventRow]) -> None:
            """Recorded rows go to the local feed at once, and to MQTT by the publisher."""
            if feed is not None:
                for row in rows:
                    feed.publish(row.topic, row.payload)
            if rows:
                publisher.wake()

        turnaround = Turnaround()
        captures = await self._captures(opened)
        recorder = Recorder(shared, self.outbox, sock, turnaround, self.calibration, watch, ids, announce, captures)
        left = [(batch, CalibrationRows.loads(rows)) for batch, rows in await self.db(self.outbox.calibration_rows)]
        if left:  # batches a stopped run answered but did not get into the calibration store
            log.info("calibration_rows_recovered", batches=await recorder.apply_calibration(left), left=len(left))
        joiner = Joiner(ContextCache(cfg.join.cache_max_wafers, cfg.join.cache_max_age_s), cfg.join.silent_after_wafers)
        batching = Batching(shared, joiner, inspector, recorder)
        calibration = CalibrationLoop(shared, self.calibration)
        mes = MesMessages(shared, watch, batching.on_log, calibration, recorder.record_rows, self.outbox)
        ledger = await self.db(Ledger, cfg.models.ledger)
        opened.push_async_callback(self.db, ledger.close)
        lifecycle = Lifecycle(shared, self.triton, inspector, models, ledger, ids, recorder.record_rows,
                              self._live_model_changed)  # fmt: skip
        self.lifecycle = lifecycle
        await lifecycle.start()  # the route the ledger holds, pinned and loaded, before the first frame
        recorder.on_recorded = lifecycle.recorded
        mes.review_listeners.append(lifecycle.on_review)
        mes.router.add(f"{cfg.mqtt.prefix}/{cfg.station}/{cfg.models.commands_topic}", lifecycle.on_command)
        link = None
        if cfg.mqtt.enabled:
            link = MqttLink(
                cfg.mqtt, cfg.station, asyncio.get_running_loop(), mes.router.on_message,
                lambda mid: publisher.on_ack(mid), self._on_broker, mes.router.filters,
            )  # fmt: skip
        publisher = self.publisher = Publisher(
            self.outbox, link, self.metrics, self.db, cfg.mqtt.max_inflight, cfg.mqtt.replay_acked_s
        )
        if link:
            link.start()
            opened.callback(link.stop)
        housekeeping = Housekeeping(shared, self.outbox, self.calibration, publisher)

        lookup = self.metrics.stage_cpu.timed("dedupe", self.outbox.recorded_reply)

        async def recorded_reply(tool: str, frame_id: str) -> bytes | None:
            return await self.db(lookup, tool, frame_id)

        async def gauges() -> None:
            self.metrics.inflight.set(len(self.inflight))

        intake = Intake(shared, sock, turnaround, recorded_reply, batching.submit)
        notifier = Notifier()
        rounds = [models.check, housekeeping.check_outbox, recorder.flush_wafers, gauges]
        opened.push_async_callback(self.tasks.stop)
        if captures is not None:
            await captures.settle()  # before the replay: what a stopped run left held goes out with it
            rounds.append(captures.settle)
            self.tasks.critical("capture_writer", captures.run())  # events wait for it: the daemon needs it
            self.tasks.every("capture_prune", cfg.capture.prune_interval_s, captures.prune, at_start=True)
        self.tasks.critical("publisher", publisher.run())
        publisher.wake()  # replay what a previous run left undelivered
        self.tasks.critical("batch_loop", batching.run())
        self.tasks.critical("model_compare", lifecycle.comparisons.run())
        self.tasks.critical("health_loop", health_loop(cfg.triton.health_interval_s, notifier, self.health, rounds))
        self.tasks.every("calibration_reload", cfg.calibration.refresh_s, calibration.reload)
        self.tasks.every("prune", cfg.outbox.prune_interval_s, housekeeping.prune, at_start=True)
        self.tasks.every("line_watch_save", cfg.drift.save_interval_s, watch.save)
        if cfg.process.zmq_connect:
            topics = (cfg.mqtt.mes_process_topic, cfg.mqtt.mes_lot_topic)
            shared.spawn(mes.run_zmq(MesFeed(context(), cfg.process.zmq_connect, topics)))
        receiving = self.tasks.critical("intake", intake.run())
        loop = type(asyncio.get_running_loop()).__module__  # uvloop, or asyncio's
        log.info("started", frames=sock.endpoints, http_port=http_port, models=self.health.models,
                 triton=cfg.triton.url, mqtt=cfg.mqtt.enabled, event_loop=loop)  # fmt: skip
        notifier.ready()
        await self._stop.wait()

        notifier.stopping()
        log.info("draining", inflight=len(self.inflight))
        self.health.draining = True
        receiving.cancel()
        await batching.finish(timeout_s=10.0)
        if captures is not None and not await captures.finish(timeout_s=10.0):
            log.warning("captures_unwritten_at_stop")  # the next start records them as not written
        sock.close()
        await recorder.close_wafers()
        await watch.save()
        delivered = await publisher.drain(timeout_s=5.0) if link else True
        log.info("stopped", all_events_acknowledged=delivered)
        if self.health.stalled:  # a non-zero exit: systemd restarts the daemon (Restart=on-failure)
            raise CriticalTaskDied(f"stopped because a critical task ended: {', '.join(self.health.stalled)}")

    async def _captures(self, opened: AsyncExitStack) -> Keeper | None:
        """The capture store on its own thread (closed after the tasks that write to it), or None when off."""
        cfg = self.cfg.capture
        if not cfg.enabled:
            return None
        thread = AsyncDb()
        opened.callback(thread.close)
        store = await thread(CaptureStore, cfg.path, cfg.max_bytes, cfg.retention_days * 86400,
                             cfg.tombstone_days * 86400)  # fmt: skip
        opened.push_async_callback(thread, store.close)
        return Keeper(self.shared, store, thread, self.outbox, self.calibration.threshold)

    async def _live_model_changed(self, old: str, new: str, who: str, reason: str) -> str:
        """The calibration profiles follow the live model version (restored, or carried over to revalidate)."""
        db = self.shared.calibration_db
        try:
            how: str = await db(self.calibration.store.switch_model, old, new, who, reason)
        except CalibrationError as err:
            raise EdgeError(str(err)) from err
        await db(self.calibration.refresh, True)
        return how

    def _critical_ended(self, name: str) -> None:
        """A task the daemon cannot serve without ended: stop petting the watchdog, drain and exit non-zero."""
        self.health.stalled.append(name)
        self._stop.set()

    def _on_broker(self, connected: bool) -> None:
        self.health.broker_connected = connected
        self.metrics.broker_up.set(int(connected))
        state = "mqtt_connected" if connected else "mqtt_disconnected"
        log.info(state, host=self.cfg.mqtt.host, port=self.cfg.mqtt.port)
        self.publisher.on_link(connected)
