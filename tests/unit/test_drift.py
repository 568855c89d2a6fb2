"""Drift: the KS statistic against known values, and score / process drift that raises on a real shift,
stays quiet on a stationary stream and clears without flapping."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.process_params import DEFAULT_PARAMETERS
from edge.watch.drift import PROCESS, SCORE, Change, ScoreDrift, ks_statistic
from edge.watch.param_drift import ParamDrift

KEY = ("RCP-A", "AOI-1")
OTHER = ("RCP-A", "AOI-2")


def _brute_ks(a: list[float], b: list[float]) -> float:
    """sup |F_a - F_b| by direct counting at every observed value."""
    points = sorted(set(a) | set(b))
    return max(abs(sum(x <= p for x in a) / len(a) - sum(y <= p for y in b) / len(b)) for p in points)


def _feed_scores(drift: ScoreDrift, key, scores) -> list[tuple[int, Change]]:
    return [(i, c) for i, s in enumerate(scores) if (c := drift.add(key, float(s))) is not None]


def _scores(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Skewed PASS-like anomaly scores (gamma), optionally shifted by ``shift`` standard deviations."""
    shape, scale = 4.0, 0.05
    return rng.gamma(shape, scale, n) + shift * np.sqrt(shape) * scale


# --- KS statistic -----------------------------------------------------------------------------------


def test_ks_of_identical_samples_is_zero():
    sample = np.random.default_rng(1).normal(size=300)
    assert ks_statistic(sample, sample) == 0.0
    assert ks_statistic(sample, sample[::-1].copy()) == 0.0


def test_ks_of_disjoint_samples_is_one():
    assert ks_statistic([1.0, 2.0, 3.0], [10.0, 11.0]) == 1.0
    assert ks_statistic([10.0, 11.0], [1.0, 2.0, 3.0]) == 1.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2, 3, 4], [3, 4, 5, 6], 0.5),  # at 2: 2/4 against 0
        ([1, 2, 2, 3], [2, 2, 2, 4], 0.25),  # ties: at 2 both CDFs are 3/4; at 1 and at 3 they differ by 1/4
        ([0], [0, 1], 0.5),  # at 0: 1 against 1/2
        ([5, 5, 5], [5], 0.0),
    ],
)
def test_ks_hand_computed(a, b, expected):
    assert ks_statistic(a, b) == pytest.approx(expected)
    assert ks_statistic(b, a) == pytest.approx(expected)


def test_ks_rejects_an_empty_sample():
    with pytest.raises(ValueError):
        ks_statistic([], [1.0])


@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
)
def test_ks_agrees_with_direct_counting_under_heavy_ties(a, b):
    assert ks_statistic(a, b) == pytest.approx(_brute_ks(a, b))


# --- score drift ------------------------------------------------------------------------------------


def test_stationary_scores_raise_nothing_over_many_windows():
    rng = np.random.default_rng(11)
    drift = ScoreDrift(reference=500, window=500, threshold=0.2, clear_ratio=0.5)
    highest = 0.0
    for i, score in enumerate(_scores(rng, 500 + 40 * 500)):
        assert drift.add(KEY, float(score)) is None, f"false alarm at score {i}"
        highest = max(highest, drift.statistic(KEY) or 0.0)
    assert 0.0 < highest < 0.2 and not drift.raised(KEY)


def test_score_shift_raises_within_a_window_and_clears_once():
    rng = np.random.default_rng(12)
    drift = ScoreDrift(reference=500, window=500, threshold=0.2, clear_ratio=0.5)
    before, shifted, after = 3000, 2000, 6000
    stream = np.concatenate([_scores(rng, before), _scores(rng, shifted, shift=1.0), _scores(rng, after)])
    changes = _feed_scores(drift, KEY, stream)
    assert [c.raised for _, c in changes] == [True, False]  # one raise, one clear: no flapping
    (raised_at, raised), (cleared_at, cleared) = changes
    assert before < raised_at <= before + 500
    assert before + shifted < cleared_at <= before + shifted + 2 * 500
    assert raised.kind == SCORE and raised.key == KEY and raised.statistic >= 0.2
    assert raised.detail["window_median"] > raised.detail["reference_median"]
    assert cleared.statistic < 0.2 * 0.5
    json.dumps(dataclasses.asdict(raised))


