"""Wafer-level analysis of per-die decisions: clusters, spatial signature and severity. Pure: dies in, a dict out.

At wafer end the daemon hands every die it saw (position on the die grid and decision) to ``summarise``, which
returns the JSON-ready wafer summary. A die is *defective* when its decision is DEFECT or REVIEW; AUDIT and PASS
dies are clean, and NOT_INSPECTED dies are counted apart (they are neither clean nor defective). When a position is
reported twice the last result wins: the die was re-inspected.

Geometry. The wafer centre is the centre of the bounding box of all reported die positions (a die that could not be
inspected still sits on the wafer, so it helps place the edge) and the radius is the largest distance from that
centre to a die centre plus half a die. A grid that fills at least ``RECT_FILL`` of its bounding box is taken as
rectangular, and its normalised radius is the larger of |dx| and |dy| over the half-extents (so the edge zone is a
frame along the border); otherwise it is round and the normalised radius is the Euclidean distance over the radius.

Clusters are the 8-connected components of defective dies. Compactness is 4*pi*A/P^2 with A the number of dies and
P the number of exposed die edges of the union of unit squares: a single die or any filled square gives pi/4, a
filled digital disc about pi^2/16, a ragged or hollow cluster less.

Spatial signature, the first rule met in this order (every candidate's numbers are reported as evidence, with
``met`` saying whether its rule holds). The order settles overlaps: short arcs of a ring are straight enough to pass
for scratches, and a scratch through the middle enriches the centre zone.

- ``none``: no defective die.
- ``edge_ring``: at least ``EDGE_MIN_DIES`` defective dies beyond ``EDGE_ZONE`` of the radius, their share of the
  defective dies at least ``EDGE_MIN_ENRICHMENT`` times the share of inspected dies there, a binomial tail
  probability of that many (or more) by chance at most ``MAX_CHANCE``, and spread over at least ``EDGE_MIN_OCTANTS``
  of the eight octants around the centre. A blob hugging the edge in one sector is therefore a ``cluster``, not a
  ring.
- ``scratch_line``: a group of defective dies whose principal axis (a plain PCA fit, no outlier rejection) carries
  more than ``LINE_MIN_EIGEN_SHARE`` of the positional variance, whose dies lie within ``LINE_MAX_WIDTH`` (RMS) of
  that axis, spanning at least ``LINE_MIN_LENGTH`` die steps (Chebyshev, so a diagonal run of n dies spans n like a
  straight one) and holding at least ``LINE_MIN_SHARE`` of the defective dies. Groups tried: each cluster of at
  least ``LINE_MIN_DIES`` dies, and, with at least ``LINE_MIN_GAPPED_DIES`` dies, each group with one-die gaps
  bridged (a scratch that skips a die) and all defective dies together.
- ``center``: at least ``CENTER_MIN_DIES`` defective dies inside ``CENTER_ZONE`` of the radius, enriched at least
  ``CENTER_MIN_ENRICHMENT`` times over the share of inspected dies there, with chance at most ``MAX_CHANCE``.
- ``cluster``: the largest cluster has at least ``CLUSTER_MIN_DIES`` dies, holds at least ``CLUSTER_MIN_SHARE`` of
  the defective dies and has compactness at least ``CLUSTER_MIN_COMPACTNESS``.
- ``random``: defective dies present and none of the above.

Severity 0-100, rounded to one decimal and clamped::

    severity = 100 * (W_DENSITY * min(1, density / DENSITY_FULL)
                      + W_CLUSTER * min(1, largest_cluster / (CLUSTER_FULL * dies_inspected))
                      + W_PATTERN * PATTERN_WEIGHT[pattern])

``density`` is defective over inspected dies. Each term is normalised to 0..1 so the weights (summing to 1) are the
largest share each can contribute: a wafer with ``DENSITY_FULL`` of its dies defective, one cluster covering
``CLUSTER_FULL`` of it and a systematic pattern scores 100. Systematic patterns weigh more than random scatter
because they point at a process or handling cause: a small scratch alone is worth a look (about 35), a few scattered
dies are not (under 20), and random scatter only turns critical once most of the wafer is lost (at most 82). A
severity above ``CRITICAL_SEVERITY`` is critical. An empty wafer scores 0 with pattern ``none`` and ``wafer`` None.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.flow import AUDIT, DEFECT, NOT_INSPECTED, PASS, REVIEW
from edge.taxonomy import UNCLASSIFIED
from edge.watch.die_grid import DIGITS, Position, WaferGeometry, binomial_tail, compactness, components, wafer_geometry

DEFECTIVE = frozenset({DEFECT, REVIEW})
CLEAN = frozenset({PASS, AUDIT})

EDGE_ZONE = 0.75  # normalised radius beyond which a die is at the edge
CENTER_ZONE = 0.35  # normalised radius inside which a die is at the centre
MAX_CHANCE = 1e-3  # largest binomial tail probability accepted for a zone enrichment

EDGE_MIN_DIES = 6
EDGE_MIN_ENRICHMENT = 1.5
EDGE_MIN_OCTANTS = 4
CENTER_MIN_DIES = 4
CENTER_MIN_ENRICHMENT = 3.0
LINE_MIN_DIES = 4
LINE_MIN_GAPPED_DIES = 6  # a line with gaps must be longer: short gapped runs line up by chance in random scatter
LINE_MIN_LENGTH = 4
LINE_MIN_EIGEN_SHARE = 0.9
LINE_MAX_WIDTH = 0.6  # RMS distance of the dies from the fitted line, in dies: a scratch is one or two dies wide
LINE_MIN_SHARE = 0.2
LINE_BRIDGE = 2  # Chebyshev reach that bridges a one-die gap along a scratch
LINE_MAX_CHANCE = 0.05  # expected chance runs of the line's length and dies at the wafer's density
CLUSTER_MIN_DIES = 4
CLUSTER_MIN_SHARE = 0.5
CLUSTER_MIN_COMPACTNESS = 0.35

W_DENSITY = 0.5
W_CLUSTER = 0.2
W_PATTERN = 0.3
DENSITY_FULL = 0.25  # defect density at which the density term saturates
CLUSTER_FULL = 0.1  # share of inspected dies in the largest cluster at which the cluster term saturates
PATTERN_WEIGHT = {
    "none": 0.0,
    "random": 0.4,
    "cluster": 0.8,
    "center": 1.0,
    "edge_ring": 1.0,
    "scratch_line": 1.0,
}
CRITICAL_SEVERITY = 80.0


@dataclass(frozen=True)
class DieResult:
    """The decision for one die at die-grid position (x, y); ``defect_class`` is the class of a DEFECT or REVIEW."""

    x: int
    y: int
    decision: str
    defect_class: str | None


def latest_results(dies: Iterable[DieResult]) -> dict[Position, DieResult]:
    """One result per position, the last one reported; unknown decisions are a caller error."""
    known = DEFECTIVE | CLEAN | {NOT_INSPECTED}
    out: dict[Position, DieResult] = {}
    for die in dies:
        if die.decision not in known:
            raise ValueError(f"unknown decision {die.decision!r} at die ({die.x}, {die.y})")
        out[(int(die.x), int(die.y))] = die
    return out


@dataclass(frozen=True)
class LineFit:
    """How line-like a group of dies is: variance share of the principal axis, RMS distance of the dies from that
    axis (die units) and span in die steps + 1 (Chebyshev, so a diagonal run of n dies spans n like a straight one)."""

    eigen_share: float
    width: float
    length: int

    @property
    def is_line(self) -> bool:
        return (
            self.eigen_share > LINE_MIN_EIGEN_SHARE and self.width <= LINE_MAX_WIDTH and self.length >= LINE_MIN_LENGTH
        )


def line_fit(cells: Sequence[Position]) -> LineFit:
    """Principal-axis fit of die positions (no outlier rejection: a group is a line as a whole or not at all)."""
    xy = np.asarray(cells, dtype=float).reshape(-1, 2)
    if len(xy) < 2:
        return LineFit(0.0, 0.0, len(xy))
    length = int((xy.max(axis=0) - xy.min(axis=0)).max()) + 1
    minor, major = np.linalg.eigvalsh(np.cov(xy.T, bias=True))
    total = float(minor + major)
    return LineFit(float(major) / total if total > 0 else 0.0, math.sqrt(max(float(minor), 0.0)), length)


def _zone(
    defective: Sequence[Position], inspected: Sequence[Position], inside: bool, limit: float, geo: WaferGeometry
) -> dict[str, Any]:
    """Counts, enrichment and chance probability of defective dies in a radial zone."""

    def in_zone(p: Position) -> bool:
        r = geo.r_norm(*p)
        return r < limit if inside else r > limit

    hits = [p for p in defective if in_zone(p)]
    die_share = sum(map(in_zone, inspected)) / len(inspected) if inspected else 0.0
    share = len(hits) / len(defective) if defective else 0.0
    return {
        "dies": len(hits),
        "share": share,
        "die_share": die_share,
        "enrichment": share / die_share if die_share else 0.0,
        "chance": binomial_tail(len(hits), len(defective), die_share),
        "hits": hits,
    }


def _edge_evidence(zone: dict[str, Any], geo: WaferGeometry) -> dict[str, Any]:
    octants = len({geo.octant(*p) for p in zone["hits"]})
    met = (
        zone["dies"] >= EDGE_MIN_DIES
        and zone["enrichment"] >= EDGE_MIN_ENRICHMENT
        and zone["chance"] <= MAX_CHANCE
        and octants >= EDGE_MIN_OCTANTS
    )
    return {**_zone_evidence(zone, met), "octants": octants}


def _center_evidence(zone: dict[str, Any]) -> dict[str, Any]:
    met = (
        zone["dies"] >= CENTER_MIN_DIES and zone["enrichment"] >= CENTER_MIN_ENRICHMENT and zone["chance"] <= MAX_CHANCE
    )
    return _zone_evidence(zone, met)


def _zone_evidence(zone: dict[str, Any], met: bool) -> dict[str, Any]:
    """A zone's figures as the summary shows them, with whether its pattern's rule was met."""
    return {
        "met": bool(met),
        "dies": zone["dies"],
        "share": _r(zone["share"]),
        "die_share": _r(zone["die_share"]),
        "enrichment": _r(zone["enrichment"]),
        "chance": _p(zone["chance"]),
    }


def _scratch_evidence(defective: Sequence[Position], clusters: list[list[Position]], inspected: int) -> dict[str, Any]:
    """The most line-like qualifying group among clusters, gap-bridged groups and all defective dies.

    Dense scatter lines up by itself: a run must also be unlikely by chance, i.e. the expected number
    of segments of its length, over every start die and four directions, holding that many defective
    dies at the wafer's density stays at or under ``LINE_MAX_CHANCE``."""
    density = len(defective) / inspected if inspected else 1.0
    groups = [("cluster", c) for c in clusters]
    groups += [("bridged", g) for g in components(defective, LINE_BRIDGE)]
    groups.append(("all", list(defective)))
    best: tuple[bool, float, int] = (False, 0.0, 0)
    out: dict[str, Any] = {
        "met": False,
        "source": None,
        "dies": 0,
        "eigen_share": 0.0,
        "width": 0.0,
        "length": 0,
        "share": 0.0,
        "chance": 1.0,
    }
    for source, cells in groups:
        if len(cells) < (LINE_MIN_DIES if source == "cluster" else LINE_MIN_GAPPED_DIES):
            continue
        fit = line_fit(cells)
        share = len(cells) / len(defective)
        chance = min(1.0, 4 * inspected * binomial_tail(len(cells), max(fit.length, len(cells)), density))
        met = fit.is_line and share >= LINE_MIN_SHARE and chance <= LINE_MAX_CHANCE
        if (met, fit.eigen_share, len(cells)) > best:
            best = (met, fit.eigen_share, len(cells))
            out = {
                "met": bool(met),
                "source": source,
                "dies": len(cells),
                "eigen_share": _r(fit.eigen_share),
                "width": _r(fit.width),
                "length": fit.length,
                "share": _r(share),
                "chance": _p(chance),
            }
    return out


