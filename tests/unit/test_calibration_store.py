"""The calibration store: lots close into threshold moves, engineer controls, transfer, audit, two connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from calibration.codec import STATISTICAL, dumps, loads
from calibration.controller import LOCKED, REVALIDATING, ClassSettings, ClassState, Stages
from calibration.statistical_controller import StatState, bin_of
from calibration.store import CalibrationError, CalibrationStore

R, T, T2 = "R-7NM-L4", "AOI-01", "AOI-02"
CLASSES = ("PART-SM", "SCR-FINE")


@pytest.fixture
def store(tmp_path: Path) -> CalibrationStore:
    s = CalibrationStore(tmp_path / "calib.sqlite", stages=Stages(initial_lots=1, window_lots=3))
    s.ensure_profile(R, T, CLASSES)
    yield s
    s.close()


def _lot(store: CalibrationStore, lot: str, inspected: int, false_events: int, cls: str = "PART-SM") -> dict:
    store.count_inspected(R, T, lot, inspected)
    for i in range(false_events):
        store.add_candidate(f"{lot}-e{i}", R, T, lot, cls, 0.6)
        store.review(f"{lot}-e{i}", "false", who="eng1")
    return store.close_lot(R, T, lot)


def test_profile_starts_escape_averse_and_is_idempotent(store: CalibrationStore) -> None:
    assert store.thresholds(R, T) == {"PART-SM": 0.55, "SCR-FINE": 0.55}
    store.ensure_profile(R, T, (*CLASSES, "CRACK"))
    assert set(store.thresholds(R, T)) == {*CLASSES, "CRACK"} and store.version(R, T) == 1


def test_false_positives_over_budget_raise_only_that_class(store: CalibrationStore) -> None:
    _lot(store, "L1", 1000, 0)  # the one calibration lot
    moved = _lot(store, "L2", 1000, 5)
    assert moved == {"PART-SM": (0.55, 0.57)}
    assert store.thresholds(R, T) == {"PART-SM": 0.57, "SCR-FINE": 0.55} and store.version(R, T) == 2
    assert store.states(R, T)["PART-SM"].line("PART-SM") == "PART-SM threshold=0.57 fpr_3lot=0.25% status=adjusting"
    assert store.close_lot(R, T, "L2") == {}  # a lot closes once


def test_the_same_disposition_again_changes_nothing_and_a_new_one_is_audited(store: CalibrationStore) -> None:
    store.add_candidate("E1", R, T, "L1", "PART-SM", 0.6)
    reviews = lambda: [(r.who, r.old, r.new) for r in store.history(R, T, "PART-SM") if r.field == "disposition"]  # noqa: E731
    store.review("E1", "false", who="eng1")
    store.review("E1", "false", who="eng1")  # the broker handed the message over twice
    assert reviews() == [("eng1", None, "False")]
    store.review("E1", "real", who="eng2")
    assert reviews() == [("eng2", "False", "True"), ("eng1", None, "False")]


def test_a_late_disposition_counts_in_the_next_lot(store: CalibrationStore) -> None:
    _lot(store, "L1", 1000, 0)
    store.add_candidate("late", R, T, "L2", "PART-SM", 0.7)
    for i in range(4):
        store.add_candidate(f"x{i}", R, T, "L2", "PART-SM", 0.7)
    assert _lot(store, "L2", 1000, 0) == {}  # no dispositions yet
    for event in ("late", "x0", "x1", "x2", "x3"):
        store.review(event, "false", who="eng2")
    assert _lot(store, "L3", 1000, 0) == {"PART-SM": (0.55, 0.57)}
    with pytest.raises(CalibrationError, match="already used"):
        store.review("late", "real", who="eng2")


def test_review_errors_name_the_argument(store: CalibrationStore) -> None:
    with pytest.raises(CalibrationError, match="event_id"):
        store.review("nope", "real", who="eng1")
    store.add_candidate("e1", R, T, "L1", "PART-SM", 0.7)
    with pytest.raises(CalibrationError, match="who"):
        store.review("e1", "real", who="")


def test_engineer_controls_are_audited_and_bounded(store: CalibrationStore) -> None:
    store.set_settings(R, T, "PART-SM", "eng1", "tighter budget", fpr_budget=0.0005, upper=0.9)
    store.override(R, T, "PART-SM", 0.8, 2, "eng1", "customer complaint")
    state = store.states(R, T)["PART-SM"]
    assert state.status == LOCKED and state.threshold == 0.8 and state.settings.fpr_budget == 0.0005
    with pytest.raises(CalibrationError, match="threshold"):
        store.override(R, T, "PART-SM", 0.93, 1, "eng1", "above the engineer bound")
    with pytest.raises(CalibrationError, match="class"):
        store.override(R, T, "NOPE", 0.8, 1, "eng1", "x")
    with pytest.raises(CalibrationError, match="recipe/tool"):
        store.override(R, "AOI-99", "PART-SM", 0.8, 1, "eng1", "x")
    with pytest.raises(CalibrationError, match="reason"):
        store.unlock(R, T, "PART-SM", "eng1", "")
    store.unlock(R, T, "PART-SM", "eng2", "complaint closed")
    fields = [(row.who, row.field, row.old, row.new) for row in reversed(store.history(R, T, "PART-SM"))]
    assert ("eng1", "fpr_budget", "0.001", "0.0005") in fields
    assert ("eng1", "threshold", "0.55", "0.8") in fields and ("eng1", "status", "calibrating", "locked") in fields
    assert ("eng2", "status", "locked", "adjusting") in fields


def test_transfer_revalidates_on_the_new_tool(store: CalibrationStore) -> None:
    _lot(store, "L1", 1000, 0)
    _lot(store, "L2", 1000, 5)
    store.transfer(R, T, T2, "eng1", "tool swap")
    states = store.states(R, T2)
    assert states["PART-SM"].threshold == 0.57 and states["PART-SM"].status == REVALIDATING
    assert store.thresholds(R, T)["PART-SM"] == 0.57  # the source keeps its own
    assert store.history(R, T2, "PART-SM")[0].field == "transfer"
    with pytest.raises(CalibrationError, match="recipe/tool"):
        store.transfer(R, "AOI-99", T2, "eng1", "x")


def test_each_model_version_keeps_its_own_thresholds(store: CalibrationStore) -> None:
    _lot(store, "L1", 1000, 0)
    _lot(store, "L2", 1000, 5)  # past calibrating
    store.override(R, T, "PART-SM", 0.70, 0, "eng1", "tuned on version 1")
    assert store.switch_model("1", "2", "j.doe", "promote") == "transferred"  # a new version: carried over ...
    state = store.states(R, T)["PART-SM"]
    assert state.threshold == 0.70 and state.status == REVALIDATING  # ... to revalidate, never taken silently
    store.override(R, T, "PART-SM", 0.80, 0, "eng1", "tuned on version 2")
    assert store.switch_model("2", "1", "j.doe", "rollback") == "restored"
    assert store.states(R, T)["PART-SM"].threshold == 0.70  # version 1's own again
    assert store.switch_model("1", "2", "j.doe", "promote") == "restored"
    assert store.states(R, T)["PART-SM"].threshold == 0.80
    rows = [row for row in store.history(R, T, "PART-SM") if row.field == "model_version"]
    assert [(row.old, row.new, row.who) for row in rows] == [("1", "2", "j.doe"), ("2", "1", "j.doe"),
                                                             ("1", "2", "j.doe")][::-1]  # fmt: skip
    assert rows[-1].reason.startswith("transferred") and rows[0].reason.startswith("restored")


def test_audit_rows_cannot_be_changed_or_deleted(store: CalibrationStore) -> None:
    db = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="cannot"):
        db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError, match="cannot"):
        db.execute("UPDATE audit SET who='x'")
    db.close()


def test_a_second_connection_sees_changes_and_data_version_moves(store: CalibrationStore) -> None:
    other = CalibrationStore(store.path)
    before = store.data_version()
    other.override(R, T, "SCR-FINE", 0.7, 0, "eng1", "from the CLI")
    assert store.data_version() != before and store.thresholds(R, T)["SCR-FINE"] == 0.7
    other.close()


def test_statistical_profile_round_trips_and_runs(tmp_path: Path) -> None:
    s = CalibrationStore(tmp_path / "c.sqlite", stages=Stages(initial_lots=1, window_lots=3))
    s.ensure_profile(R, T, ("PART-SM",), controller_kind=STATISTICAL, settings=ClassSettings(initial_threshold=0.6))
    assert isinstance(s.states(R, T)["PART-SM"], StatState)
    s.count_inspected(R, T, "L1", 3000)
    s.close_lot(R, T, "L1")
    s.count_inspected(R, T, "L2", 3000)
    s.add_candidate("c1", R, T, "L2", "PART-SM", 0.52, flagged=False)  # suppressed, never reviewed
    [(old, new)] = s.close_lot(R, T, "L2").values()  # clean evidence: lower, by one rate-limited step
    state = s.states(R, T)["PART-SM"]
    assert old == 0.6 and new == pytest.approx(0.6 - state.stat.max_step)
    assert state.evidence.unlabelled[bin_of(0.52)] == 1 and state.evidence.negatives > 3000
    for state in (ClassState.start(), s.states(R, T)["PART-SM"]):
        assert loads(dumps(state)) == state
    s.close()


def test_escape_estimate_from_audited_candidates_and_profile_mode(store: CalibrationStore) -> None:
    assert store.escape_estimate(R, T, "PART-SM") is None and store.mode(R, T) == "calibrating"
    for i in range(8):  # 8 flagged, all real
        store.add_candidate(f"f{i}", R, T, "L1", "PART-SM", 0.9)
        store.review(f"f{i}", "real", who="eng1")
    for i in range(20):  # 20 suppressed, 4 audited, 1 of them real: about 5 real ones missed
        store.add_candidate(f"s{i}", R, T, "L1", "PART-SM", 0.5, flagged=False)
    for i, real in enumerate((True, False, False, False)):
        store.review(f"s{i}", "real" if real else "false", who="eng1")
    assert store.escape_estimate(R, T, "PART-SM") == pytest.approx(5 / 13)
    store.count_inspected(R, T, "L1", 5000)
    store.close_lot(R, T, "L1")
    assert store.mode(R, T) == "convergence"  # out of calibration, not yet a clean window
    for lot in ("L2", "L3"):
        _lot(store, lot, 5000, 0)
    assert store.mode(R, T) == "production"


def test_prune_forgets_the_candidates_of_lots_closed_long_ago_and_keeps_the_rest(tmp_path: Path) -> None:
    now = [1000.0]
    s = CalibrationStore(tmp_path / "c.sqlite", stages=Stages(initial_lots=1, window_lots=3), clock=lambda: now[0])
    s.ensure_profile(R, T, CLASSES)
    _lot(s, "OLD", 100, 2)  # closed at t=1000
    s.add_candidate("open-e0", R, T, "OPEN", "PART-SM", 0.6)  # a lot still running
    now[0] = 5000.0
    _lot(s, "NEW", 100, 1)  # closed at t=5000
    states = s.states(R, T)
    assert s.prune(before=3000.0) == 2
    left = {row[0] for row in s._db.execute("SELECT lot_id FROM candidates")}
    assert left == {"OPEN", "NEW"}
    assert s.states(R, T) == states and len(s.history(R, T)) > 0  # thresholds and audit untouched
    with pytest.raises(CalibrationError):  # a disposition for a pruned candidate names it as unknown
        s.review("OLD-e0", "real", who="eng1")
    s.close()


def test_a_state_saved_by_the_earlier_method_loads_rebinned_with_todays_settings() -> None:
    import json

    from calibration.statistical_controller import BINS, StatSettings

    old_bins = 53  # one bin under 0.50, then 0.50 .. 0.99, 0.995, 0.999
    counts = [0.0] * old_bins
    counts[0], counts[3] = 40.0, 2.0  # 40 scores under 0.50, 2 at 0.52
    plain = json.loads(dumps(StatState.start()))
    plain.pop("method")  # the earlier method wrote none
    plain.pop("forecast")
    plain["stat"] = {**plain["stat"], "recent_negatives": 1000.0, "retired_key": 1.0}
    for key in ("evidence", "recent"):
        plain[key] = {"negatives": 3000.0, "neg": counts, "real": [0.0] * old_bins, "unlabelled": counts}
    state = loads(json.dumps(plain))
    assert isinstance(state, StatState) and state.stat == StatSettings()
    assert len(state.evidence.neg) == BINS and sum(state.evidence.neg) == 42.0
    assert state.evidence.neg[bin_of(0.47)] == 40.0  # under 0.50: read as just under it (the cautious reading)
    assert state.evidence.neg[bin_of(0.52)] == 2.0
    assert loads(dumps(state)) == state