def test_statistic_is_none_until_the_window_is_full():
    drift = ScoreDrift(reference=20, window=30, threshold=0.2, clear_ratio=0.5)
    scores = _scores(np.random.default_rng(3), 50)
    for score in scores[:49]:
        drift.add(KEY, float(score))
        assert drift.statistic(KEY) is None
    drift.add(KEY, float(scores[49]))
    assert 0.0 <= drift.statistic(KEY) <= 1.0
    assert drift.statistic(OTHER) is None


@pytest.mark.parametrize("every", [1, 10])
def test_ks_is_recomputed_on_every_kth_score(every):
    drift = ScoreDrift(reference=20, window=20, threshold=0.9, clear_ratio=0.5, every=every)
    rng = np.random.default_rng(4)
    last, changed_at = None, []
    for i, score in enumerate(_scores(rng, 200)):
        drift.add(KEY, float(score))
        if drift.statistic(KEY) != last:
            changed_at.append(i)
            last = drift.statistic(KEY)
    first_full = 39  # 20 reference scores, then the 20th window score
    assert changed_at[0] == first_full
    assert all((i - first_full) % every == 0 for i in changed_at)


def test_score_keys_are_independent():
    rng = np.random.default_rng(5)
    drift = ScoreDrift(reference=500, window=500, threshold=0.2, clear_ratio=0.5, every=1)
    for score in _scores(rng, 500):
        drift.add(KEY, float(score))
        drift.add(OTHER, float(score))
    changes = _feed_scores(drift, KEY, _scores(rng, 1000, shift=2.0))
    changes += _feed_scores(drift, OTHER, _scores(rng, 1000))
    assert [(c.key, c.raised) for _, c in changes] == [(KEY, True)]
    assert drift.raised(KEY) and not drift.raised(OTHER)


def test_score_reset_rebaselines_and_clears():
    rng = np.random.default_rng(6)
    drift = ScoreDrift(reference=500, window=500, threshold=0.2, clear_ratio=0.5)
    _feed_scores(drift, KEY, _scores(rng, 500))
    assert [c.raised for _, c in _feed_scores(drift, KEY, _scores(rng, 1000, shift=2.0))] == [True]
    change = drift.reset(KEY)
    assert change is not None and not change.raised and change.detail == {"reset": True}
    assert drift.statistic(KEY) is None and not drift.raised(KEY)
    assert drift.reset(KEY) is None
    assert _feed_scores(drift, KEY, _scores(rng, 5000, shift=2.0)) == []  # the shifted level is the new normal


def test_non_finite_scores_are_ignored():
    drift = ScoreDrift(reference=20, window=20, threshold=0.2, clear_ratio=0.5)
    for score in [float("nan"), float("inf")] * 30:
        assert drift.add(KEY, score) is None
    assert drift.statistic(KEY) is None


