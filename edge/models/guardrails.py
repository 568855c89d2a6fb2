"""The rules that end a canary by themselves (pure; time comes in as numbers).

On the canary's most recent frames (``window_frames``), once there are ``min_frames``:

- ``not_inspected``: the share of its frames that got no verdict, over ``max_not_inspected``;
- ``latency``: its p99 turnaround over ``max_p99_ratio`` x the live version's p99 over the same stretch;
- ``disagreement``: the share of its frames the live version (scoring a copy) decides otherwise, over
  ``max_disagreement``;

and, once each version has ``min_reviews`` reviewed dies since the canary started:

- ``escapes``: confirmed escapes per reviewed sampled pass, the canary's over the live version's by more than
  ``max_escape_excess``;
- ``false_positives``: false positives per reviewed flag, the canary's over the live version's by more than
  ``max_fpr_excess``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.config import GuardrailConfig


@dataclass(frozen=True, slots=True)
class Breach:
    rule: str
    value: float
    limit: float
    frames: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": round(self.value, 4), "limit": round(self.limit, 4),
                "frames": self.frames, "detail": self.detail}  # fmt: skip


@dataclass
class Reviewed:
    """Reviews of one version's dies since the canary started."""

    passes: int = 0  # sampled passes (AUDIT) reviewed
    escapes: int = 0  # of which a real defect
    flags: int = 0  # DEFECT / REVIEW dies reviewed
    false: int = 0  # of which no defect

    @property
    def count(self) -> int:
        return self.passes + self.flags


@dataclass
class Guardrails:
    cfg: GuardrailConfig
    version: str
    started: float
    not_inspected: deque[bool] = field(init=False)
    latency: deque[float] = field(init=False)
    live_latency: deque[float] = field(init=False)
    disagreed: deque[bool] = field(init=False)
    reviews: dict[str, Reviewed] = field(default_factory=lambda: {"canary": Reviewed(), "live": Reviewed()})

    def __post_init__(self) -> None:
        n = self.cfg.window_frames
        self.not_inspected, self.latency, self.live_latency, self.disagreed = (deque(maxlen=n) for _ in range(4))

    def frame(self, canary: bool, inspected: bool, turnaround_s: float) -> None:
        """A frame answered, by the canary or by the live version."""
        if canary:
            self.not_inspected.append(not inspected)
            if inspected:
                self.latency.append(turnaround_s)
        elif inspected:
            self.live_latency.append(turnaround_s)

    def compared(self, disagreed: bool) -> None:
        """A canary frame the live version scored too."""
        self.disagreed.append(disagreed)

    def reviewed(self, canary: bool, decision: str, real: bool) -> None:
        """A review of a die one of the two versions decided (``decision``: the event's)."""
        tally = self.reviews["canary" if canary else "live"]
        if decision == "AUDIT":
            tally.passes += 1
            tally.escapes += real
        elif decision in ("DEFECT", "REVIEW"):
            tally.flags += 1
            tally.false += not real

    def breach(self) -> Breach | None:
        """The first rule crossed, or None."""
        cfg, n = self.cfg, len(self.not_inspected)
        if n >= cfg.min_frames:
            rate = sum(self.not_inspected) / n
            if rate > cfg.max_not_inspected:
                return Breach("not_inspected", rate, cfg.max_not_inspected, n, f"{sum(self.not_inspected)} of {n}")
        if len(self.latency) >= cfg.min_frames and len(self.live_latency) >= cfg.min_frames:
            canary, live = (float(np.percentile(np.asarray(x), 99)) for x in (self.latency, self.live_latency))
            if live > 0 and canary / live > cfg.max_p99_ratio:
                said = f"p99 {1000 * canary:.1f} ms against the live version's {1000 * live:.1f} ms"
                return Breach("latency", canary / live, cfg.max_p99_ratio, len(self.latency), said)
        m = len(self.disagreed)
        if m >= cfg.min_frames:
            rate = sum(self.disagreed) / m
            if rate > cfg.max_disagreement:
                return Breach("disagreement", rate, cfg.max_disagreement, m,
                              f"{sum(self.disagreed)} of {m} frames decided otherwise by the live version")  # fmt: skip
        return self._review_breach()

    def _review_breach(self) -> Breach | None:
        cfg, canary, live = self.cfg, self.reviews["canary"], self.reviews["live"]
        if min(canary.count, live.count) < cfg.min_reviews:
            return None
        if canary.passes and live.passes:
            excess = canary.escapes / canary.passes - live.escapes / live.passes
            if excess > cfg.max_escape_excess:
                return Breach("escapes", excess, cfg.max_escape_excess, canary.passes,
                              f"{canary.escapes}/{canary.passes} reviewed passes real, live "
                              f"{live.escapes}/{live.passes}")  # fmt: skip
        if canary.flags and live.flags:
            excess = canary.false / canary.flags - live.false / live.flags
            if excess > cfg.max_fpr_excess:
                said = f"{canary.false}/{canary.flags} reviewed flags false, live {live.false}/{live.flags}"
                return Breach("false_positives", excess, cfg.max_fpr_excess, canary.flags, said)
        return None

    def report(self) -> dict[str, Any]:
        n, m = len(self.not_inspected), len(self.disagreed)
        p99 = {name: round(1000 * float(np.percentile(np.asarray(x), 99)), 2) if x else None
               for name, x in (("canary", self.latency), ("live", self.live_latency))}  # fmt: skip
        return {
            "version": self.version, "since": self.started, "frames": n,
            "not_inspected_rate": round(sum(self.not_inspected) / n, 4) if n else None,
            "p99_ms": p99, "disagreement_rate": round(sum(self.disagreed) / m, 4) if m else None,
            "compared": m, "reviews": {k: vars(v).copy() for k, v in self.reviews.items()},
        }  # fmt: skip
