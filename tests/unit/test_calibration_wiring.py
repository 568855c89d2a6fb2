"""Calibration wired into the station: config changes reconciled at a start, batches' rows durable with the outbox
and applied once, the escape estimate over a window, the FPR denominator per recipe, the seed rule's confirmed-real
reading, the certified bound as a metric, and every controller kind through the CLI's store calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.codec import SEED, STATISTICAL
from calibration.controller import PER_DIE, PER_REVIEWED, ClassSettings, ClassState, LotCounts, Stages, after_lot
from calibration.statistical_controller import StatState
from calibration.store import CLASS, CONFIG, CalibrationStore
from edge.config import parse_config
from edge.decision.thresholds import Calibration, CalibrationRows
from edge.ops.metrics import Metrics
from edge.publish.outbox import Outbox

R, T = "R1", "AOI-01"


def _cfg(tmp_path: Path, **calibration: object):
    return parse_config({"tools": [{"id": T}], "recipes": {R: {}},
                         "decision": {"classes": ["GOOD", "PART-SM", "CRACK"]},
                         "calibration": {"path": str(tmp_path / "c.sqlite"), **calibration}})  # fmt: skip


def test_a_changed_config_is_applied_at_the_start_and_audited_and_an_engineer_change_stands(tmp_path: Path) -> None:
    Calibration(_cfg(tmp_path), Metrics()).close()
    store = CalibrationStore(tmp_path / "c.sqlite")
    store.set_settings(R, T, "CRACK", "li", "tighter for CRACK", upper=0.9)
    store.close()
    Calibration(_cfg(tmp_path), Metrics()).close()  # the same config again: the engineer's bound stands
    store = CalibrationStore(tmp_path / "c.sqlite")
    assert store.states(R, T)["CRACK"].settings.upper == 0.9
    store.close()

    calibration = Calibration(_cfg(tmp_path, fpr_budget=0.002, controller=STATISTICAL), Metrics())
    store = calibration.store
    states = store.states(R, T)
    assert all(isinstance(s, StatState) for s in states.values()) and store.mode(R, T) == "calibrating"
    assert states["PART-SM"].settings.fpr_budget == 0.002 and states["CRACK"].settings.upper == 0.9
    trail = {(r.defect_class, r.field, r.new) for r in store.history(R, T, None, 50) if r.who == CONFIG}
    assert {("PART-SM", "fpr_budget", "0.002"), ("PART-SM", "controller", STATISTICAL)} <= trail
    calibration.close()
    refused = _cfg(tmp_path, lower=0.93)  # the engineer's upper bound for CRACK is 0.9: the config cannot apply
    with pytest.raises(Exception, match=r"CRACK.*bounds|bounds.*CRACK|lower"):
        Calibration(refused, Metrics())


def test_a_batch_is_applied_once_however_often_it_is_replayed(tmp_path: Path) -> None:
    rows = CalibrationRows([(R, T, "L1")] * 3, [("E1", R, T, "L1", "PART-SM", 0.8, True)],
                           [("E1", R, T, "L1", "DEFECT", "PART-SM")])  # fmt: skip
    assert CalibrationRows.loads(rows.dumps()) == rows
    box = Outbox(tmp_path / "outbox.sqlite")
    box.record([], [], calibration=("B1", rows.dumps()))
    box.record([], [], calibration=("B2", rows.dumps()))
    assert [b for b, _ in box.calibration_rows()] == ["B1", "B2"]
    calibration = Calibration(_cfg(tmp_path), Metrics())
    for _ in range(2):  # a crash after the store took B1 but before the outbox forgot it: the start replays it
        calibration.apply("B1", CalibrationRows.loads(box.calibration_rows()[0][1]))
    box.forget_calibration(["B1"])
    assert [b for b, _ in box.calibration_rows()] == ["B2"]
    db = calibration.store._db
    assert db.execute("SELECT count FROM inspected").fetchone() == (3,)
    assert db.execute("SELECT COUNT(*) FROM candidates").fetchone() == (1,)
    calibration.close()
    box.close()


def test_the_escape_estimate_covers_the_open_lots_and_the_last_closed_ones(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "c.sqlite", stages=Stages(initial_lots=1))
    store.ensure_profile(R, T, ("PART-SM",))
    clock = iter(range(1_000_000))
    store._clock = lambda: float(next(clock))
    for lot in range(12):
        name = f"L{lot}"
        store.add_candidate(f"f{lot}", R, T, name, "PART-SM", 0.9)
        store.review(f"f{lot}", "real", who="eng")
        store.add_candidate(f"s{lot}", R, T, name, "PART-SM", 0.52, flagged=False)
        store.review(f"s{lot}", "real" if lot < 2 else "false", who="eng")  # misses only in the two oldest lots
        store.count_inspected(R, T, name, 100)
        store.close_lot(R, T, name)
    assert store.escape_estimate(R, T, "PART-SM", None) == pytest.approx(2 / 14)
    assert store.escape_estimate(R, T, "PART-SM", 10) == 0.0  # the last ten lots missed nothing
    store.close()


def test_the_fpr_denominator_is_the_class_negatives_when_the_recipe_says_so(tmp_path: Path) -> None:
    fprs = {}
    for denominator in ("all", CLASS):
        store = CalibrationStore(tmp_path / f"{denominator}.sqlite", stages=Stages(initial_lots=1))
        store.ensure_profile(R, T, ("PART-SM",), SEED)
        store.count_inspected(R, T, "L1", 1000)
        for i in range(10):  # ten candidates of the class, two reviewed false
            store.add_candidate(f"c{i}", R, T, "L1", "PART-SM", 0.9 if i < 2 else 0.52, flagged=i < 2)
        store.review("c0", "false", who="eng")
        store.review("c1", "false", who="eng")
        store.close_lot(R, T, "L1", denominator)
        fprs[denominator] = store.states(R, T)["PART-SM"].window[-1]
        store.close()
    assert fprs["all"] == LotCounts(1000, 2, 0) and fprs[CLASS] == LotCounts(10, 2, 0)


def test_the_seed_rule_reads_the_confirmed_real_rate_per_die_or_per_reviewed_event() -> None:
    counts = LotCounts(negatives=990, false_positives=5, confirmed_real=10)
    assert counts.real_rate(PER_DIE) == pytest.approx(10 / 1000) and counts.real_rate(PER_REVIEWED) == 10 / 15
    start = ClassState.start(ClassSettings())
    per_event = after_lot(start, counts, Stages(initial_lots=1, real_rate=PER_REVIEWED))
    assert per_event.baseline_real_rate == pytest.approx(10 / 15)
    with pytest.raises(ValueError, match="real_rate"):
        Stages(real_rate="per fortnight")


def test_metrics_and_the_state_line_work_for_the_statistical_controller(tmp_path: Path) -> None:
    metrics = Metrics()
    calibration = Calibration(_cfg(tmp_path, controller=STATISTICAL, initial_lots=1), metrics)
    calibration.store.count_inspected(R, T, "L1", 3000)
    calibration.lot_end(R, T, "L1")
    state = calibration.store.states(R, T)["PART-SM"]
    assert "certified=" in state.line("PART-SM")
    bound = metrics.registry.get_sample_value("edge_calibration_certified_fpr_ratio",
                                              {"recipe": R, "tool": T, "class": "PART-SM"})  # fmt: skip
    assert bound is not None and 0 < bound < 0.002  # 3,000 clean negatives: at most 0.1% at 95%
    for who, call in (("li", lambda s: s.override(R, T, "PART-SM", 0.8, 2, "li", "x")),
                      ("li", lambda s: s.unlock(R, T, "PART-SM", "li", "y")),
                      ("li", lambda s: s.set_settings(R, T, "PART-SM", "li", "z", upper=0.9))):  # fmt: skip
        call(calibration.store)
        assert calibration.store.history(R, T, "PART-SM", 1)[0].who == who
    calibration.store.transfer(R, T, "AOI-02", "li", "tool swap")
    assert isinstance(calibration.store.states(R, "AOI-02")["PART-SM"], StatState)
    calibration.close()


def test_a_thin_class_borrows_the_same_class_on_the_recipes_other_tools_at_its_lot_end(tmp_path: Path) -> None:
    import numpy as np

    estimates = {}
    for with_other in (False, True):
        store = CalibrationStore(tmp_path / f"pool-{with_other}.sqlite", stages=Stages(initial_lots=1))
        for tool in ("AOI-01", "AOI-02"):
            store.ensure_profile(R, tool, ("PART-SM",), STATISTICAL)
        rng = np.random.default_rng(9)
        if with_other:
            for lot in range(6):  # AOI-02: plenty of evidence
                scores = 1 / (1 + np.exp(-rng.normal(-1.5, 1.0, 3000)))
                store.record([(R, "AOI-02", f"B{lot}")] * 3000,
                             [(f"b{lot}-{i}", R, "AOI-02", f"B{lot}", "PART-SM", float(s), False)
                              for i, s in enumerate(scores)])  # fmt: skip
                store.close_lot(R, "AOI-02", f"B{lot}")
        scores = 1 / (1 + np.exp(-np.random.default_rng(10).normal(-1.5, 1.0, 30)))  # the same for both
        store.record([(R, T, "A0")] * 30, [(f"a-{i}", R, T, "A0", "PART-SM", float(s), False)
                                           for i, s in enumerate(scores)])  # fmt: skip
        store.close_lot(R, T, "A0")
        estimates[with_other] = store.states(R, T)["PART-SM"]
        store.close()
    alone, pooled = estimates[False], estimates[True]
    assert alone.evidence == pooled.evidence  # its own evidence is its own; the estimate drew on the other tool
    assert pooled.fpr_window != alone.fpr_window and pooled.fpr_window > 0
