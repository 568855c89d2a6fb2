"""Batches in, outcomes out: both models on Triton, then the decision rule for every frame.

A Triton that cannot take the batch (down, restarting, a model loading) gets bounded retries with a doubling
back-off while the frames' deadlines allow; an error answer from a running server is not retried. A frame
ends ``not_inspected`` (with the reason) when the models could not be had, never silently dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from calibration.table import BandTable
from edge.config import Config
from edge.decision import rule
from edge.errors import InferenceFailed, TritonUnavailable
from edge.flow import Frame, NotInspectedReason, Outcome
from edge.inference.inputs import batch_inputs, hot_region
from edge.inference.triton_client import AnomalyOut, ClassifierOut
from edge.ops.logs import RateLimited, get
from edge.ops.metrics import Metrics

log = get("edge.inference.inspector")

Thresholds = Callable[[str, str, str], float]  # (recipe, tool, class) -> confidence threshold in force


class Models(Protocol):
    """The two models as Triton serves them (``edge.inference.triton_client.TritonClient``)."""

    async def anomaly(self, grey: npt.NDArray[np.uint8]) -> AnomalyOut: ...

    async def classify(
        self,
        rgb: npt.NDArray[np.uint8],
        process: npt.NDArray[np.float32],
        present: npt.NDArray[np.float32],
        notes: npt.NDArray[np.int64],
    ) -> ClassifierOut: ...


class Inspector:
    def __init__(
        self,
        cfg: Config,
        models: Models,
        thresholds: Thresholds,
        metrics: Metrics,
        log_limiter: RateLimited,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.models = models
        self.bands: BandTable | None = None  # set once the anomaly model's bands are known
        self._thresholds = thresholds
        self._metrics = metrics
        self._log_limiter = log_limiter
        self._clock = clock
        self._parameters = {rid: r.parameters for rid, r in cfg.recipes.items()}
        self._audit_rng = random.Random()

    async def inspect(self, frames: list[Frame]) -> list[Outcome]:
        """One outcome per frame, in order: a verdict, or ``not_inspected`` with the reason."""
        self._metrics.batch_size.observe(len(frames))
        t0 = self._clock()
        result = await self._infer(frames)
        if isinstance(result, str):
            return [not_inspected(f, result) for f in frames]
        anomaly, classes = result
        infer_s = self._clock() - t0
        self._metrics.stage_latency.labels("inference").observe(infer_s)
        assert self.bands is not None, "bands are learned before the first batch"
        outcomes = []
        t0 = self._clock()
        for i, frame in enumerate(frames):
            h = frame.header
            frame.timings["infer"] = infer_s
            bands = self.bands.get(h.recipe_id, h.tool_id)
            recipe, tool = h.recipe_id, h.tool_id

            def threshold_of(c: str, recipe: str = recipe, tool: str = tool) -> float:
                return self._thresholds(recipe, tool, c)

            verdict = rule.decide(
                float(anomaly.scores[i]),
                bands,
                classes.probs[i],
                self.cfg.decision.classes,
                threshold_of,
                self._audit_rng.random(),
                self.cfg.decision.audit_fraction,
            )
            hot = hot_region(anomaly.heatmaps[i], cast(tuple[int, int], frame.tensors.grey.shape[1:]), bands.pass_band)
            score, heatmap, attention = float(anomaly.scores[i]), anomaly.heatmaps[i], classes.attention[i]
            outcomes.append(
                Outcome(frame, verdict, score, hot, None, heatmap, attention, (bands.pass_band, bands.reject_band))
            )
        self._metrics.stage_latency.labels("decide").observe(self._clock() - t0)
        return outcomes

    async def _infer(self, frames: list[Frame]) -> tuple[AnomalyOut, ClassifierOut] | NotInspectedReason:
        """Both models' outputs, or why they could not be had."""
        inputs = batch_inputs(frames, self._parameters)
        backoff = self.cfg.triton.retry_backoff_ms / 1000
        deadline = min(f.deadline for f in frames)
        reason: NotInspectedReason = "triton_unavailable"
        for attempt in range(self.cfg.triton.retries + 1):
            try:
                anomaly, classes = await asyncio.gather(
                    self.models.anomaly(inputs.grey),
                    self.models.classify(inputs.rgb, inputs.process, inputs.present, inputs.notes),
                )
                return anomaly, classes
            except (TritonUnavailable, InferenceFailed) as err:
                reason = "triton_unavailable" if isinstance(err, TritonUnavailable) else "inference_failed"
                self._metrics.inference_errors.labels(reason).inc()
                held = self._log_limiter.allow(reason)
                if held is not None:
                    log.warning(
                        "inference_failed",
                        reason=reason,
                        error=str(err),
                        frames=len(frames),
                        attempt=attempt + 1,
                        similar_since_last=held,
                    )
            if (
                reason != "triton_unavailable"
                or attempt == self.cfg.triton.retries
                or self._clock() + backoff >= deadline
            ):
                return reason
            self._metrics.inference_retries.inc()
            await asyncio.sleep(backoff)
            backoff *= 2
        return reason


def not_inspected(frame: Frame, reason: NotInspectedReason) -> Outcome:
    return Outcome(frame, None, reason=reason)