def _cluster_evidence(largest: list[Position], defective: int, geo: WaferGeometry) -> dict[str, Any]:
    share = len(largest) / defective
    value = compactness(largest)
    met = len(largest) >= CLUSTER_MIN_DIES and share >= CLUSTER_MIN_SHARE and value >= CLUSTER_MIN_COMPACTNESS
    cx, cy = np.mean(np.asarray(largest, dtype=float), axis=0)
    return {
        "met": bool(met),
        "dies": len(largest),
        "share": _r(share),
        "compactness": _r(value),
        "r_norm": _r(geo.r_norm(cx, cy)),
    }


def signature(
    defective: Sequence[Position], inspected: Sequence[Position], geo: WaferGeometry | None
) -> dict[str, Any]:
    """{"pattern": name, "evidence": {candidate: numbers and whether its rule is met}}."""
    if not defective or geo is None:
        return {"pattern": "none", "evidence": {}}
    cells = components(defective)
    largest = max(cells, key=len)  # the first of the largest in (y, x) order, as in the cluster list
    edge = _zone(defective, inspected, False, EDGE_ZONE, geo)
    centre = _zone(defective, inspected, True, CENTER_ZONE, geo)
    evidence = {
        "edge_ring": _edge_evidence(edge, geo),
        "scratch_line": _scratch_evidence(defective, cells, len(inspected)),
        "center": _center_evidence(centre),
        "cluster": _cluster_evidence(largest, len(defective), geo),
    }
    pattern = next((name for name, ev in evidence.items() if ev["met"]), "random")
    evidence["random"] = {
        "met": pattern == "random",
        "clusters": len(cells),
        "mean_cluster_size": _r(len(defective) / len(cells)),
        "edge_enrichment": _r(edge["enrichment"]),
        "center_enrichment": _r(centre["enrichment"]),
    }
    return {"pattern": pattern, "evidence": evidence}


