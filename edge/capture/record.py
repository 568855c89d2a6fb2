"""Which dies the station keeps for review, and what it keeps of each (DESIGN 3.9). Pure.

Every die whose frame makes a DEFECT, REVIEW or AUDIT event is captured, and so is a borderline pass: a die
answered PASS on which some defect class came within ``margin`` under its threshold (the dies a threshold a little
lower would have flagged: what calibration and relabelling need to see). A capture holds the die as the models
saw it, the anomaly heatmap, the classifier's attention, the top classes, the anomaly score and band, the joined
process context and the model versions; an event's capture takes the event's id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.flow import AUDIT, DEFECT, PASS, REVIEW, Outcome
from edge.taxonomy import GOOD

BORDERLINE = "BORDERLINE"
REASONS = (DEFECT, REVIEW, AUDIT, BORDERLINE)


def capture_reason(outcome: Outcome, threshold_of: Callable[[str], float], margin: float) -> str | None:
    """Why ``outcome``'s die is kept: its event's decision, ``BORDERLINE``, or None (not kept)."""
    decision = outcome.event_decision
    if decision in (DEFECT, REVIEW, AUDIT):
        return decision
    verdict = outcome.verdict
    if verdict is None or verdict.decision != PASS or margin <= 0:
        return None
    for name, p in verdict.top_k:
        if name != GOOD and threshold_of(name) - margin <= p < threshold_of(name):
            return BORDERLINE
    return None


@dataclass(frozen=True, slots=True)
class CaptureFacts:
    """What a capture says of its die besides the pixels and maps (the capture index's columns)."""

    capture_id: str
    event_id: str | None  # the event it illustrates (None for a borderline pass)
    reason: str  # DEFECT, REVIEW, AUDIT or BORDERLINE
    ts: float  # epoch seconds
    tool_id: str
    recipe_id: str
    lot_id: str
    wafer_id: str
    die: tuple[int, int]
    frame_id: str
    decision: str  # what the tool was told
    defect_class: str
    confidence: float
    threshold: float | None
    score: float
    band: str
    facts: dict[str, Any]  # top_k, process {present, anomalous_parameters, chamber_id}, note, models, bands: JSON


@dataclass(frozen=True, slots=True)
class Capture(CaptureFacts):
    image: npt.NDArray[np.uint8]  # (3, H, W) RGB as the models saw it
    heatmap: npt.NDArray[np.float32] | None  # (32, 32)
    attention: npt.NDArray[np.float32] | None  # (64,)
    embedding: npt.NDArray[np.float32] | None = None  # (D,): the classifier's pooled representation, where served
    png: bytes | None = None  # ``image`` as PNG already (the tool's own file): written as it is, not encoded again


def capture_of(outcome: Outcome, capture_id: str, reason: str, models: dict[str, str], wall: float) -> Capture:
    """The capture of an inspected die (``outcome.verdict`` set)."""
    frame, h, verdict = outcome.frame, outcome.frame.header, outcome.verdict
    assert verdict is not None, "only inspected dies are captured"
    context = frame.context
    facts = {
        "top_k": [{"class": name, "p": p} for name, p in verdict.top_k],
        "process": {
            "present": context is not None,
            "anomalous_parameters": list(context.anomalous) if context else [],
            "chamber_id": context.chamber_id if context else None,
        },
        "note": frame.note,
        "models": dict(models),
        "model_digests": dict(outcome.digests),
        "bands": None if outcome.bands is None else {"pass": outcome.bands[0], "reject": outcome.bands[1]},
    }
    return Capture(
        capture_id=capture_id,
        event_id=capture_id if reason != BORDERLINE else None,
        reason=reason,
        ts=wall,
        tool_id=h.tool_id,
        recipe_id=h.recipe_id,
        lot_id=h.lot_id,
        wafer_id=h.wafer_id,
        die=h.die,
        frame_id=h.frame_id,
        decision=outcome.event_decision or verdict.decision,
        defect_class=verdict.defect_class,
        confidence=verdict.confidence,
        threshold=verdict.threshold,
        score=outcome.score,
        band=verdict.band,
        facts=facts,
        image=frame.tensors.rgb,
        heatmap=outcome.heatmap,
        attention=outcome.attention,
        embedding=outcome.embedding,
        png=frame.tensors.png,
    )


def reference(capture_id: str) -> dict[str, str]:
    """What an event says of its capture: the id and the review service's URL path for it."""
    return {"id": capture_id, "url": f"/api/captures/{capture_id}"}
