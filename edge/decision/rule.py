"""The per-frame decision rule (DESIGN 3.5). Pure: values in, a verdict out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from calibration.table import Bands
from edge.flow import DEFECT, PASS, REVIEW, Verdict
from edge.taxonomy import GOOD, UNCLASSIFIED

TOP_K = 3


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
