"""Spatial defect patterns for simulated wafers, so a simulated wafer shows the signature a real process fault leaves.

``draw_defects`` picks which dies of a die grid get a defect for a named pattern. ``rate`` is the share of the
grid's dies that get one: each pattern places ``round(rate * dies)`` defects, except ``scratch_line``, which is
capped by the chord it lies on. Placement ranks every die by a random key favouring the pattern's zone and takes the
top ones, so a pattern asked for more dies than its zone holds spills over to the neighbouring dies instead of
failing. Everything is drawn from the generator given, so a seed gives the same wafer.

- ``random``: dies drawn uniformly.
- ``edge_ring``: weight falling off inward from the outermost dies (scale ``EDGE_SCALE`` of the radius).
- ``center``: weight falling off outward from the centre (scale ``CENTER_SCALE`` of the radius).
- ``cluster``: a compact blob around a die between ``CLUSTER_RING`` of the radius.
- ``scratch_line``: a contiguous run of dies along a straight chord at a random angle, passing within
  ``SCRATCH_OFFSET`` of the radius from the centre; steps along the dominant axis, so any angle gives an
  8-connected run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edge.taxonomy import GOOD
from edge.watch.die_grid import WaferGeometry, wafer_geometry
from tools.synth import WaferPlan, label_for

Position = tuple[int, int]

PATTERNS = ("random", "edge_ring", "center", "scratch_line", "cluster")
EDGE_SCALE = 0.1
CENTER_SCALE = 0.2
CLUSTER_RING = (0.4, 0.65)
SCRATCH_OFFSET = 0.5
BLOB_JITTER = 1.0


def round_wafer_dies(radius: float) -> list[Position]:
    """Dies of a round wafer of ``radius`` die pitches: every whole die inside the circle, on a grid whose
    coordinates start at 0, sorted by (y, x)."""
    if radius**2 < 0.5:  # the corners of the central die must fit
        raise ValueError(f"radius {radius} holds no whole die")
    n = math.ceil(radius)
    dies = [
        (x + n, y + n)
        for y in range(-n, n + 1)
        for x in range(-n, n + 1)
        if (abs(x) + 0.5) ** 2 + (abs(y) + 0.5) ** 2 <= radius**2
    ]
    x0, y0 = min(p[0] for p in dies), min(p[1] for p in dies)
    return sorted(((x - x0, y - y0) for x, y in dies), key=lambda p: (p[1], p[0]))


def draw_defects(dies: Sequence[Position], pattern: str, rate: float, rng: np.random.Generator) -> set[Position]:
    """Positions among ``dies`` that get a defect under ``pattern`` at about ``rate`` of the dies."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; one of {', '.join(PATTERNS)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate {rate} outside [0, 1]")
    grid = sorted(set(dies), key=lambda p: (p[1], p[0]))
    count = round(rate * len(grid))
    if not count:
        return set()
    geo = wafer_geometry(grid)
    if pattern == "scratch_line":
        return _scratch(grid, count, geo, rng)
    return _top(grid, count, _keys(grid, pattern, geo, rng))


def _keys(grid: list[Position], pattern: str, geo: WaferGeometry, rng: np.random.Generator) -> np.ndarray:
    """A sort key per die; the ``count`` highest get a defect."""
    if pattern == "cluster":
        return _blob_keys(grid, geo, rng)
    r = np.array([geo.r_norm(*p) for p in grid])
    if pattern == "edge_ring":
        weights = np.exp(-(((r.max() - r) / EDGE_SCALE) ** 2))
    elif pattern == "center":
        weights = np.exp(-((r / CENTER_SCALE) ** 2))
    else:
        weights = np.ones(len(grid))
    # Exponential keys (Efraimidis-Spirakis) draw without replacement with probability proportional to weight;
    # unlike a probability vector for rng.choice, tiny weights do not underflow to zero and run out of candidates.
    return np.log(rng.random(len(grid))) / np.maximum(weights, 1e-300)


def _blob_keys(grid: list[Position], geo: WaferGeometry, rng: np.random.Generator) -> np.ndarray:
    """Keys of a blob around a die at mid radius: nearer dies outrank farther ones up to a jitter of
    ``BLOB_JITTER`` die, so the blob comes out filled with a slightly ragged rim."""
    r = np.array([geo.r_norm(*p) for p in grid])
    lo, hi = CLUSTER_RING
    ring = np.flatnonzero((r >= lo) & (r <= hi))
    if not len(ring):
        ring = np.arange(len(grid))
    cx, cy = grid[int(rng.choice(ring))]
    xy = np.asarray(grid, dtype=float)
    return -(np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) + rng.uniform(0.0, BLOB_JITTER, len(grid)))


def _top(grid: list[Position], count: int, keys: np.ndarray) -> set[Position]:
    order = np.argsort(-keys, kind="stable")[:count]
    return {grid[int(i)] for i in order}


def _scratch(grid: list[Position], count: int, geo: WaferGeometry, rng: np.random.Generator) -> set[Position]:
    """A run of ``count`` dies (fewer when the chord is shorter) along a random straight chord."""
    angle = rng.uniform(0.0, math.pi)
    offset = rng.uniform(-SCRATCH_OFFSET, SCRATCH_OFFSET) * geo.radius
    ux, uy = math.cos(angle), math.sin(angle)
    step = max(abs(ux), abs(uy))
    ox, oy = geo.centre_x - uy * offset, geo.centre_y + ux * offset
    on_wafer = set(grid)
    reach = math.ceil(2 * geo.radius) + 1
    chord: list[Position] = []
    for t in range(-reach, reach + 1):
        p = (math.floor(ox + t * ux / step + 0.5), math.floor(oy + t * uy / step + 0.5))
        if p in on_wafer and (not chord or chord[-1] != p):
            chord.append(p)
    if not chord:
        return set()
    length = min(count, len(chord))
    start = int(rng.integers(0, len(chord) - length + 1))
    return set(chord[start : start + length])


def paint_plan(wafers: Sequence[WaferPlan], rate: float, seed: int, looks: Sequence[str]) -> list[WaferPlan]:
    """The plan's wafers with their defects redrawn in spatial patterns (``PATTERNS`` in turn, wafer by
    wafer): dies the pattern picks get a defect look from ``looks``, the others the clean look. Lot,
    wafer and frame ids, excursions and notes stay as planned, so the MES simulator's plan still matches."""
    out = []
    for i, wafer in enumerate(wafers):
        rng = np.random.default_rng([seed, i])
        hit = draw_defects([d.die for d in wafer.dies], PATTERNS[i % len(PATTERNS)], rate, rng)
        dies = []
        for die in wafer.dies:
            look = looks[int(rng.integers(len(looks)))] if die.die in hit else GOOD
            dies.append(replace(die, look=look, label=label_for(look, wafer.excursion)))
        out.append(replace(wafer, dies=dies))
    return out
