"""The decision rule of DESIGN 3.5, case by case."""

import numpy as np
import pytest

from calibration.table import Bands, BandTable, ThresholdTable
from edge.decision.rule import decide
from edge.flow import AUDIT, DEFECT, PASS, REVIEW
from edge.taxonomy import DEFAULT_CLASSES, UNCLASSIFIED

BANDS = Bands(pass_band=0.01, reject_band=0.02)


def probs(top: str, p: float) -> np.ndarray:
    out = np.full(len(DEFAULT_CLASSES), (1 - p) / (len(DEFAULT_CLASSES) - 1), dtype=np.float32)
    out[DEFAULT_CLASSES.index(top)] = p
    return out


def run(score, top, p, threshold=0.8, draw=0.99, fraction=0.05):
    return decide(score, BANDS, probs(top, p), DEFAULT_CLASSES, lambda c: threshold, draw, fraction)


def test_confident_defect_class_is_a_defect_event():
    v = run(0.005, "PART-SM", 0.9)
    assert (v.decision, v.defect_class, v.threshold, v.event_decision) == (DEFECT, "PART-SM", 0.8, DEFECT)
    assert v.confidence == pytest.approx(0.9)


def test_confidence_equal_to_threshold_fires():
    assert run(0.0, "CRACK", 0.8).decision == DEFECT


def test_anomalous_but_unnamed_is_review_unclassified():
    v = run(0.05, "GOOD", 0.9)
    assert (v.decision, v.defect_class, v.band) == (REVIEW, UNCLASSIFIED, "REJECT")


def test_anomalous_with_weak_defect_class_is_review():
    v = run(0.05, "SCR-FINE", 0.6)
    assert v.decision == REVIEW and v.suppressed


def test_normal_good_frame_passes_without_event():
    v = run(0.001, "GOOD", 0.95)
    assert (v.decision, v.defect_class, v.suppressed, v.event_decision) == (PASS, "GOOD", False, None)


def test_suppressed_candidate_passes_and_is_audited_by_draw():
    kept = run(0.015, "BRIDGE", 0.6, draw=0.01, fraction=0.05)
    quiet = run(0.015, "BRIDGE", 0.6, draw=0.5, fraction=0.05)
    assert kept.decision == PASS and kept.audit and kept.event_decision == AUDIT and kept.band == "MARGINAL"
    assert quiet.decision == PASS and quiet.suppressed and not quiet.audit and quiet.event_decision is None


def test_top_k_lists_the_three_most_likely_classes_in_order():
    v = run(0.0, "RESIDUE", 0.7)
    assert v.top_k[0][0] == "RESIDUE" and len(v.top_k) == 3
    assert v.top_k[0][1] >= v.top_k[1][1] >= v.top_k[2][1]


def test_threshold_lookup_prefers_the_most_specific_entry():
    table = ThresholdTable(0.6)
    table.set("*", "*", "CRACK", 0.7)
    table.set("R1", "*", "CRACK", 0.8)
    table.set("R1", "T1", "CRACK", 0.9)
    assert table.get("R1", "T1", "CRACK") == 0.9
    assert table.get("R1", "T2", "CRACK") == 0.8
    assert table.get("R2", "T1", "CRACK") == 0.7
    assert table.get("R2", "T1", "BRIDGE") == 0.6


@pytest.mark.parametrize("value", [0.49, 0.96])
def test_thresholds_outside_hard_bounds_are_refused(value):
    with pytest.raises(ValueError):
        ThresholdTable(0.6).set("R1", "T1", "CRACK", value)


def test_bands_are_per_recipe_and_tool_and_ordered():
    table = BandTable(BANDS, {("R1", "T2"): Bands(0.1, 0.2)})
    assert table.get("R1", "T2").pass_band == 0.1 and table.get("R1", "T1") is BANDS
    with pytest.raises(ValueError):
        Bands(0.2, 0.1)
