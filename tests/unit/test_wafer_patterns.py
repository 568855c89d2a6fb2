"""Simulated wafer patterns: where the defects land, how many, determinism, and that the wafer analysis reads the
pattern back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.flow import DEFECT, PASS
from edge.watch.die_grid import components, wafer_geometry
from edge.watch.wafer_map import DieResult, line_fit, summarise
from tools.sim.wafer_patterns import PATTERNS, draw_defects, round_wafer_dies

ROUND = round_wafer_dies(12)
SQUARE = [(x, y) for y in range(25) for x in range(25)]
GRIDS = {"round": ROUND, "square": SQUARE}
RATES = {"random": 0.05, "edge_ring": 0.08, "center": 0.05, "scratch_line": 0.025, "cluster": 0.04}


def draw(pattern: str, seed: int, grid=ROUND, rate: float | None = None) -> set[tuple[int, int]]:
    return draw_defects(grid, pattern, RATES[pattern] if rate is None else rate, np.random.default_rng(seed))


def r_norms(grid, dies) -> list[float]:
    geo = wafer_geometry(grid)
    return [geo.r_norm(*p) for p in dies]


def summary(grid, defects) -> dict:
    return summarise([DieResult(x, y, DEFECT if (x, y) in defects else PASS, "PART-SM") for x, y in grid])


# --- the round wafer -------------------------------------------------------------------------------------------------


def test_round_wafer_holds_whole_dies_inside_the_circle():
    dies = round_wafer_dies(12)
    assert len(dies) == len(set(dies))
    assert min(x for x, _ in dies) == 0 and min(y for _, y in dies) == 0
    assert dies == sorted(dies, key=lambda p: (p[1], p[0]))
    centre = (11, 11)  # the outermost whole dies sit 11 pitches out
    assert all((abs(x - centre[0]) + 0.5) ** 2 + (abs(y - centre[1]) + 0.5) ** 2 <= 144 for x, y in dies)
    assert (0, 0) not in dies and {(0, 11), (22, 11), (11, 0), (11, 22)} <= set(dies)
    assert len(dies) == pytest.approx(math.pi * 144, rel=0.15)
    geo = wafer_geometry(dies)
    assert geo.shape == "round" and (geo.centre_x, geo.centre_y) == centre


def test_round_wafer_is_symmetric():
    dies = set(round_wafer_dies(7.5))
    xs = [x for x, _ in dies]
    mid = (min(xs) + max(xs)) / 2
    assert all((round(2 * mid - x), y) in dies and (y, x) in dies for x, y in dies)


def test_radius_too_small_for_a_die_is_refused():
    with pytest.raises(ValueError):
        round_wafer_dies(0.5)


# --- drawing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_same_seed_same_wafer(pattern):
    assert draw(pattern, 5) == draw(pattern, 5)
    assert any(draw(pattern, 5) != draw(pattern, seed) for seed in range(6, 10))


@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("pattern", ["random", "edge_ring", "center", "cluster"])
@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_rate_sets_the_number_of_defects(grid_name, pattern, rate):
    grid = GRIDS[grid_name]
    defects = draw(pattern, 1, grid, rate)
    assert defects <= set(grid)
    assert len(defects) == round(rate * len(grid))


def test_scratch_length_follows_the_rate_up_to_its_chord():
    for seed in range(10):
        short = draw("scratch_line", seed, rate=0.02)
        assert len(short) == round(0.02 * len(ROUND))
        long = draw("scratch_line", seed, rate=0.5)
        assert 12 <= len(long) <= 25  # the whole chord, at least half a diameter


def test_zero_rate_draws_nothing_and_bad_arguments_are_refused():
    assert draw_defects(ROUND, "edge_ring", 0.0, np.random.default_rng(0)) == set()
    with pytest.raises(ValueError, match="pattern"):
        draw_defects(ROUND, "donut", 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rate"):
        draw_defects(ROUND, "random", 1.5, np.random.default_rng(0))


@pytest.mark.parametrize("grid_name", GRIDS)
def test_edge_ring_lands_at_the_edge_all_round(grid_name):
    grid = GRIDS[grid_name]
    geo = wafer_geometry(grid)
    for seed in range(5):
        defects = draw("edge_ring", seed, grid)
        assert np.mean([r > 0.75 for r in r_norms(grid, defects)]) >= 0.9
        assert len({geo.octant(*p) for p in defects}) >= 6


@pytest.mark.parametrize("grid_name", GRIDS)
def test_center_lands_at_the_centre(grid_name):
    grid = GRIDS[grid_name]
    for seed in range(5):
        assert np.mean([r < 0.35 for r in r_norms(grid, draw("center", seed, grid))]) >= 0.9


@pytest.mark.parametrize("grid_name", GRIDS)
def test_scratch_is_one_straight_connected_run(grid_name):
    grid = GRIDS[grid_name]
    for seed in range(10):
        defects = draw("scratch_line", seed, grid)
        assert len(components(defects)) == 1
        fit = line_fit(sorted(defects))
        assert fit.eigen_share > 0.97 and fit.width < 0.35 and fit.length == len(defects)


def test_cluster_is_one_compact_blob_off_centre():
    for seed in range(10):
        defects = draw("cluster", seed)
        assert len(components(defects)) == 1
        xy = np.array(sorted(defects), dtype=float)
        (r,) = r_norms(ROUND, [tuple(xy.mean(axis=0))])
        assert 0.3 < r < 0.75


def test_random_spreads_over_the_wafer():
    defects = draw("random", 0, rate=0.3)
    rs = r_norms(ROUND, defects)
    assert 0.3 < np.mean([r > 0.75 for r in rs]) < 0.6  # about the share of dies out there
    assert len(components(defects)) > 10


# --- read back by the wafer analysis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_wafer_analysis_recognises_each_pattern(grid_name, pattern):
    grid = GRIDS[grid_name]
    seen = [summary(grid, draw(pattern, seed, grid))["signature"]["pattern"] for seed in range(10)]
    assert seen.count(pattern) >= 8, seen


@pytest.mark.parametrize("pattern", ["edge_ring", "center", "cluster"])
def test_recognised_at_a_heavier_rate_too(pattern):
    seen = [summary(ROUND, draw(pattern, seed, rate=0.12))["signature"]["pattern"] for seed in range(10)]
    assert seen.count(pattern) >= 8, seen
