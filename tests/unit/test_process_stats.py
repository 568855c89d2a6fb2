"""Process statistics: anomalous parameters of a wafer against the wafers before it, with excursions kept
out of the statistics that judge the next wafers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.process_params import DEFAULT_PARAMETERS
from edge.watch.process_stats import Z_CAP, ProcessStats

KEY = ("RCP-A", "AOI-1")
OTHER = ("RCP-B", "AOI-1")
NAMES = list(DEFAULT_PARAMETERS)


def _learned(seed: int = 1, wafers: int = 200, sigma: float = 3.0) -> ProcessStats:
    """Statistics of ``wafers`` normal wafers of KEY (values clipped at 2.5 sd)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(1.0, 500.0, len(NAMES))
    sds = means * rng.uniform(0.005, 0.05, len(NAMES))
    stats = ProcessStats(sigma=sigma, min_wafers=30)
    for _ in range(wafers):
        values = means + sds * np.clip(rng.normal(size=len(NAMES)), -2.5, 2.5)
        stats.observe(KEY, NAMES, dict(zip(NAMES, values.tolist())))
    return stats


def _at_mean(stats: ProcessStats, **sigmas: float) -> dict[str, float]:
    """A wafer at the learned mean of every parameter, moved by the given number of sds for some."""
    snap = stats.snapshot(KEY)
    return {name: snap["mean"][name] + sigmas.get(name, 0.0) * snap["std"][name] for name in NAMES}


def test_nothing_is_judged_before_min_wafers():
    stats = ProcessStats(sigma=3.0, min_wafers=30)
    rng = np.random.default_rng(2)
    for _ in range(29):
        assert stats.observe(KEY, ["a", "b"], {"a": float(rng.normal(10, 1)), "b": float(rng.normal(0, 1))}) == []
    assert stats.observe(KEY, ["a", "b"], {"a": 1e6, "b": -1e6}) == []  # the 30th wafer: only 29 before it
    assert stats.snapshot(KEY)["wafers"] == 30


def test_judging_starts_at_min_wafers():
    stats = ProcessStats(sigma=3.0, min_wafers=30)
    rng = np.random.default_rng(3)
    for _ in range(30):
        stats.observe(KEY, ["a"], {"a": float(rng.normal(10, 1))})
    assert [row["name"] for row in stats.observe(KEY, ["a"], {"a": 1e6})] == ["a"]


def test_a_five_sigma_excursion_is_flagged_alone():
    stats = _learned()
    wafer = _at_mean(stats, anneal_temp_c=5.0)
    assert stats.observe(KEY, NAMES, wafer) == [
        {"name": "anneal_temp_c", "value": wafer["anneal_temp_c"], "z": 5.0},
    ]


def test_an_excursion_does_not_move_the_statistics():
    stats = _learned()
    before = stats.snapshot(KEY)
    wafer = _at_mean(stats, wet_bath_temp_c=-12.0)
    assert [row["name"] for row in stats.observe(KEY, NAMES, wafer)] == ["wet_bath_temp_c"]
    after = stats.snapshot(KEY)
    assert after["wafers"] == before["wafers"] + 1
    for field in ("count", "mean", "std"):
        assert after[field]["wet_bath_temp_c"] == before[field]["wet_bath_temp_c"]
    assert after["count"]["chem_ph"] == before["count"]["chem_ph"] + 1
    # the next normal wafer, a little off the mean, is not flagged
    assert stats.observe(KEY, NAMES, _at_mean(stats, wet_bath_temp_c=-2.0)) == []


def test_flags_are_sorted_by_absolute_z():
    stats = _learned(sigma=3.0)
    wafer = _at_mean(stats, chem_ph=3.5, etch_bias_v=-8.0, dep_temp_c=5.0, cmp_platen_rpm=2.9)
    rows = stats.observe(KEY, NAMES, wafer)
    assert [(row["name"], row["z"]) for row in rows] == [("etch_bias_v", -8.0), ("dep_temp_c", 5.0), ("chem_ph", 3.5)]


