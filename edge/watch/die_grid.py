"""Geometry on the die grid (pure): where the wafer is (centre, radius, round or rectangular), groups of
neighbouring dies, their perimeter and compactness, and the chance of a zone's count under a binomial law.
The wafer analysis (``edge.watch.wafer_map``) builds its clusters and signatures from these."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

Position = tuple[int, int]

DIGITS = 4  # decimals kept on reported floats
RECT_FILL = 0.9  # a grid filling this share of its bounding box is rectangular (a disc fills about pi/4)


@dataclass(frozen=True)
class WaferGeometry:
    """Where the wafer is on the die grid: centre, radius (die units), shape and half-extents of the grid."""

    centre_x: float
    centre_y: float
    radius: float
    shape: str  # "round" or "rectangular"
    half_x: float
    half_y: float

    def r_norm(self, x: float, y: float) -> float:
        """Normalised radius of a die: 0 at the centre, about 1 at the outermost dies."""
        dx, dy = x - self.centre_x, y - self.centre_y
        if self.shape == "rectangular":
            return max(abs(dx) / self.half_x, abs(dy) / self.half_y)
        return math.hypot(dx, dy) / self.radius

    def octant(self, x: float, y: float) -> int:
        """Which eighth of the turn around the centre the die lies in (0..7)."""
        angle = math.atan2(y - self.centre_y, x - self.centre_x)
        return int((angle + math.pi) // (math.pi / 4)) % 8

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "centre": [round(self.centre_x, DIGITS), round(self.centre_y, DIGITS)],
            "radius": round(self.radius, DIGITS),
        }


def wafer_geometry(positions: Iterable[Position]) -> WaferGeometry:
    """Estimate centre, radius and shape from die positions (at least one)."""
    xy = np.array(sorted(set(positions)), dtype=float).reshape(-1, 2)
    if not len(xy):
        raise ValueError("no die positions")
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    radius = float(np.hypot(xy[:, 0] - cx, xy[:, 1] - cy).max()) + 0.5
    fill = len(xy) / ((x1 - x0 + 1) * (y1 - y0 + 1))
    shape = "rectangular" if fill >= RECT_FILL else "round"
    return WaferGeometry(float(cx), float(cy), radius, shape, (x1 - x0) / 2 + 0.5, (y1 - y0) / 2 + 0.5)


def components(cells: Iterable[Position], reach: int = 1) -> list[list[Position]]:
    """Groups of cells linked by steps of at most ``reach`` in x and y (reach 1 is 8-connectivity).

    A set walk rather than a dense image: die coordinates need not be small or start at zero."""
    left = set(cells)
    steps = [(dx, dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1) if dx or dy]
    groups: list[list[Position]] = []
    for seed in sorted(left, key=lambda p: (p[1], p[0])):
        if seed not in left:
            continue
        left.discard(seed)
        group, todo = [seed], [seed]
        while todo:
            x, y = todo.pop()
            for dx, dy in steps:
                n = (x + dx, y + dy)
                if n in left:
                    left.discard(n)
                    group.append(n)
                    todo.append(n)
        groups.append(sorted(group, key=lambda p: (p[1], p[0])))
    return groups


def perimeter(cells: Iterable[Position]) -> int:
    """Exposed unit edges of the union of the cells' unit squares (inner holes included)."""
    cells = set(cells)
    return sum((x + dx, y + dy) not in cells for x, y in cells for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)))


def compactness(cells: Iterable[Position]) -> float:
    """4*pi*A/P^2: pi/4 for a single die or a filled square, lower for ragged, hollow or thin shapes."""
    cells = set(cells)
    edges = perimeter(cells)
    return 4 * math.pi * len(cells) / edges**2 if edges else 0.0


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely that many dies in a zone are by chance."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))
