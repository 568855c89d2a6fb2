"""The calibration loop on a running station: engineering reviews in, a controller round per class at each lot
end, and thresholds an engineer changed from the CLI picked up without a restart. A store that fails is
counted and logged; the inspection path goes on with the thresholds in force."""

from __future__ import annotations

from calibration.errors import CalibrationError
from edge.decision.thresholds import Calibration
from edge.flow import LotEvent
from edge.ops.logs import get
from edge.shared import Shared

log = get("edge.decision.calibration_loop")


class CalibrationLoop:
    def __init__(self, shared: Shared, calibration: Calibration) -> None:
        self._calibration = calibration
        self._db = shared.calibration_db  # the calibration store's own thread: never the outbox's
        self._metrics = shared.metrics
        self._log_limiter = shared.log_limiter

    async def review(self, payload: bytes) -> None:
        """A disposition of a flagged event (``{"event_id", "disposition"}``), counted by its result."""
        try:
            result = await self._db(self._calibration.review, payload)
        except CalibrationError as err:  # the store failed (a refused review is a result, not an error)
            self._failed("review_not_recorded", err)
            return
        self._metrics.reviews.labels(result).inc()
        if result != "accepted":
            held = self._log_limiter.allow("review:" + result)
            if held is not None:
                log.warning("review_rejected", reason=result, similar_since_last=held)

    async def close_lot(self, event: LotEvent) -> None:
        """Lot end drives calibration: each class of the recipe x tool runs its controller on the lot."""
        try:
            moved = await self._db(self._calibration.lot_end, event.recipe_id, event.tool_id, event.lot_id)
        except CalibrationError as err:
            self._failed("lot_calibration_failed", err, lot_id=event.lot_id, tool_id=event.tool_id)
            return
        self._metrics.lots_closed.labels(event.tool_id).inc()
        log.info(
            "lot_calibrated",
            lot_id=event.lot_id,
            tool_id=event.tool_id,
            recipe_id=event.recipe_id,
            moved={k: list(v) for k, v in moved.items()},
        )

    async def reload(self) -> None:
        """Engineers change thresholds from the CLI: pick that up without a restart."""
        try:
            if await self._db(self._calibration.refresh):
                log.info("calibration_reloaded")
        except CalibrationError as err:
            self._failed("calibration_reload_failed", err)

    def _failed(self, event: str, err: CalibrationError, **context: str) -> None:
        self._metrics.internal_errors.labels("calibration").inc()
        log.error(event, error=str(err), **context)
