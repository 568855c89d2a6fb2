"""The statistical controller and its exact statistics."""

from __future__ import annotations

import math

import pytest

from calibration.controller import ADJUSTING, CALIBRATING, STABLE, ClassSettings, Stages
from calibration.exact_tests import BernoulliCusum, binomial_cdf, clopper_pearson_upper
from calibration.statistical_controller import Reviewed, StatSettings, StatState, after_lot, choose

STAGES = Stages(initial_lots=2, window_lots=3)


def test_binomial_cdf_and_clopper_pearson_by_hand() -> None:
    assert binomial_cdf(2, 10, 0.5) == pytest.approx(56 / 1024)
    assert binomial_cdf(10, 10, 0.3) == 1.0 and binomial_cdf(-1, 10, 0.3) == 0.0
    # zero events: the bound solves (1 - p)^n = 0.05
    assert clopper_pearson_upper(0, 3000) == pytest.approx(1 - 0.05 ** (1 / 3000), rel=1e-6)
    assert clopper_pearson_upper(1, 100) == pytest.approx(0.0466, abs=1e-4)
    assert clopper_pearson_upper(0, 0) == 1.0


def test_cusum_signals_a_rise_and_not_the_budget_rate() -> None:
    cusum = BernoulliCusum(0.001, 0.003, h=5.0)
    s, alarms = 0.0, 0
    for _ in range(50):  # 1 false positive per 1000: the in-control rate
        s, alarm = cusum.update(s, 1, 1000)
        alarms += alarm
    assert alarms == 0
    s, alarm = cusum.update(s, 8, 1000)  # eight times the budget in one lot
    assert alarm and s == 0.0


def _lot(lot: int, scores_false: list[float], scores_real: list[float] = (), unreviewed: list[float] = ()) -> tuple:
    return (
        tuple(Reviewed(sc, False) for sc in scores_false)
        + tuple(Reviewed(sc, True) for sc in scores_real)
        + tuple(Reviewed(sc, None) for sc in unreviewed)
    )


def run(state: StatState, lots: list[tuple[int, tuple]]) -> StatState:
    for negatives, items in lots:
        state = after_lot(state, negatives, items, STAGES)
    return state


def test_calibrating_then_the_lowest_certified_threshold_rate_limited() -> None:
    # false positives all score under 0.70; plenty of clean negatives
    state = StatState.start(ClassSettings(initial_threshold=0.55), StatSettings(max_step=0.05))
    lots = [(3000, _lot(k + 1, [0.6, 0.62, 0.65, 0.68])) for k in range(6)]
    state = run(state, lots[:2])
    assert state.status == ADJUSTING and state.threshold == 0.55
    state = run(StatState.start(ClassSettings(initial_threshold=0.55), StatSettings(max_step=0.05)), lots[:1])
    assert state.status == CALIBRATING
    full = run(StatState.start(ClassSettings(initial_threshold=0.55), StatSettings(max_step=0.05)), lots)
    # 0.66 leaves one false positive per lot (0.68): 6 in 18,000, upper bound 0.066%; 0.65 leaves 12: 0.10%+
    assert choose(full) == pytest.approx(0.66)
    assert full.fpr_upper(0.65) > 0.001 >= full.fpr_upper(0.66)
    assert full.threshold == pytest.approx(0.66) and full.status == STABLE


def test_rate_limit_and_bounds() -> None:
    settings = ClassSettings(initial_threshold=0.55, upper=0.8)
    state = run(StatState.start(settings, StatSettings(max_step=0.02)),
                [(3000, _lot(1, [0.9] * 20)), (3000, _lot(2, [0.9] * 20)), (3000, _lot(3, [0.9] * 20))])  # fmt: skip
    assert state.threshold == pytest.approx(0.57)  # one rate-limited step after calibration
    state = run(state, [(3000, _lot(k, [0.9] * 20)) for k in range(4, 30)])
    assert state.threshold == 0.8 and state.status == ADJUSTING  # nothing inside the bounds is within budget


def test_unreviewed_candidates_count_as_false_and_confirmed_real_ones_do_not() -> None:
    state = StatState.start(ClassSettings(initial_threshold=0.55))
    state = run(state, [(2000, _lot(1, [0.6], scores_real=[0.9, 0.95], unreviewed=[0.57, 0.58])), (2000, ())])
    assert state.false_positives_at(0.55) == 3 and state.false_positives_at(0.59) == 1
    assert state.false_positives_at(0.61) == 0
    assert state.fpr_upper(0.55) > state.fpr_upper(0.61)


def test_change_detection_shortens_the_memory() -> None:
    state = StatState.start(ClassSettings(initial_threshold=0.55))
    quiet = [(3000, ()) for _ in range(5)]
    state = run(state, quiet)
    assert len(state.lots) == 5 and state.changes == 0
    state = run(state, [(3000, _lot(6, [0.7] * 30))])
    assert state.changes == 1 and [lot for lot, _ in state.lots] == [6]
    assert math.isclose(state.negatives, 3000)


def test_engineer_lock_holds_the_statistical_controller_too() -> None:
    from calibration.controller import LOCKED
    from calibration.engineer import override, unlock

    state = run(StatState.start(ClassSettings(initial_threshold=0.55)), [(3000, ()), (3000, ())])
    locked = override(state, 0.9, lock_lots=3)
    held = run(locked, [(3000, ()), (3000, ())])
    assert held.status == LOCKED and held.threshold == 0.9
    released = run(unlock(locked), [(3000, ())])
    assert released.threshold == pytest.approx(0.88)  # falls towards the certified minimum, one step a lot