def test_output_is_json_with_capped_z():
    stats = ProcessStats(sigma=3.0, min_wafers=5)
    for _ in range(10):
        assert stats.observe(KEY, ["setpoint", "zero"], {"setpoint": 350.0, "zero": 0}) == []
    rows = stats.observe(KEY, ["setpoint", "zero"], {"setpoint": 351.5, "zero": -1})
    assert rows == [
        {"name": "setpoint", "value": 351.5, "z": Z_CAP},
        {"name": "zero", "value": -1.0, "z": -Z_CAP},
    ]
    assert json.loads(json.dumps(rows)) == rows
    assert stats.snapshot(KEY)["std"] == {"setpoint": 0.0, "zero": 0.0}  # the excursions were kept out


def test_missing_and_unusable_values_are_skipped():
    stats = ProcessStats(sigma=50.0, min_wafers=5)  # nothing flagged: every usable value is folded in
    rng = np.random.default_rng(4)
    for _ in range(20):
        stats.observe(KEY, ["a", "b"], {"a": float(rng.normal(10, 1)), "b": float(rng.normal(5, 1))})
    for b in (None, "n/a", True, float("nan"), float("inf")):
        values = {"a": 10.0} if b is None else {"a": 10.0, "b": b}
        assert stats.observe(KEY, ["a", "b"], values) == []
    assert stats.snapshot(KEY)["count"] == {"a": 25, "b": 20}


def test_welford_matches_numpy_on_large_offsets():
    rng = np.random.default_rng(5)
    data = 1e6 + rng.normal(0.0, 0.01, (500, 3))
    stats = ProcessStats(sigma=50.0, min_wafers=5)
    for row in data:
        stats.observe(KEY, ["x", "y", "z"], dict(zip("xyz", row.tolist())))
    snap = stats.snapshot(KEY)
    for i, name in enumerate("xyz"):
        assert snap["mean"][name] == pytest.approx(data[:, i].mean(), rel=1e-12)
        assert snap["std"][name] == pytest.approx(data[:, i].std(ddof=1), rel=1e-6)


def test_keys_are_independent_and_reset_forgets():
    stats = _learned()
    assert stats.snapshot(OTHER) == {"wafers": 0, "count": {}, "mean": {}, "std": {}}
    assert stats.observe(OTHER, NAMES, _at_mean(stats, chem_ph=20.0)) == []
    assert len(stats) == 2
    stats.reset(KEY)
    assert stats.snapshot(KEY)["wafers"] == 0 and len(stats) == 1


def test_new_parameter_names_are_learned_alongside():
    stats = _learned()
    names = [*NAMES, "new_sensor"]
    for i in range(40):
        assert stats.observe(KEY, names, {**_at_mean(stats), "new_sensor": float(i % 3)}) == []
    assert stats.snapshot(KEY)["count"]["new_sensor"] == 40
    assert [row["name"] for row in stats.observe(KEY, names, {"new_sensor": 50.0})] == ["new_sensor"]


def test_false_alarm_rate_on_a_stationary_process_is_near_nominal():
    rng = np.random.default_rng(6)
    stats = ProcessStats(sigma=3.0, min_wafers=30)
    flagged = 0
    wafers = 2000
    for _ in range(wafers):
        flagged += len(stats.observe(KEY, NAMES, dict(zip(NAMES, rng.normal(100.0, 2.0, len(NAMES)).tolist()))))
    rate = flagged / (wafers * len(NAMES))
    assert 0.001 < rate < 0.006  # 0.27 % for a normal process at 3 sigma


@pytest.mark.parametrize(("sigma", "min_wafers"), [(0.0, 30), (3.0, 1)])
def test_settings_are_checked(sigma, min_wafers):
    with pytest.raises(ValueError):
        ProcessStats(sigma=sigma, min_wafers=min_wafers)


def test_restored_statistics_judge_the_next_wafer_as_the_saved_ones_would():
    live = _learned(seed=5)
    restarted = ProcessStats(sigma=3.0, min_wafers=30)
    assert restarted.restore(live.export()) == []
    assert restarted.snapshot(KEY) == live.snapshot(KEY)
    wafer = {name: value * 1.3 for name, value in live.snapshot(KEY)["mean"].items()}  # far off on every parameter
    assert restarted.observe(KEY, NAMES, wafer) == live.observe(KEY, NAMES, wafer) != []
    state = live.export()[KEY]
    broken = ProcessStats(sigma=3.0, min_wafers=30)
    assert broken.restore({KEY: state[:-3]}) == [KEY] and broken.snapshot(KEY)["wafers"] == 0