def severity(density: float, largest_cluster: int, dies_inspected: int, pattern: str) -> tuple[float, dict[str, float]]:
    """The 0-100 severity and its three normalised terms (see the module docstring)."""
    density_term = min(1.0, density / DENSITY_FULL)
    cluster_term = min(1.0, largest_cluster / (CLUSTER_FULL * dies_inspected)) if dies_inspected else 0.0
    pattern_term = PATTERN_WEIGHT[pattern]
    value = 100 * (W_DENSITY * density_term + W_CLUSTER * cluster_term + W_PATTERN * pattern_term)
    terms = {"density": _r(density_term), "cluster": _r(cluster_term), "pattern": _r(pattern_term)}
    return round(min(100.0, max(0.0, value)), 1), terms


def summarise(dies: Sequence[DieResult]) -> dict[str, Any]:
    """The wafer summary: counts, defect map, clusters, spatial distribution, signature and severity."""
    results = latest_results(dies)
    geo = wafer_geometry(results) if results else None
    inspected = [p for p, d in results.items() if d.decision != NOT_INSPECTED]
    defective = sorted((p for p, d in results.items() if d.decision in DEFECTIVE), key=lambda p: (p[1], p[0]))
    class_of = {p: _class(results[p]) for p in defective}
    clusters = sorted((_cluster_record(c, class_of) for c in components(defective)), key=_cluster_order)
    density = len(defective) / len(inspected) if inspected else 0.0
    sig = signature(defective, inspected, geo)
    largest = clusters[0]["size"] if clusters else 0
    value, terms = severity(density, largest, len(inspected), sig["pattern"])
    sizes = [c["size"] for c in clusters]
    return {
        "dies_inspected": len(inspected),
        "not_inspected": len(results) - len(inspected),
        "coverage": _r(len(inspected) / len(results)) if results else 0.0,
        "decisions": dict(sorted(Counter(d.decision for d in results.values()).items())),
        "defective": len(defective),
        "classes": _ranked(Counter(class_of.values())),
        "dominant_class": _dominant(class_of.values()),
        "defect_map": [[x, y, class_of[(x, y)]] for x, y in defective],
        "clusters": clusters,
        "cluster_count": len(clusters),
        "cluster_sizes": {
            "min": min(sizes, default=0),
            "max": max(sizes, default=0),
            "mean": _r(sum(sizes) / len(sizes)) if sizes else 0.0,
        },
        "density": _r(density),
        "edge_ratio": _r(_ratio(defective, geo, lambda r: r > EDGE_ZONE)),
        "center_ratio": _r(_ratio(defective, geo, lambda r: r < CENTER_ZONE)),
        "quadrants": _quadrants(defective, geo),
        "wafer": geo.as_dict() if geo else None,
        "signature": sig,
        "severity": value,
        "severity_terms": terms,
        "critical": value > CRITICAL_SEVERITY,
    }


