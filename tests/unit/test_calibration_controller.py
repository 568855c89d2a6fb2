"""The seed controller: every stage transition, the bounds, locks and transfers."""

from __future__ import annotations

import pytest

from calibration.controller import (
    ADJUSTING,
    CALIBRATING,
    LOCKED,
    REVALIDATING,
    STABLE,
    ClassSettings,
    ClassState,
    LotCounts,
    Stages,
    after_lot,
    transferred,
)
from calibration.engineer import override, unlock, with_settings

STAGES = Stages(initial_lots=3, window_lots=3)
CLEAN = LotCounts(negatives=1000, false_positives=0, confirmed_real=2)
NOISY = LotCounts(negatives=1000, false_positives=5, confirmed_real=2)  # 0.5% > 0.1% budget


def run(state: ClassState, *lots: LotCounts) -> ClassState:
    for counts in lots:
        state = after_lot(state, counts, STAGES)
    return state


def calibrated(**settings) -> ClassState:
    return run(ClassState.start(ClassSettings(**settings)), CLEAN, CLEAN, CLEAN)


def test_initial_calibration_holds_the_escape_averse_threshold_then_sets_the_baseline() -> None:
    state = ClassState.start()
    state = run(state, NOISY, NOISY)
    assert state.status == CALIBRATING and state.threshold == 0.55 and state.baseline_real_rate is None
    state = run(state, CLEAN)
    assert state.status == ADJUSTING and state.threshold == 0.55
    assert state.baseline_real_rate == pytest.approx(6 / 3006)


def test_over_budget_rises_by_the_step_each_lot() -> None:
    state = run(calibrated(), NOISY)
    assert state.threshold == pytest.approx(0.57) and state.status == ADJUSTING
    state = run(state, NOISY)
    assert state.threshold == pytest.approx(0.59)
    assert state.line("PART-SM") == "PART-SM threshold=0.59 fpr_3lot=0.33% status=adjusting"


def test_clean_lot_with_more_real_defects_than_baseline_falls_by_the_smaller_step() -> None:
    state = override(calibrated(), 0.7, lock_lots=0)
    more_real = LotCounts(negatives=1000, false_positives=0, confirmed_real=10)
    state = run(state, more_real)
    assert state.threshold == pytest.approx(0.69) and state.status == STABLE
    same_real = run(state, CLEAN)  # no false positive, but not above baseline: holds
    assert same_real.threshold == pytest.approx(0.69)


def test_production_mode_once_under_budget_and_drift_correction_continues() -> None:
    state = run(calibrated(), NOISY, CLEAN, CLEAN)  # the bad lot stays in fpr_3lot for three lots
    assert state.status == ADJUSTING and state.threshold == pytest.approx(0.61)
    state = run(state, CLEAN)
    assert state.status == STABLE and state.fpr_window == 0.0 and state.threshold == pytest.approx(0.61)
    state = run(state, NOISY)  # drift: over budget again
    assert state.status == ADJUSTING and state.threshold == pytest.approx(0.63)


def test_window_is_the_last_three_lots() -> None:
    state = run(calibrated(), NOISY, CLEAN, CLEAN)
    assert state.fpr_window == pytest.approx(5 / 3000)
    assert run(state, CLEAN).fpr_window == 0.0


def test_thresholds_stay_inside_engineer_and_hard_bounds() -> None:
    state = run(calibrated(upper=0.6), *[NOISY] * 10)
    assert state.threshold == 0.6
    more_real = LotCounts(negatives=1000, confirmed_real=50)
    state = run(override(calibrated(lower=0.53), 0.55, 0), *[more_real] * 10)
    assert state.threshold == 0.53
    with pytest.raises(ValueError, match="bounds"):
        ClassSettings(lower=0.4)
    with pytest.raises(ValueError, match="bounds"):
        ClassSettings(upper=0.97)
    with pytest.raises(ValueError, match="outside"):
        override(calibrated(upper=0.8), 0.9, 1)


def test_lock_holds_for_n_lots_then_adjusting_resumes() -> None:
    state = override(calibrated(), 0.8, lock_lots=2)
    assert state.status == LOCKED and state.threshold == 0.8
    state = run(state, NOISY)
    assert state.status == LOCKED and state.threshold == 0.8
    state = run(state, NOISY)
    assert state.status == ADJUSTING and state.threshold == pytest.approx(0.82)


def test_unlock_releases_at_once() -> None:
    state = unlock(override(calibrated(), 0.8, lock_lots=10))
    assert state.status == ADJUSTING and state.lock_until is None
    assert run(state, NOISY).threshold == pytest.approx(0.82)


def test_new_settings_pull_the_threshold_inside_the_bounds() -> None:
    state = override(calibrated(), 0.9, 0)
    state = with_settings(state, ClassSettings(upper=0.85))
    assert state.threshold == 0.85


def test_transfer_revalidates_then_becomes_stable() -> None:
    source = run(calibrated(), NOISY, NOISY)
    moved = transferred(source)
    assert moved.status == REVALIDATING and moved.threshold == source.threshold and moved.window == ()
    moved = run(moved, CLEAN, CLEAN)
    assert moved.status == REVALIDATING
    assert run(moved, CLEAN).status == STABLE
    assert run(moved, NOISY).status == REVALIDATING  # a bad lot restarts the count
    assert transferred(ClassState.start()).status == CALIBRATING


def test_counts_cannot_be_negative() -> None:
    with pytest.raises(ValueError):
        LotCounts(negatives=-1)
