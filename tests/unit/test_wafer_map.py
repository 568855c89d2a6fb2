"""Wafer-level analysis: clusters, geometry, spatial signature and severity on hand-built die maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge.flow import AUDIT, DEFECT, NOT_INSPECTED, PASS, REVIEW
from edge.taxonomy import UNCLASSIFIED
from edge.watch.die_grid import binomial_tail, compactness, components, perimeter, wafer_geometry
from edge.watch.wafer_map import CRITICAL_SEVERITY, PATTERN_WEIGHT, DieResult, line_fit, severity, summarise

RADIUS = 12
CANDIDATES = {"edge_ring", "scratch_line", "center", "cluster", "random"}


def round_grid(radius: int = RADIUS) -> list[tuple[int, int]]:
    """Dies whose centres lie inside a circle, on a grid starting at 0 (centre at (radius, radius))."""
    span = range(-radius, radius + 1)
    return [(x + radius, y + radius) for y in span for x in span if x * x + y * y <= radius * radius]


def square_grid(side: int = 25) -> list[tuple[int, int]]:
    return [(x, y) for y in range(side) for x in range(side)]


ROUND = round_grid()
SQUARE = square_grid()
GRIDS = {"round": (ROUND, (RADIUS, RADIUS)), "square": (SQUARE, (12, 12))}


def wafer(grid, defects, decision: str = DEFECT, defect_class: str = "PART-SM") -> list[DieResult]:
    """Every die of ``grid`` PASS except ``defects``."""
    defects = set(defects)
    return [
        DieResult(x, y, decision, defect_class) if (x, y) in defects else DieResult(x, y, PASS, None) for x, y in grid
    ]


def distance(p, centre) -> float:
    return math.hypot(p[0] - centre[0], p[1] - centre[1])


def pattern_of(summary: dict) -> str:
    return summary["signature"]["pattern"]


# --- spatial signatures ---------------------------------------------------------------------------------------------


def test_ring_of_defects_at_the_edge_is_an_edge_ring_and_critical():
    ring = [p for p in ROUND if distance(p, (RADIUS, RADIUS)) > 10]
    out = summarise(wafer(ROUND, ring))
    assert pattern_of(out) == "edge_ring"
    evidence = out["signature"]["evidence"]["edge_ring"]
    assert evidence["met"] and evidence["octants"] == 8 and evidence["enrichment"] > 2
    assert out["edge_ratio"] == 1.0 and out["center_ratio"] == 0.0
    assert out["severity"] > CRITICAL_SEVERITY and out["critical"] is True


def test_border_frame_of_a_square_grid_is_an_edge_ring():
    frame = [(x, y) for x, y in SQUARE if min(x, y) < 2 or max(x, y) > 22]
    out = summarise(wafer(SQUARE, frame))
    assert out["wafer"]["shape"] == "rectangular"
    assert pattern_of(out) == "edge_ring"
    assert out["edge_ratio"] == 1.0


def test_thin_partial_ring_at_low_density_is_still_an_edge_ring():
    rng = np.random.default_rng(7)
    outer = [p for p in ROUND if distance(p, (RADIUS, RADIUS)) > 10.5]
    picked = [outer[i] for i in rng.choice(len(outer), size=14, replace=False)]
    assert pattern_of(summarise(wafer(ROUND, picked))) == "edge_ring"


@pytest.mark.parametrize("grid_name", GRIDS)
def test_blob_at_the_centre_is_center(grid_name):
    grid, centre = GRIDS[grid_name]
    blob = [p for p in grid if distance(p, centre) <= 3]
    out = summarise(wafer(grid, blob))
    assert pattern_of(out) == "center"
    assert out["center_ratio"] == 1.0
    assert out["signature"]["evidence"]["center"]["enrichment"] > 5


def line(start, step, n):
    return [(start[0] + i * step[0], start[1] + i * step[1]) for i in range(n)]


@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize(
    "dies",
    [line((8, 6), (1, 0), 10), line((8, 7), (1, 1), 10), line((16, 7), (-1, 1), 10), line((6, 8), (0, 1), 10)],
    ids=["horizontal", "diagonal", "anti-diagonal", "vertical"],
)
def test_straight_line_of_ten_dies_is_a_scratch(grid_name, dies):
    grid, _ = GRIDS[grid_name]
    assert set(dies) <= set(grid)
    out = summarise(wafer(grid, dies))
    assert pattern_of(out) == "scratch_line"
    evidence = out["signature"]["evidence"]["scratch_line"]
    assert evidence["length"] == 10 and evidence["eigen_share"] == 1.0 and evidence["width"] == 0.0
    assert len(out["clusters"]) == 1 and out["clusters"][0]["size"] == 10  # a diagonal is 8-connected


def test_rasterised_line_at_an_odd_angle_is_a_scratch():
    angle = math.radians(27)
    dies = {(round(4 + t), round(9 + t * math.tan(angle))) for t in range(14)}
    out = summarise(wafer(ROUND, dies))
    assert len(out["clusters"]) == 1
    assert pattern_of(out) == "scratch_line"


def test_scratch_that_skips_dies_is_still_a_scratch():
    dies = [p for i, p in enumerate(line((6, 10), (1, 0), 13)) if i not in (3, 8)]
    out = summarise(wafer(ROUND, dies))
    assert len(out["clusters"]) == 3
    evidence = out["signature"]["evidence"]["scratch_line"]
    assert pattern_of(out) == "scratch_line" and evidence["source"] == "bridged" and evidence["dies"] == 11


def test_line_through_the_centre_is_a_scratch_not_center():
    dies = line((RADIUS - 5, RADIUS), (1, 0), 11)
    out = summarise(wafer(ROUND, dies))
    assert out["signature"]["evidence"]["center"]["met"]
    assert pattern_of(out) == "scratch_line"


def test_compact_blob_at_mid_radius_is_a_cluster():
    blob = [(x, y) for x in range(16, 19) for y in range(5, 8)]  # 3x3, about 0.55 of the radius out
    out = summarise(wafer(ROUND, blob))
    assert pattern_of(out) == "cluster"
    assert out["signature"]["evidence"]["cluster"]["compactness"] == round(math.pi / 4, 4)


def test_blob_hugging_the_edge_in_one_sector_is_a_cluster_not_a_ring():
    blob = [p for p in ROUND if distance(p, (RADIUS + 10, RADIUS)) <= 2.3]
    out = summarise(wafer(ROUND, blob))
    assert out["edge_ratio"] > 0.5
    assert out["signature"]["evidence"]["edge_ring"]["octants"] < 4
    assert pattern_of(out) == "cluster"


def test_few_scattered_dies_are_random_with_low_severity():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        picked = [ROUND[i] for i in rng.choice(len(ROUND), size=6, replace=False)]
        out = summarise(wafer(ROUND, picked))
        assert pattern_of(out) == "random", seed
        assert out["severity"] < 20, seed
        assert out["critical"] is False


@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("density", [0.03, 0.08, 0.2])
def test_seeded_random_scatter_reads_as_random_on_most_seeds(grid_name, density):
    grid, _ = GRIDS[grid_name]
    hits = 0
    for seed in range(10):
        mask = np.random.default_rng(seed).random(len(grid)) < density
        out = summarise(wafer(grid, [p for p, m in zip(grid, mask) if m]))
        hits += pattern_of(out) == "random"
    assert hits >= 9


def test_every_candidate_reports_its_evidence():
    out = summarise(wafer(ROUND, line((8, 6), (1, 0), 10)))
    evidence = out["signature"]["evidence"]
    assert set(evidence) == CANDIDATES
    assert [name for name, ev in evidence.items() if ev["met"]] == ["scratch_line"]
    assert {"enrichment", "chance", "octants"} <= set(evidence["edge_ring"])
    assert {"eigen_share", "width", "length", "source"} <= set(evidence["scratch_line"])
    assert {"enrichment", "chance"} <= set(evidence["center"])
    assert {"compactness", "share"} <= set(evidence["cluster"])


# --- clusters --------------------------------------------------------------------------------------------------------


def test_single_die_compactness_is_pi_over_four():
    assert compactness([(3, 3)]) == pytest.approx(math.pi / 4)
    out = summarise(wafer(ROUND, [(12, 12)]))
    assert out["clusters"] == [
        {
            "size": 1,
            "centroid": [12.0, 12.0],
            "bbox": [12, 12, 12, 12],
            "compactness": 0.7854,
            "dominant_class": "PART-SM",
        }
    ]


def test_perimeter_counts_exposed_edges_including_a_hole():
    square = [(x, y) for x in range(3) for y in range(3)]
    assert perimeter(square) == 12
    assert perimeter([p for p in square if p != (1, 1)]) == 16
    assert perimeter(line((0, 0), (1, 0), 10)) == 22
    assert perimeter(line((0, 0), (1, 1), 4)) == 16  # diagonal neighbours share no edge
    assert compactness(line((0, 0), (1, 0), 10)) == pytest.approx(4 * math.pi * 10 / 22**2)


def test_clusters_have_size_centroid_bbox_and_come_largest_first():
    block = [(x, y) for x in range(5, 8) for y in range(9, 11)]  # 3 x 2
    pair = [(15, 15), (16, 16)]  # diagonal neighbours: one cluster
    out = summarise(wafer(ROUND, [*block, *pair, (20, 12)]))
    sizes = [c["size"] for c in out["clusters"]]
    assert sizes == [6, 2, 1] and out["cluster_count"] == 3
    first, second, _ = out["clusters"]
    assert first["bbox"] == [5, 9, 7, 10] and first["centroid"] == [6.0, 9.5]
    assert first["compactness"] == round(4 * math.pi * 6 / 10**2, 4)
    assert second["bbox"] == [15, 15, 16, 16] and second["centroid"] == [15.5, 15.5]
    assert out["cluster_sizes"] == {"min": 1, "max": 6, "mean": 3.0}


def test_components_link_diagonals_and_bridge_gaps_on_request():
    cells = [(0, 0), (1, 1), (3, 1)]
    assert components(cells) == [[(0, 0), (1, 1)], [(3, 1)]]
    assert len(components(cells, reach=2)) == 1


def test_cluster_dominant_class_is_the_most_frequent():
    dies = [
        DieResult(10, 10, DEFECT, "SCR-FINE"),
        DieResult(11, 10, DEFECT, "SCR-FINE"),
        DieResult(12, 10, DEFECT, "PART-SM"),
        DieResult(13, 10, REVIEW, UNCLASSIFIED),
    ]
    out = summarise(dies)
    assert out["clusters"][0]["dominant_class"] == "SCR-FINE"
    assert out["dominant_class"] == "SCR-FINE"
    assert out["classes"] == {"SCR-FINE": 2, "PART-SM": 1, UNCLASSIFIED: 1}


def test_line_fit_measures_share_width_and_chebyshev_length():
    fit = line_fit(line((0, 0), (1, 1), 10))
    assert fit.eigen_share == pytest.approx(1.0) and fit.width == pytest.approx(0.0) and fit.length == 10
    assert fit.is_line
    blob = line_fit([(x, y) for x in range(3) for y in range(3)])
    assert blob.eigen_share == pytest.approx(0.5) and not blob.is_line


# --- decisions and counting ------------------------------------------------------------------------------------------


def test_empty_input_gives_a_zero_summary():
    out = summarise([])
    assert out["dies_inspected"] == 0 and out["not_inspected"] == 0 and out["defective"] == 0
    assert out["signature"] == {"pattern": "none", "evidence": {}}
    assert out["severity"] == 0.0 and out["critical"] is False
    assert out["clusters"] == [] and out["defect_map"] == [] and out["wafer"] is None
    json.dumps(out)


def test_all_pass_wafer_has_no_pattern_and_no_severity():
    out = summarise(wafer(ROUND, []))
    assert out["dies_inspected"] == len(ROUND) and out["decisions"] == {PASS: len(ROUND)}
    assert pattern_of(out) == "none" and out["severity"] == 0.0
    assert out["density"] == 0.0 and out["edge_ratio"] == 0.0 and out["classes"] == {}
    assert out["dominant_class"] is None
    assert out["wafer"] == {"shape": "round", "centre": [12.0, 12.0], "radius": 12.5}


def test_review_dies_are_defective_and_audit_dies_are_not():
    dies = wafer(ROUND, [])
    dies += [DieResult(12, 12, REVIEW, UNCLASSIFIED), DieResult(5, 12, AUDIT, "PART-SM")]
    out = summarise(dies)
    assert out["defective"] == 1
    assert out["defect_map"] == [[12, 12, UNCLASSIFIED]]
    assert out["classes"] == {UNCLASSIFIED: 1}
    assert out["decisions"][REVIEW] == 1 and out["decisions"][AUDIT] == 1


def test_defect_without_a_class_is_unclassified():
    out = summarise([DieResult(0, 0, DEFECT, None)])
    assert out["defect_map"] == [[0, 0, UNCLASSIFIED]]


def test_not_inspected_dies_are_counted_apart():
    dies = wafer(ROUND, [(12, 12)])
    dies += [DieResult(x, y, NOT_INSPECTED, None) for x, y in ROUND[:10]]
    out = summarise(dies)
    assert out["not_inspected"] == 10
    assert out["dies_inspected"] == len(ROUND) - 10
    assert out["decisions"][NOT_INSPECTED] == 10
    assert out["defective"] == 1
    assert out["coverage"] == round((len(ROUND) - 10) / len(ROUND), 4)
    assert out["density"] == round(1 / (len(ROUND) - 10), 4)
    assert out["wafer"]["centre"] == [12.0, 12.0]  # uninspected dies still place the wafer


def test_last_result_for_a_position_wins():
    dies = [DieResult(3, 3, DEFECT, "CRACK"), DieResult(4, 3, PASS, None), DieResult(3, 3, PASS, None)]
    out = summarise(dies)
    assert out["dies_inspected"] == 2 and out["defective"] == 0
    again = summarise([*dies, DieResult(4, 3, REVIEW, UNCLASSIFIED)])
    assert again["defect_map"] == [[4, 3, UNCLASSIFIED]] and again["dies_inspected"] == 2


def test_unknown_decision_is_refused():
    with pytest.raises(ValueError, match="MAYBE"):
        summarise([DieResult(0, 0, "MAYBE", None)])


def test_defect_map_is_sorted_by_row_then_column():
    out = summarise(wafer(ROUND, [(14, 3), (2, 12), (9, 3), (20, 12)]))
    assert [m[:2] for m in out["defect_map"]] == [[9, 3], [14, 3], [2, 12], [20, 12]]


def test_quadrants_split_by_sign_around_the_centre():
    out = summarise(wafer(ROUND, [(16, 16), (17, 17), (6, 16), (6, 6), (16, 6), (12, 12)]))
    assert out["quadrants"] == {"x+y+": 3, "x-y+": 1, "x-y-": 1, "x+y-": 1}
    assert sum(out["quadrants"].values()) == out["defective"]


def test_geometry_estimates_centre_radius_and_shape():
    round_geo = wafer_geometry(ROUND)
    assert (round_geo.centre_x, round_geo.centre_y, round_geo.radius) == (12.0, 12.0, 12.5)
    assert round_geo.shape == "round"
    assert round_geo.r_norm(24, 12) == pytest.approx(12 / 12.5)
    square_geo = wafer_geometry(SQUARE)
    assert square_geo.shape == "rectangular"
    assert square_geo.radius == pytest.approx(math.hypot(12, 12) + 0.5)
    assert square_geo.r_norm(24, 12) == pytest.approx(12 / 12.5)  # border middle is as far out as a corner
    assert square_geo.r_norm(0, 0) == pytest.approx(12 / 12.5)
    shifted = wafer_geometry([(x + 100, y - 50) for x, y in ROUND])
    assert (shifted.centre_x, shifted.centre_y) == (112.0, -38.0)


def test_binomial_tail_matches_the_direct_sum():
    n, p = 12, 0.3
    for k in range(n + 2):
        direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(direct, abs=1e-12)
    assert binomial_tail(5, 5, 0.0) == 0.0 and binomial_tail(5, 5, 1.0) == 1.0


# --- severity --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", sorted(set(PATTERN_WEIGHT) - {"none"}))
def test_severity_is_monotonic_in_density_for_a_pattern(pattern):
    values = [severity(d, round(d * 400), 400, pattern)[0] for d in np.linspace(0, 0.6, 25)]
    assert values == sorted(values)
    assert all(0.0 <= v <= 100.0 for v in values)


def test_summary_severity_rises_as_random_scatter_thickens():
    order = np.random.default_rng(3).permutation(len(ROUND))
    values = []
    for count in (4, 10, 20, 40, 80):
        out = summarise(wafer(ROUND, [ROUND[i] for i in order[:count]]))
        if pattern_of(out) == "random":
            values.append(out["severity"])
    assert len(values) >= 4 and values == sorted(values)


def test_systematic_patterns_outweigh_random_at_equal_density():
    random_value = severity(0.05, 3, 400, "random")[0]
    for pattern in ("edge_ring", "center", "scratch_line", "cluster"):
        assert severity(0.05, 3, 400, pattern)[0] > random_value


def test_severity_terms_are_normalised_and_clamped():
    value, terms = severity(0.9, 400, 400, "edge_ring")
    assert value == 100.0 and terms == {"density": 1.0, "cluster": 1.0, "pattern": 1.0}
    assert severity(0.0, 0, 0, "none") == (0.0, {"density": 0.0, "cluster": 0.0, "pattern": 0.0})
    value, _ = severity(1 / 3, 7, 123, "random")
    assert value == round(value, 1)


# --- output shape ----------------------------------------------------------------------------------------------------


def _plain(value) -> bool:
    """Only JSON's own types, nothing from numpy."""
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(_plain, value))
    return value is None or type(value) in (str, int, float, bool)


