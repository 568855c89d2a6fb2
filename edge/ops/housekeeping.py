"""The outbox and the calibration store kept in bounds: the outbox's size against its quota (a full outbox turns
frames away ``busy outbox_full`` until it is below again), the publisher's backlog, and pruning by retention.
A store that fails is counted and logged, and looked at again next round."""

from __future__ import annotations

import time

from calibration.errors import CalibrationError
from edge.decision.thresholds import Calibration
from edge.errors import OutboxError
from edge.ops.logs import get
from edge.publish.outbox import Outbox
from edge.publish.publisher import Publisher
from edge.shared import Shared

log = get("edge.ops.housekeeping")


class Housekeeping:
    def __init__(self, shared: Shared, outbox: Outbox, calibration: Calibration, publisher: Publisher) -> None:
        self.cfg = cfg = shared.cfg
        self._db = shared.db
        self._calibration_db = shared.calibration_db
        self._outbox = outbox
        self._calibration = calibration
        self._publisher = publisher
        self._health = shared.health
        self._metrics = metrics = shared.metrics
        metrics.outbox_quota.set(cfg.outbox.max_bytes)

    async def check_outbox(self) -> None:
        """One round of the health loop: the backlog and the quota."""
        try:
            self._metrics.outbox_backlog.set(await self._publisher.backlog())
            await self._check_quota()
        except OutboxError as err:
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("outbox_read_failed", error=str(err))

    async def prune(self) -> None:
        """Results are the de-duplication record and events the replay source: both are kept for the
        retention period (events until acknowledged, however long that takes), then pruned, as are the
        dies of a wafer that saw no die for as long."""
        try:
            before = time.time() - self.cfg.outbox.retention_hours * 3600
            pruned = await self._db(self._outbox.prune, before)
            for table, rows in pruned.items():
                self._metrics.outbox_pruned.labels(table).inc(rows)
            if any(pruned.values()):
                log.info("outbox_pruned", **pruned)
            await self._check_quota()
            forgotten = await self._calibration_db(
                self._calibration.store.prune, time.time() - self.cfg.calibration.retention_days * 86400
            )
            if forgotten:
                log.info("calibration_pruned", candidates=forgotten)
        except (OutboxError, CalibrationError) as err:
            stage = "outbox" if isinstance(err, OutboxError) else "calibration"
            self._metrics.internal_errors.labels(stage).inc()
            log.error("prune_failed", error=str(err))

    async def _check_quota(self) -> None:
        used = await self._db(self._outbox.used_bytes)
        self._metrics.outbox_bytes.set(used)
        quota = self.cfg.outbox.max_bytes
        full = used >= quota
        if full and not self._health.outbox_full:
            log.error("outbox_full", used_bytes=used, quota_bytes=quota)
        elif self._health.outbox_full and not full:
            log.info("outbox_below_quota", used_bytes=used, quota_bytes=quota)
        self._health.outbox_full = full
