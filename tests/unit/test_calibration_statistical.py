"""The statistical controller: the FPR curve from every candidate's score, aimed at the budget with a margin that
shrinks with evidence; reviewer slips, late labels, other tools' evidence, change detection; and its exact
statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.controller import ADJUSTING, CALIBRATING, LOCKED, ClassSettings, Stages
from calibration.engineer import override, unlock
from calibration.exact_tests import BernoulliCusum, binomial_cdf, clopper_pearson_upper
from calibration.statistical_controller import (
    BINS,
    EDGES,
    Evidence,
    Reviewed,
    StatSettings,
    StatState,
    after_lot,
    bin_of,
    fpr_curve,
    late_labels,
    lot_shift,
    negative_probability,
)

STAGES = Stages(initial_lots=2, window_lots=3)
BUDGET = 0.001


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


def _gaussian_lot(rng: np.random.Generator, n: int, threshold: float, mu: float = -1.5, reals: int = 3,
                  audit: float = 0.05, noise: float = 0.0) -> list[Reviewed]:  # fmt: skip
    """A lot as the daemon sees it: every negative's confidence for the class, a few real defects, flagged ones
    labelled, 5% of the suppressed ones audited."""
    scores = np.r_[1 / (1 + np.exp(-rng.normal(mu, 1.0, n))), 1 / (1 + np.exp(-rng.normal(3.0, 1.2, reals)))]
    real = np.r_[np.zeros(n, bool), np.ones(reals, bool)]
    said = real ^ (rng.random(len(scores)) < noise)
    labelled = (scores >= threshold) | (rng.random(len(scores)) < audit)
    return [Reviewed(float(s), bool(x) if lab else None) for s, x, lab in zip(scores, said, labelled, strict=True)]


def _run(state: StatState, lots: int, n: int, seed: int = 0, **lot: float) -> StatState:
    rng = np.random.default_rng(seed)
    for _ in range(lots):
        state = after_lot(state, n, _gaussian_lot(rng, n, state.threshold, **lot), STAGES)  # type: ignore[arg-type]
    return state


def _oracle(mu: float) -> float:
    return float(1 / (1 + np.exp(-(mu + 3.0902))))


def test_it_calibrates_then_settles_near_the_threshold_that_spends_the_budget() -> None:
    state = _run(StatState.start(ClassSettings(initial_threshold=0.55)), 1, 3000)
    assert state.status == CALIBRATING and state.threshold == 0.55
    state = _run(state, 40, 3000, seed=1)
    assert state.status != CALIBRATING
    # above the oracle (the margin), by little: not pinned far under budget like a worst-case bound
    assert _oracle(-1.5) - 0.005 <= state.threshold <= _oracle(-1.5) + 0.04
    assert state.fpr_window <= BUDGET * 1.5 and state.fpr_upper(state.threshold) >= state.fpr_window


def test_the_curve_reads_the_many_suppressed_scores_and_its_margin_shrinks_with_evidence() -> None:
    rng = np.random.default_rng(3)
    small = Evidence.of(300, _gaussian_lot(rng, 300, 0.7))
    large = Evidence.of(30000, [i for _ in range(100) for i in _gaussian_lot(rng, 300, 0.7)])
    t = bin_of(0.86)
    _, sd_small = fpr_curve(small, StatSettings())
    rate_large, sd_large = fpr_curve(large, StatSettings())
    true = 0.5 * math.erfc((math.log(0.86 / 0.14) + 1.5) / math.sqrt(2))
    assert sd_large[t] < sd_small[t]
    assert rate_large[t] == pytest.approx(true, rel=0.35)  # from a tail fitted to the scores under it
    assert np.all(np.diff(rate_large[bin_of(0.5) :]) <= 1e-12)  # an FPR curve never rises with the threshold


def test_a_reviewer_slip_among_confirmed_real_scores_counts_for_little() -> None:
    neg = np.zeros(BINS)
    real = np.zeros(BINS)
    neg[bin_of(0.55) : bin_of(0.7)] = 200  # low scores: false positives
    real[bin_of(0.9) :] = 50  # high scores: real defects
    q = negative_probability(neg, real, 0.02)
    assert q[bin_of(0.56)] > 0.95 and q[bin_of(0.97)] < 0.05
    slip = Evidence.of(3000, [Reviewed(0.97, False)])  # a confirmed-real score reviewed "false"
    honest = Evidence.of(3000, [Reviewed(0.97, True)])
    base = Evidence(0.0, tuple(neg), tuple(real), (0.0,) * BINS)
    stat = StatSettings(label_noise=0.02)
    with_slip = fpr_curve(slip.plus(base), stat)[0][bin_of(0.95)]
    without = fpr_curve(honest.plus(base), stat)[0][bin_of(0.95)]
    assert with_slip - without < 0.3 / 3000  # a third of a false positive, not a whole one


def test_late_labels_replace_the_unlabelled_counts_they_were_taken_for() -> None:
    lot = Evidence.of(1000, [Reviewed(0.8, None), Reviewed(0.9, None)])
    fixed = lot.plus(late_labels([Reviewed(0.8, False), Reviewed(0.9, True)], [0, 0], half_life=10.0))
    assert fixed.unlabelled[bin_of(0.8)] == pytest.approx(0) and fixed.neg[bin_of(0.8)] == 1
    assert fixed.real[bin_of(0.9)] == 1 and fixed.negatives == 1000


def test_a_low_volume_class_borrows_the_other_tools_evidence() -> None:
    rng = np.random.default_rng(5)
    others = Evidence.of(30000, [i for _ in range(100) for i in _gaussian_lot(rng, 300, 0.7)])
    mine = Evidence.of(30, _gaussian_lot(rng, 30, 0.7))
    _, alone_sd = fpr_curve(mine, StatSettings())
    _, pooled_sd = fpr_curve(mine, StatSettings(), pool=others)
    t = bin_of(0.86)
    assert pooled_sd[t] < alone_sd[t] / 3
    # a class with plenty of its own evidence borrows nothing
    rich = Evidence.of(30000, [i for _ in range(100) for i in _gaussian_lot(rng, 300, 0.7)])
    assert fpr_curve(rich, StatSettings())[0][t] == fpr_curve(rich, StatSettings(), pool=mine)[0][t]


def test_a_step_in_false_positives_resets_the_memory_and_the_threshold_follows() -> None:
    state = _run(StatState.start(ClassSettings(initial_threshold=0.55)), 30, 3000, seed=2)
    settled = state.threshold
    state = _run(state, 8, 3000, seed=3, mu=-0.8)  # the tool got worse: many more confident false positives
    assert state.changes >= 1
    assert state.threshold >= min(_oracle(-0.8) - 0.01, settled + 8 * state.stat.max_step)


def test_rate_limit_and_bounds() -> None:
    settings = ClassSettings(initial_threshold=0.55, upper=0.8)
    state = StatState.start(settings, StatSettings(max_step=0.02))
    flood = [Reviewed(0.9, False)] * 20
    for _ in range(3):
        state = after_lot(state, 3000, flood, STAGES)
    assert state.threshold == pytest.approx(0.57)  # one rate-limited step after calibration
    for _ in range(30):
        state = after_lot(state, 3000, flood, STAGES)
    assert state.threshold == 0.8 and state.status == ADJUSTING  # nothing inside the bounds is within budget


def test_engineer_lock_holds_the_statistical_controller_too() -> None:
    state = _run(StatState.start(ClassSettings(initial_threshold=0.55)), 2, 3000)
    locked = override(state, 0.9, lock_lots=3)
    held = _run(locked, 2, 3000, seed=4)
    assert held.status == LOCKED and held.threshold == 0.9
    released = _run(unlock(locked), 1, 3000, seed=4)
    assert released.status != LOCKED and released.threshold < 0.9  # falls towards the budget, rate-limited
    assert released.threshold >= 0.9 - released.stat.max_step


def test_p_negative_holds_where_real_defects_crowd_at_the_top_and_never_rises() -> None:
    neg, real = np.zeros(BINS), np.zeros(BINS)
    neg[bin_of(0.5)] = 6  # the audit sample and flagged false positives low down ...
    neg[bin_of(0.84)] = 1
    real[bin_of(0.9995)] = 40  # ... real defects all at the very top, nothing labelled between
    q = negative_probability(neg, real, 0.015)
    assert np.all(np.diff(q) <= 1e-12)
    assert q[bin_of(0.6)] > 0.99 and q[bin_of(0.8)] > 0.99  # the unlabelled middle is not taken for real defects
    assert q[bin_of(0.9995)] < 0.01
    # a reviewer's single "real" among the audited negatives around it is a slip, not a real defect there
    neg[bin_of(0.5) : bin_of(0.8)] = 20
    real[bin_of(0.55)] = 1
    assert negative_probability(neg, real, 0.015)[bin_of(0.55)] > 0.97


def _histogram(rng: np.random.Generator, n: int, mu: float) -> np.ndarray:
    bins = np.searchsorted(np.array(EDGES), 1 / (1 + np.exp(-rng.normal(mu, 1.0, n))), side="right") - 1
    return np.bincount(np.clip(bins, 0, BINS - 1), minlength=BINS).astype(float)


def _gaussian_curve(mu: float) -> np.ndarray:
    lower = np.array(EDGES[:-1])
    x = np.log(np.maximum(lower, 1e-6) / (1 - np.maximum(lower, 1e-6)))
    return np.array([0.5 * math.erfc((v - mu) / math.sqrt(2)) for v in x])


def test_a_lots_shift_against_the_forecast_is_found_with_its_uncertainty() -> None:
    rng = np.random.default_rng(11)
    curve = _gaussian_curve(-1.5)
    for moved in (0.0, 0.3, -0.4):
        found = lot_shift(curve, _histogram(rng, 3000, -1.5 + moved))
        assert found is not None
        shift, variance = found
        assert abs(shift - moved) < 4 * math.sqrt(variance) and variance < 0.01
    assert lot_shift(curve, np.zeros(BINS)) is None  # nothing to fit


def test_a_cycling_tool_widens_the_margin_and_a_steady_one_does_not() -> None:
    def stream(cycle: float, seed: int) -> StatState:
        rng = np.random.default_rng(seed)
        state = StatState.start(ClassSettings(initial_threshold=0.55))
        for lot in range(120):
            mu = -1.5 + cycle * math.sin(2 * math.pi * lot / 12)
            state = after_lot(state, 300, _gaussian_lot(rng, 300, state.threshold, mu=mu), STAGES)
        return state

    steady, cycling = stream(0.0, 4), stream(0.4, 4)
    assert steady.forecast.drift_variance < 0.01 < cycling.forecast.drift_variance
    # the swing it cannot follow widens the spread the margin is taken from (in lots over it would cost)
    t = bin_of(0.85)
    with_drift = fpr_curve(cycling.evidence, cycling.stat, recent=cycling.recent, forecast=cycling.forecast)
    without = fpr_curve(cycling.evidence, cycling.stat, recent=cycling.recent)
    assert with_drift[0][t] == pytest.approx(without[0][t]) and with_drift[1][t] > 1.1 * without[1][t]


def test_the_recent_level_moves_the_whole_curve_so_a_drift_shows_in_the_tail() -> None:
    rng = np.random.default_rng(8)
    old = Evidence.of(60000, [i for _ in range(20) for i in _gaussian_lot(rng, 3000, 0.75, mu=-1.5)])
    recent = Evidence.of(900, [i for _ in range(3) for i in _gaussian_lot(rng, 300, 0.75, mu=-1.0)])
    t = bin_of(0.85)
    alone = fpr_curve(old, StatSettings())[0][t]
    levelled = fpr_curve(old, StatSettings(), recent=recent)[0][t]
    truth = 0.5 * math.erfc((math.log(0.85 / 0.15) + 1.0) / math.sqrt(2))
    assert levelled > 2 * alone  # the tail follows the bulk's move ...
    assert truth / 2.5 < levelled < truth * 2.5  # ... to about where a shift of the scores puts it


def test_a_step_of_the_whole_histogram_is_caught_at_low_volume_and_a_steady_one_is_not() -> None:
    rng = np.random.default_rng(21)
    state = StatState.start(ClassSettings(initial_threshold=0.8))
    for _ in range(100):  # 30 negatives a lot: a false positive at the budget every 30 lots, too few to count on
        state = after_lot(state, 30, _gaussian_lot(rng, 30, state.threshold, reals=0), STAGES)
    assert state.changes == 0
    before, lots = state.threshold, 0
    while state.changes == 0 and lots < 12:  # the tool's scores step up by 0.8 logits
        state = after_lot(state, 30, _gaussian_lot(rng, 30, state.threshold, mu=-0.7, reals=0), STAGES)
        lots += 1
    assert state.changes == 1 and lots <= 6  # seen in the bulk of the scores within a few lots
    assert state.threshold > before  # and followed at once


def test_the_threshold_goes_up_at_once_and_down_by_half() -> None:
    stat = StatSettings()
    assert stat.gain_up == 1.0 and stat.gain == 0.5
    settled = _run(StatState.start(ClassSettings(initial_threshold=0.55)), 40, 3000, seed=1)
    up = _run(settled, 1, 3000, seed=9, mu=-1.35)  # a little worse: the aim rises by less than a step
    down = _run(settled, 1, 3000, seed=9, mu=-1.65)  # a little better: the aim falls by as much
    assert up.threshold - settled.threshold > 1.5 * (settled.threshold - down.threshold) > 0