def test_change_is_frozen():
    change = Change(KEY, SCORE, True, 0.3, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.raised = False  # type: ignore[misc]


# --- process parameter drift ------------------------------------------------------------------------


NAMES = list(DEFAULT_PARAMETERS)


def _process(seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.uniform(1.0, 500.0, len(NAMES))
    return rng, means, means * rng.uniform(0.005, 0.05, len(NAMES))


def _wafer(values: np.ndarray) -> dict[str, float]:
    return dict(zip(NAMES, values.tolist()))


def test_stationary_process_raises_nothing():
    rng, means, sds = _process(31)
    drift = ParamDrift(reference=50, window=50, shift_sigma=1.0, clear_ratio=0.5)
    for i in range(2000):
        assert drift.add(KEY, NAMES, _wafer(rng.normal(means, sds))) is None, f"false alarm at wafer {i}"
    name, shift = drift.largest(KEY)
    assert name in NAMES and 0.0 <= shift < 1.0


def test_parameter_shift_is_named_first_and_clears_once():
    rng, means, sds = _process(22)
    target = NAMES.index("anneal_temp_c")
    drift = ParamDrift(reference=50, window=50, shift_sigma=1.0, clear_ratio=0.5)
    changes = []
    for i in range(1000):
        values = rng.normal(means, sds)
        if 400 <= i < 600:
            values[target] += 2.0 * sds[target]
        if (change := drift.add(KEY, NAMES, _wafer(values))) is not None:
            changes.append((i, change))
        if i == 599:
            assert drift.largest(KEY)[0] == "anneal_temp_c"
    assert [c.raised for _, c in changes] == [True, False]
    (raised_at, raised), (cleared_at, cleared) = changes
    assert 400 < raised_at <= 450
    # the clear level (0.5 sigma) is near the largest shift of 48 stationary parameters at 50 wafers a
    # side, so the clear may take a few windows; it must come, and only once
    assert 600 < cleared_at <= 800
    assert raised.kind == PROCESS and raised.statistic >= 1.0
    top = raised.detail["top"]
    assert top[0]["name"] == "anneal_temp_c" and top[0]["shift"] == raised.statistic
    assert len(top) == 5 and [t["shift"] for t in top] == sorted((t["shift"] for t in top), reverse=True)
    assert cleared.statistic < 0.5
    json.dumps(dataclasses.asdict(raised))


def test_variance_ratio_reports_a_wider_parameter():
    rng, means, sds = _process(23)
    target = NAMES.index("chem_ph")
    drift = ParamDrift(reference=50, window=50, shift_sigma=1.0, clear_ratio=0.5)
    change = None
    for i in range(300):
        values = rng.normal(means, sds)
        if i >= 50:
            values[target] = rng.normal(means[target] + 3.0 * sds[target], 3.0 * sds[target])
        change = drift.add(KEY, NAMES, _wafer(values)) or change
    assert change is not None and change.raised
    top = change.detail["top"][0]
    assert top["name"] == "chem_ph" and 4.0 < top["var_ratio"] < 20.0  # about 9
    assert all(0.2 < t["var_ratio"] < 3.0 for t in change.detail["top"][1:])


def test_constant_setpoint_uses_the_floored_std():
    drift = ParamDrift(reference=10, window=10, shift_sigma=1.0, clear_ratio=0.5)
    names = ["anneal_temp_c", "cmp_pad_age_h"]
    for _ in range(20):
        assert drift.add(KEY, names, {"anneal_temp_c": 400.0, "cmp_pad_age_h": 0.0}) is None
    assert drift.largest(KEY)[1] == 0.0
    changes = [drift.add(KEY, names, {"anneal_temp_c": 401.0, "cmp_pad_age_h": 0.0}) for _ in range(10)]
    raised = [c for c in changes if c is not None]
    assert len(raised) == 1 and raised[0].raised
    # 1 degree off a 400 degree setpoint with no spread: std floored at 0.1 % of 400 = 0.4
    assert drift.largest(KEY) == ("anneal_temp_c", pytest.approx(2.5))
    json.dumps(dataclasses.asdict(raised[0]))


def test_largest_is_none_until_the_window_is_full():
    rng, means, sds = _process(24)
    drift = ParamDrift(reference=10, window=10, shift_sigma=1.0, clear_ratio=0.5)
    for _ in range(19):
        drift.add(KEY, NAMES, _wafer(rng.normal(means, sds)))
        assert drift.largest(KEY) is None
    drift.add(KEY, NAMES, _wafer(rng.normal(means, sds)))
    assert drift.largest(KEY) is not None and drift.largest(OTHER) is None


def test_missing_parameters_are_not_judged_and_empty_wafers_ignored():
    drift = ParamDrift(reference=10, window=10, shift_sigma=1.0, clear_ratio=0.5)
    names = ["a", "b"]
    rng = np.random.default_rng(25)
    for _ in range(10):
        drift.add(KEY, names, {"a": float(rng.normal(10, 1)), "b": float(rng.normal(5, 1))})
    for _ in range(30):
        assert drift.add(KEY, names, {}) is None
        assert drift.add(KEY, names, {"a": "n/a", "b": float("nan")}) is None
    assert drift.largest(KEY) is None  # the window is still empty
    for _ in range(10):
        drift.add(KEY, names, {"a": float(rng.normal(10, 1))})  # b absent: it is not judged, however far
    assert drift.largest(KEY)[0] == "a"


def test_param_reset_rebaselines():
    rng, means, sds = _process(26)
    drift = ParamDrift(reference=50, window=50, shift_sigma=1.0, clear_ratio=0.5)
    for _ in range(50):
        drift.add(KEY, NAMES, _wafer(rng.normal(means, sds)))
    shifted = means + 3.0 * sds
    assert any([drift.add(KEY, NAMES, _wafer(rng.normal(shifted, sds))) for _ in range(60)])
    change = drift.reset(KEY)
    assert change is not None and change.kind == PROCESS and not change.raised
    assert drift.largest(KEY) is None and drift.reset(KEY) is None
    assert not any(drift.add(KEY, NAMES, _wafer(rng.normal(shifted, sds))) for _ in range(500))


@pytest.mark.parametrize("cls", [ScoreDrift, ParamDrift])
def test_settings_are_checked(cls):
    with pytest.raises(ValueError):
        cls(1, 50, 0.2, 0.5)
    with pytest.raises(ValueError):
        cls(50, 50, 0.0, 0.5)
    with pytest.raises(ValueError):
        cls(50, 50, 0.2, 1.5)


def test_a_restored_score_detector_goes_on_exactly_where_the_saved_one_was():
    rng = np.random.default_rng(31)
    scores = np.concatenate([rng.normal(0.1, 0.02, 150), rng.normal(0.16, 0.02, 150)])
    live = ScoreDrift(reference=100, window=50, threshold=0.3, clear_ratio=0.5)
    _feed_scores(live, KEY, scores[:170])  # mid-window, with the drift raised
    assert live.raised(KEY)
    restarted = ScoreDrift(reference=100, window=50, threshold=0.3, clear_ratio=0.5)
    assert restarted.restore(live.export()) == []
    assert restarted.raised(KEY) and restarted.statistic(KEY) == live.statistic(KEY)
    rest = rng.normal(0.1, 0.02, 300)  # back to normal after the restart: both clear at the same score
    cleared = _feed_scores(live, KEY, rest)
    assert _feed_scores(restarted, KEY, rest) == cleared and [c.raised for _, c in cleared] == [False]
    assert restarted.statistic(KEY) == live.statistic(KEY)


def test_a_saved_state_that_does_not_fit_the_settings_starts_afresh():
    rng, means, sds = _process(27)
    live = ParamDrift(reference=20, window=20, shift_sigma=1.0, clear_ratio=0.5)
    for _ in range(30):
        live.add(KEY, NAMES, _wafer(rng.normal(means, sds)))
    saved = live.export()
    same = ParamDrift(reference=20, window=20, shift_sigma=2.0, clear_ratio=0.5)  # a threshold may change
    assert same.restore(saved) == [] and same.largest(KEY) == live.largest(KEY)
    resized = ParamDrift(reference=20, window=30, shift_sigma=1.0, clear_ratio=0.5)  # a window may not
    assert resized.restore(saved) == [KEY] and resized.tracked_keys() == []
    damaged = ScoreDrift(reference=20, window=20, threshold=0.3, clear_ratio=0.5)
    assert damaged.restore({KEY: b"\x00"}) == [KEY]
    assert damaged.restore(saved) == [KEY]  # another detector's state
