"""The daemon's calibration adapter on a real store: profiles from the config, batch records, reviews, lot end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calibration.table import Bands
from edge.config import parse_config
from edge.decision.rule import decide
from edge.decision.thresholds import Calibration, candidate_id, parse_review
from edge.flow import Frame, FrameHeader, Outcome, Rejected
from edge.ops.metrics import Metrics
from edge.taxonomy import DEFAULT_CLASSES

R, T = "R-7NM-L4", "AOI-01"


@pytest.fixture
def calib(tmp_path: Path) -> Calibration:
    cfg = parse_config({
        "tools": [{"id": T}], "recipes": {R: {}},
        "decision": {"default_threshold": 0.6, "thresholds": [{"tool": T, "class": "CRACK", "threshold": 0.8}]},
        "calibration": {"path": str(tmp_path / "c.sqlite"), "initial_lots": 1, "upper": 0.9},
    })  # fmt: skip
    c = Calibration(cfg, Metrics())
    yield c
    c.close()


def _outcome(frame_id: str, top: str, p: float, threshold_of, audit_draw: float = 0.9) -> Outcome:
    probs = np.zeros(len(DEFAULT_CLASSES), dtype=np.float32)
    probs[DEFAULT_CLASSES.index(top)], probs[0] = p, 1 - p
    verdict = decide(0.0, Bands(0.1, 0.2), probs, DEFAULT_CLASSES, threshold_of, audit_draw, 0.5)
    header = FrameHeader(frame_id, T, R, "L1", "W1", (0, 0), 0.0, "png", None, None, None)
    return Outcome(Frame(b"id", header, None, 0.0, 0.0, 0.0), verdict)


def test_profiles_start_from_the_configured_thresholds_inside_the_bounds(calib: Calibration) -> None:
    assert calib.threshold(R, T, "CRACK") == 0.8 and calib.threshold(R, T, "PART-SM") == 0.6
    assert calib.facts(R, T, "CRACK") == {"profile_version": 1, "status": "calibrating"}
    assert calib.facts(R, T, "GOOD") == {"profile_version": 1, "status": "n/a"}


def test_batch_records_inspected_dies_and_candidates_and_reviews_apply(calib: Calibration) -> None:
    th = lambda c: calib.threshold(R, T, c)  # noqa: E731
    flagged = _outcome("f1", "PART-SM", 0.95, th)
    suppressed = _outcome("f2", "PART-SM", 0.55, th)
    audited = _outcome("f3", "CRACK", 0.7, th, audit_draw=0.1)
    clean = _outcome("f4", "GOOD", 0.9, th)
    assert flagged.verdict.decision == "DEFECT" and audited.verdict.audit and not suppressed.verdict.audit
    calib.record([flagged, suppressed, audited, clean], ["E1", None, "E3", None])
    assert calib.review(b'{"event_id": "E1", "disposition": "false", "reviewer": "eng1"}') == "accepted"
    assert calib.review(b'{"event_id": "E3", "disposition": "real", "reviewer": "eng1"}') == "accepted"
    assert calib.review(b'{"event_id": "E9", "disposition": "real", "reviewer": "eng1"}') == "unknown_event"
    assert calib.review(b'{"event_id": "E1", "disposition": "maybe", "reviewer": "eng1"}') == "bad_value"
    db = calib.store._db
    assert db.execute("SELECT count FROM inspected").fetchone()[0] == 4
    rows = dict(db.execute("SELECT event_id, flagged FROM candidates").fetchall())
    assert rows == {"E1": 1, candidate_id(T, "f2"): 0, "E3": 0}
    calib.lot_end(R, T, "L1")
    assert calib.facts(R, T, "PART-SM")["status"] == "adjusting"


def test_a_canarys_dies_leave_their_events_for_review_but_not_the_live_versions_counts(calib: Calibration) -> None:
    th = lambda c: calib.threshold(R, T, c)  # noqa: E731
    live, canary = {"anomaly": "1", "classifier": "1"}, {"anomaly": "2", "classifier": "2"}
    by_live = replace(_outcome("f1", "PART-SM", 0.95, th), models=live)
    by_canary = replace(_outcome("f2", "PART-SM", 0.95, th), models=canary)
    rows = calib.rows([by_live, by_canary], ["E1", "E2"], live)
    assert rows is not None and len(rows.inspected) == 1 and [c[0] for c in rows.candidates] == ["E1"]
    assert [r[0] for r in rows.reviewable] == ["E1", "E2"]  # a reviewer still judges the canary's event
    only_canary = calib.rows([by_canary], ["E2"], live)
    assert only_canary is not None and not only_canary.inspected and not only_canary.candidates


def test_lot_end_moves_a_threshold_and_the_cache_follows(calib: Calibration) -> None:
    calib.lot_end(R, T, "L0")  # the one calibration lot
    th = lambda c: calib.threshold(R, T, c)  # noqa: E731
    outcomes = [_outcome(f"g{i}", "PART-SM", 0.95, th) for i in range(3)]
    calib.record(outcomes, ["A", "B", "C"])
    for event_id in "ABC":
        calib.review(json.dumps({"event_id": event_id, "disposition": "false", "reviewer": "x"}).encode())
    assert calib.lot_end(R, T, "L1") == {"PART-SM": (0.6, 0.62)}
    assert calib.threshold(R, T, "PART-SM") == 0.62 and calib.facts(R, T, "PART-SM")["profile_version"] == 2


def test_engineer_change_from_another_connection_is_picked_up(calib: Calibration, tmp_path: Path) -> None:
    from calibration.store import CalibrationStore

    other = CalibrationStore(tmp_path / "c.sqlite")
    other.override(R, T, "BRIDGE", 0.85, 0, "eng1", "from the CLI")
    other.close()
    assert calib.refresh() and calib.threshold(R, T, "BRIDGE") == 0.85
    assert not calib.refresh()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "bad_json"),
        (b"[]", "bad_json"),
        (b'{"disposition": "real", "reviewer": "a"}', "missing_key"),
        (b'{"event_id": "E", "disposition": "real"}', "missing_key"),
        (b'{"event_id": "E", "disposition": 1, "reviewer": "a"}', "bad_value"),
        (b'{"event_id": "E", "disposition": "relabel", "reviewer": "a"}', "bad_value"),
        (b'{"event_id": "E", "disposition": "relabel", "class": "BLOB", "reviewer": "a"}', "bad_value"),
        (b'{"event_id": "E", "disposition": "real", "class": "CRACK", "reviewer": "a"}', "bad_value"),
        (b'{"event_id": "E", "disposition": "real", "comment": 5, "reviewer": "a"}', "bad_value"),
        (b'{"event_id": "E", "disposition": "real", "comment": "' + b"x" * 1001 + b'", "reviewer": "a"}', "bad_value"),
    ],
)
def test_bad_reviews_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    parsed = parse_review(payload, DEFAULT_CLASSES)
    assert isinstance(parsed, Rejected) and parsed.reason == reason


def _judge(calib: Calibration, event_id: str, disposition: str, **extra: str) -> str:
    return calib.review(json.dumps({"event_id": event_id, "disposition": disposition, "reviewer": "eng1",
                                    **extra}).encode())  # fmt: skip


def test_relabels_and_novel_defects_judge_the_class_and_keep_the_label(calib: Calibration) -> None:
    """A relabel to another class (or novel) is a false positive of the class the station named, and the die's
    label is what the reviewer said; a REVIEW event, which names no class, can be decided too."""
    th = lambda c: calib.threshold(R, T, c)  # noqa: E731
    flagged = _outcome("f1", "PART-SM", 0.95, th)
    audited = _outcome("f2", "CRACK", 0.7, th, audit_draw=0.1)
    other = _outcome("f3", "SCR-FINE", 0.95, th)
    probs = np.zeros(len(DEFAULT_CLASSES), dtype=np.float32)
    probs[0] = 1.0
    unnamed = decide(0.5, Bands(0.1, 0.2), probs, DEFAULT_CLASSES, th, 0.9, 0.5)  # anomalous, GOOD on top
    header = FrameHeader("f4", T, R, "L1", "W1", (0, 0), 0.0, "png", None, None, None)
    review = Outcome(Frame(b"id", header, None, 0.0, 0.0, 0.0), unnamed)
    assert review.verdict is not None and review.verdict.decision == "REVIEW"
    calib.record([flagged, audited, other, review], ["E1", "E2", "E3", "E4"])
    assert _judge(calib, "E1", "relabel", **{"class": "PART-MD"}, comment="bigger than it looks") == "accepted"
    assert _judge(calib, "E2", "relabel", **{"class": "CRACK"}) == "accepted"  # the same class: real
    assert _judge(calib, "E3", "novel", comment="ring-shaped residue") == "accepted"
    assert _judge(calib, "E4", "relabel", **{"class": "RESIDUE"}) == "accepted"  # refused before: unknown_event
    assert _judge(calib, "E4", "relabel", **{"class": "RESIDUE"}) == "accepted"  # again: nothing changes
    db = calib.store._db
    real = dict(db.execute("SELECT event_id, real FROM candidates WHERE event_id LIKE 'E%'").fetchall())
    assert real == {"E1": 0, "E2": 1, "E3": 0}  # what each class's controller counts at the lot end
    labels = {x.event_id: (x.predicted, x.label, x.disposition, x.comment) for x in calib.store.labels()}
    assert labels == {
        "E1": ("PART-SM", "PART-MD", "relabel", "bigger than it looks"),
        "E2": ("CRACK", "CRACK", "relabel", ""),
        "E3": ("SCR-FINE", "NOVEL", "novel", "ring-shaped residue"),
        "E4": ("UNCLASSIFIED", "RESIDUE", "relabel", ""),
    }
    trail = [(r.defect_class, r.field, r.old, r.new) for r in calib.store.history(R, T, None, 50) if r.who == "eng1"]
    assert ("UNCLASSIFIED", "label", None, "RESIDUE") in trail and trail.count(("UNCLASSIFIED", "label", None,
                                                                               "RESIDUE")) == 1  # fmt: skip
    assert ("PART-SM", "label", None, "PART-MD") in trail
