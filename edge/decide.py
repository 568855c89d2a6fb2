"""The per-frame decision rule (DESIGN 3.5). Pure: values in, a verdict out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration.table import Bands
from edge.taxonomy import GOOD, UNCLASSIFIED

PASS = "PASS"
DEFECT = "DEFECT"
REVIEW = "REVIEW"
AUDIT = "AUDIT"
NOT_INSPECTED = "NOT_INSPECTED"
DECISIONS = (PASS, DEFECT, REVIEW, AUDIT, NOT_INSPECTED)
TOP_K = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: str  # PASS, DEFECT or REVIEW: what the tool is told
    defect_class: str  # the named class, UNCLASSIFIED for REVIEW, GOOD for a clean PASS
    confidence: float  # classifier probability of the top class (0 when the classifier was skipped)
    threshold: float | None  # threshold of the top class when it is a defect class
    band: str  # PASS, MARGINAL or REJECT
    suppressed: bool  # a defect class won but under its threshold
    audit: bool  # a suppressed candidate sampled for review
    top_k: tuple[tuple[str, float], ...]

    @property
    def event_decision(self) -> str | None:
        """Decision carried by the published event, or None when the frame makes no event."""
        if self.decision in (DEFECT, REVIEW):
            return self.decision
        return AUDIT if self.audit else None


def decide(
    score: float,
    bands: Bands,
    probs: npt.NDArray[np.float32] | None,
    classes: Sequence[str],
    threshold_of: Callable[[str], float],
    audit_draw: float,
    audit_fraction: float,
) -> Verdict:
    """Apply the rule. ``probs`` is None when the gate skipped the classifier; ``audit_draw`` is a
    uniform [0, 1) number supplied by the caller so the rule stays deterministic under test."""
    band = bands.name(score)
    top_k: tuple[tuple[str, float], ...]
    if probs is None:
        top, confidence, top_k = GOOD, 0.0, ()
    else:
        order = np.argsort(probs)[::-1]
        top, confidence = classes[int(order[0])], float(probs[order[0]])
        top_k = tuple((classes[int(i)], round(float(probs[i]), 6)) for i in order[:TOP_K])
    threshold = threshold_of(top) if top != GOOD else None
    if threshold is not None and confidence >= threshold:
        return Verdict(DEFECT, top, confidence, threshold, band, False, False, top_k)
    suppressed = threshold is not None
    if band == "REJECT":
        return Verdict(REVIEW, UNCLASSIFIED, confidence, threshold, band, suppressed, False, top_k)
    audit = suppressed and audit_draw < audit_fraction
    return Verdict(PASS, top if suppressed else GOOD, confidence, threshold, band, suppressed, audit, top_k)