def _class(die: DieResult) -> str:
    return die.defect_class or UNCLASSIFIED


def _cluster_record(cells: list[Position], class_of: dict[Position, str]) -> dict[str, Any]:
    xs, ys = [p[0] for p in cells], [p[1] for p in cells]
    return {
        "size": len(cells),
        "centroid": [_r(sum(xs) / len(xs)), _r(sum(ys) / len(ys))],
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "compactness": _r(compactness(cells)),
        "dominant_class": _dominant(class_of.get(p, UNCLASSIFIED) for p in cells),
    }


def _cluster_order(cluster: dict[str, Any]) -> tuple[int, int, int]:
    x0, y0, _, _ = cluster["bbox"]
    return -cluster["size"], y0, x0


def _dominant(classes: Iterable[str]) -> str | None:
    """Most frequent class; a named class beats UNCLASSIFIED on a tie, then the name decides."""
    ranked = _ranked(Counter(classes))
    return next(iter(ranked), None)


def _ranked(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] == UNCLASSIFIED, kv[0])))


def _ratio(defective: Sequence[Position], geo: WaferGeometry | None, zone: Callable[[float], bool]) -> float:
    if not defective or geo is None:
        return 0.0
    return sum(zone(geo.r_norm(*p)) for p in defective) / len(defective)


def _quadrants(defective: Sequence[Position], geo: WaferGeometry | None) -> dict[str, int]:
    """Defective dies by sign of (x, y) about the centre; a die on an axis counts to the positive side."""
    out = {"x+y+": 0, "x-y+": 0, "x-y-": 0, "x+y-": 0}
    if geo is None:
        return out
    for x, y in defective:
        key = ("x+" if x >= geo.centre_x else "x-") + ("y+" if y >= geo.centre_y else "y-")
        out[key] += 1
    return out


def _r(value: float) -> float:
    return round(float(value), DIGITS)


def _p(value: float) -> float:
    """A probability kept readable when it is tiny (significant digits rather than decimals)."""
    return float(f"{value:.3g}")