@pytest.mark.parametrize(
    "defects",
    [[], [(12, 12)], line((8, 6), (1, 1), 10), [p for p in ROUND if distance(p, (RADIUS, RADIUS)) > 10]],
    ids=["clean", "single", "scratch", "ring"],
)
def test_summary_is_plain_json(defects):
    out = summarise(wafer(ROUND, defects))
    assert _plain(out)
    assert json.loads(json.dumps(out)) == out
    for key in (
        "dies_inspected",
        "not_inspected",
        "decisions",
        "classes",
        "defect_map",
        "clusters",
        "density",
        "edge_ratio",
        "center_ratio",
        "quadrants",
        "signature",
        "severity",
    ):
        assert key in out


@pytest.mark.parametrize("side", [4, 6, 9])
def test_summaries_of_small_square_grids_with_mixed_decisions_are_plain_json(side):
    """Evidence flags come out of numpy comparisons: every one must still be a plain bool."""
    for seed in range(60):
        rng = np.random.default_rng(seed)
        decisions = rng.choice(
            ["DEFECT", "PASS", "REVIEW", "AUDIT", "NOT_INSPECTED"], side * side, p=[0.25, 0.55, 0.1, 0.05, 0.05]
        )
        dies = [DieResult(i % side, i // side, str(d), "CRACK") for i, d in enumerate(decisions)]
        summary = summarise(dies)
        assert json.loads(json.dumps(summary)) == summary
