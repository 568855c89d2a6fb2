"""Copies of live frames scored by another version, off the critical path: the shadow's agreement and the canary's
disagreement guardrail.

A batch's outcomes come here once decided (before the replies go out, which never wait on this). The frames a
second version should score go to a bounded queue as one job per batch and version; a job that does not fit is
dropped and counted, never waited for. One worker scores the jobs in turn and hands each pair of outcomes on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from edge.flow import Frame, Outcome
from edge.inference.inputs import BatchInputs
from edge.inference.inspector import Inspector
from edge.models.served import Pair, Serving
from edge.ops.logs import get
from edge.ops.metrics import Metrics

log = get("edge.models.compare")

Compared = Callable[[Outcome, Outcome, str], None]  # (decided, candidate's, candidate's role) per frame


@dataclass(frozen=True, slots=True)
class Job:
    pair: Pair
    role: str
    decided: list[Outcome]
    inputs: BatchInputs


class Comparisons:
    def __init__(self, inspector: Inspector, metrics: Metrics, queue_batches: int, on_compared: Compared,
                 timed: Callable[[str, float], None], dropped: Counter[str]) -> None:  # fmt: skip
        self._inspector = inspector
        self._metrics = metrics
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_batches)
        self._on_compared = on_compared
        self._timed = timed
        self._rng = random.Random()
        self.dropped = dropped  # candidate version -> frames not compared (the queue was full)

    def offer(self, outcomes: list[Outcome], inputs: BatchInputs, serving: Serving) -> None:
        """Queue the copies this batch owes (never blocks)."""
        route = serving.route
        wanted: dict[str, list[int]] = {}
        for i, outcome in enumerate(outcomes):
            if outcome.verdict is None:
                continue
            decided_by = next(iter(outcome.models.values()), route.live)
            other = route.compared(decided_by, self._rng.random())
            if other is not None and other in serving.pairs:
                wanted.setdefault(other, []).append(i)
        for version, rows in wanted.items():
            role = route.role(version) or "candidate"
            job = Job(serving.pairs[version], role, [outcomes[i] for i in rows], inputs.take(rows))
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                self.dropped[version] += len(rows)
                self._metrics.model_compared.labels(version, role, "dropped").inc(len(rows))

    async def run(self) -> None:
        while True:
            job = await self._queue.get()
            frames: list[Frame] = [o.frame for o in job.decided]
            t0 = time.monotonic()
            try:
                copies = await self._inspector.score(frames, job.inputs, job.pair, live=False)
            except Exception:  # a comparison must never take the worker down
                log.exception("comparison_failed", version=job.pair.version, frames=len(frames))
                self._metrics.model_compared.labels(job.pair.version, job.role, "failed").inc(len(frames))
                continue
            self._timed(job.pair.version, time.monotonic() - t0)
            for decided, copy in zip(job.decided, copies, strict=True):
                self._on_compared(decided, copy, job.role)
