"""Defect event messages (DESIGN 3.6): time-ordered unique ids and the JSON body. Pure."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.flow import HotRegion, Verdict

SCHEMA = "edge.defect_event/1"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class EventIds:
    """ULID-style ids: 48-bit milliseconds then 80 random bits, Crockford base32 (26 characters).

    Ids sort by creation time; within one millisecond the random part is incremented, so ids
    from one generator are strictly increasing.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def new(self) -> str:
        with self._lock:
            ms = int(self._clock() * 1000)
            if ms <= self._last_ms:
                ms, rand = self._last_ms, self._last_rand + 1
            else:
                rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
            self._last_ms, self._last_rand = ms, rand
        value = (ms << 80) | rand
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclass(frozen=True, slots=True)
class FrameFacts:
    """What the event says about the frame besides the verdict."""

    station: str
    tool_id: str
    recipe_id: str
    lot_id: str
    wafer_id: str
    die: tuple[int, int]
    frame_id: str
    score: float
    hot: HotRegion | None  # the anomaly's peak and hot region
    process_present: bool
    anomalous_parameters: tuple[dict[str, Any], ...]
    models: dict[str, str]  # model name -> the version that decided the frame
    latency_ms: dict[str, float]
    digests: dict[str, str] | None = None  # model name -> that version's digest (sha256 of what Triton loads)
    chamber_id: str | None = None  # the wafer's chamber, where its process log names one


def event_body(
    event_id: str,
    ts: float,
    decision: str,
    verdict: Verdict | None,
    facts: FrameFacts,
    calibration: dict[str, Any],
    reason: str | None = None,
) -> dict[str, Any]:
    """The event message. ``verdict`` is None for NOT_INSPECTED frames (with ``reason``)."""
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": event_id,
        "ts": ts,
        "station": facts.station,
        "tool_id": facts.tool_id,
        "recipe_id": facts.recipe_id,
        "lot_id": facts.lot_id,
        "wafer_id": facts.wafer_id,
        "die": list(facts.die),
        "frame_id": facts.frame_id,
        "decision": decision,
        "defect_class": verdict.defect_class if verdict else None,
        "confidence": round(verdict.confidence, 6) if verdict else None,
        "threshold": verdict.threshold if verdict else None,
        "calibration": calibration,
        "anomaly": {
            "score": round(facts.score, 8) if verdict else None,
            "band": verdict.band if verdict else None,
            "peak_xy": list(facts.hot.peak_xy) if facts.hot else None,
            "bbox": list(facts.hot.bbox) if facts.hot else None,
        },
        "top_k": [{"class": c, "p": p} for c, p in verdict.top_k] if verdict else [],
        "process": {
            "present": facts.process_present,
            "anomalous_parameters": list(facts.anomalous_parameters),
            "chamber_id": facts.chamber_id,
        },
        "models": facts.models,
        "model_digests": facts.digests or {},
        "latency_ms": facts.latency_ms,
    }
    if reason is not None:
        body["reason"] = reason
    return body


def event_topic(prefix: str, station: str, tool_id: str) -> str:
    return f"{prefix}/{station}/events/{tool_id}"
