"""Batches in, outcomes out: both models on Triton, then the decision rule for every frame.

A Triton that cannot take the batch (down, restarting, a model loading) gets bounded retries with a doubling
back-off while the frames' deadlines allow; an error answer from a running server is not retried. A frame
ends ``not_inspected`` (with the reason) when the models could not be had, never silently dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from edge.config import Config
from edge.decision import rule
from edge.errors import InferenceFailed, TritonUnavailable
from edge.flow import Frame, NotInspectedReason, Outcome
from edge.inference.inputs import BatchInputs, Images, batch_inputs, hot_region
from edge.inference.triton_client import AnomalyOut, ClassifierOut
from edge.models.served import Pair, Serving
from edge.notes import MAX_TOKENS
from edge.ops.logs import RateLimited, get
from edge.ops.metrics import Metrics
from edge.ops.stage_cpu import clock

log = get("edge.inference.inspector")

Thresholds = Callable[[str, str, str], float]  # (recipe, tool, class) -> confidence threshold in force


class Models(Protocol):
    """The two models as Triton serves them (``edge.inference.triton_client.TritonClient``)."""

    async def anomaly(self, grey: Images, version: str = "") -> AnomalyOut: ...

    async def classify(
        self,
        rgb: Images,
        process: npt.NDArray[np.float32],
        present: npt.NDArray[np.float32],
        notes: npt.NDArray[np.int64],
        version: str = "",
    ) -> ClassifierOut: ...


Scored = Callable[[list[Outcome], BatchInputs, Serving], None]  # a batch's outcomes, for the copies off the path


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
        self.serving: Serving | None = None  # the route and the versions it names: set once learned from Triton
        self.on_scored: Scored | None = None  # the shadow and canary comparisons (``edge.models.compare``)
        self._thresholds = thresholds
        self._metrics = metrics
        self._log_limiter = log_limiter
        self._clock = clock
        self._parameters = {rid: r.parameters for rid, r in cfg.recipes.items()}
        self._audit_rng = random.Random()
        self._route_rng = random.Random()
        self.in_use: Counter[str] = Counter()  # batches in work per version: a version is unloaded once none is
        self._batch_done = asyncio.Event()

    async def drained(self, versions: list[str], timeout_s: float) -> bool:
        """Wait until no batch in work uses ``versions`` (False: still some after ``timeout_s``)."""
        end = self._clock() + timeout_s
        while any(self.in_use[v] > 0 for v in versions):
            self._batch_done.clear()
            try:
                await asyncio.wait_for(self._batch_done.wait(), max(0.0, end - self._clock()))
            except TimeoutError:
                return False
        return True

    async def warm(self, version: str) -> None:
        """One blank die through both models of ``version`` (its first requests are slow): ``EdgeError`` if it fails."""
        ing, params = self.cfg.ingest, next(iter(self._parameters.values()))
        h, w = ing.image_height, ing.image_width
        await asyncio.gather(
            self.models.anomaly(Images.of(np.zeros((1, 1, h, w), np.uint8)), version),
            self.models.classify(Images.of(np.zeros((1, 3, h, w), np.uint8)), np.zeros((1, len(params)), np.float32),
                                 np.zeros((1, 2), np.float32), np.zeros((1, MAX_TOKENS), np.int64), version),
        )  # fmt: skip

    def inputs(self, frames: list[Frame]) -> BatchInputs:
        return batch_inputs(frames, self._parameters)

    async def inspect(self, frames: list[Frame]) -> list[Outcome]:
        """One outcome per frame, in order: a verdict, or ``not_inspected`` with the reason. The route is read once:
        a batch finishes on the versions it started with, whatever switches meanwhile."""
        self._metrics.batch_size.observe(len(frames))
        serving = self.serving
        assert serving is not None, "the served versions are learned before the first batch"
        cpu = clock()
        inputs = batch_inputs(frames, self._parameters)
        groups: dict[str, list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(serving.route.decides(frame.header.tool_id, self._route_rng.random()), []).append(i)
        self.in_use.update(groups.keys())
        self._metrics.stage_cpu.add("batch", cpu)
        try:
            scored = await asyncio.gather(
                *(self.score([frames[i] for i in idx], inputs.take(idx), serving.pairs[v]) for v, idx in groups.items())
            )
        finally:
            self.in_use.subtract(groups.keys())
            self._batch_done.set()
        outcomes: list[Outcome | None] = [None] * len(frames)
        for idx, group in zip(groups.values(), scored, strict=True):
            for i, outcome in zip(idx, group, strict=True):
                outcomes[i] = outcome
        done = [o for o in outcomes if o is not None]
        if self.on_scored is not None:
            self.on_scored(done, inputs, serving)
        return done

    async def score(self, frames: list[Frame], inputs: BatchInputs, pair: Pair, live: bool = True) -> list[Outcome]:
        """The outcomes ``pair`` gives the frames. ``live``: these are the frames' verdicts (timed, counted); else
        a copy scored for comparison, which leaves the frames and the live metrics as they were."""
        t0 = self._clock()
        result = await self._infer(frames, inputs, pair.version, retry=live)
        if isinstance(result, str):
            return [not_inspected(f, result, pair) for f in frames]
        anomaly, classes = result
        infer_s = self._clock() - t0
        if live:
            self._metrics.stage_latency.labels("inference").observe(infer_s)
        outcomes = []
        t0, cpu = self._clock(), clock()
        for i, frame in enumerate(frames):
            h = frame.header
            if live:
                frame.timings["infer"] = infer_s
            bands = pair.bands.get(h.recipe_id, h.tool_id)
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
            embedding = None if classes.embedding is None else classes.embedding[i]
            outcomes.append(
                Outcome(frame, verdict, score, hot, None, heatmap, attention, (bands.pass_band, bands.reject_band),
                        pair.models, pair.digests, embedding)
            )  # fmt: skip
        if live:
            self._metrics.stage_latency.labels("decide").observe(self._clock() - t0)
            self._metrics.stage_cpu.add("decide", cpu)
        return outcomes

    async def _infer(
        self, frames: list[Frame], inputs: BatchInputs, version: str, retry: bool = True
    ) -> tuple[AnomalyOut, ClassifierOut] | NotInspectedReason:
        """Both models' outputs from ``version``, or why they could not be had (``retry``: within the deadlines)."""
        backoff = self.cfg.triton.retry_backoff_ms / 1000
        deadline = min(f.deadline for f in frames)
        reason: NotInspectedReason = "triton_unavailable"
        for attempt in range(self.cfg.triton.retries + 1):
            try:
                anomaly, classes = await asyncio.gather(
                    self.models.anomaly(inputs.grey, version),
                    self.models.classify(inputs.rgb, inputs.process, inputs.present, inputs.notes, version),
                )
                return anomaly, classes
            except (TritonUnavailable, InferenceFailed) as err:
                reason = "triton_unavailable" if isinstance(err, TritonUnavailable) else "inference_failed"
                if not retry:
                    return reason
                self._metrics.inference_errors.labels(reason).inc()
                held = self._log_limiter.allow(reason)
                if held is not None:
                    log.warning(
                        "inference_failed",
                        reason=reason,
                        error=str(err),
                        frames=len(frames),
                        attempt=attempt + 1,
                        version=version,
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


def not_inspected(frame: Frame, reason: NotInspectedReason, pair: Pair | None = None) -> Outcome:
    """The frame ends without a verdict; ``pair``: the version it was routed to."""
    if pair is None:
        return Outcome(frame, None, reason=reason)
    return Outcome(frame, None, reason=reason, models=pair.models, digests=pair.digests)
