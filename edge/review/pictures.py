"""Pictures the review pages show, drawn by the server with OpenCV so the pages need no drawing code: a wafer map
with its clusters and one die marked, and a class's threshold and false-positive rate over its lots. Pure: facts
in, PNG bytes out (``edge.capture.overlay.png`` encodes).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from calibration.store import TrendPoint
from edge.capture.overlay import Image, png
from edge.watch.die_grid import wafer_geometry

WHITE, INK, GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)
CLEAN, NOT_INSPECTED, MARK = (200, 230, 200), (150, 150, 150), (255, 120, 0)  # BGR
DEFECTIVE = ("DEFECT", "REVIEW")
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Die:
    """One die of a wafer map: its grid position, the decision and the class (defective dies)."""

    x: int
    y: int
    decision: str
    defect_class: str | None = None


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per class name (the same class is the same colour on every map)."""
    hue = zlib.crc32(name.encode()) % 180
    hsv = np.array([[[hue, 200, 210]]], np.uint8)
    b, g, r = (int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r


def wafer_map(dies: Sequence[Die], clusters: Sequence[Sequence[int]] = (), mark: tuple[int, int] | None = None,
              side: int = 360) -> bytes:  # fmt: skip
    """The wafer's dies on their grid (clean green, defective in their class's colour, not inspected grey), the
    wafer's outline, each cluster's box (``[x0, y0, x1, y1]`` in die positions) and ``mark`` ringed; with a legend
    of the classes shown."""
    canvas = np.full((side + 24, side, 3), WHITE, np.uint8)
    if not dies and mark is None:
        cv2.putText(canvas, "no dies recorded", (10, side // 2), FONT, 0.5, INK, 1, cv2.LINE_AA)
        return png(canvas)
    xs = [d.x for d in dies] + ([mark[0]] if mark else [])
    ys = [d.y for d in dies] + ([mark[1]] if mark else [])
    x0, y0 = min(xs), min(ys)
    span = max(max(xs) - x0, max(ys) - y0) + 1
    cell = (side - 20) / span
    offset_x = 10 + (side - 20 - (max(xs) - x0 + 1) * cell) / 2
    offset_y = 10 + (side - 20 - (max(ys) - y0 + 1) * cell) / 2

    def box(x: float, y: float, x1: float | None = None, y1: float | None = None) -> tuple[tuple[int, int], ...]:
        left, top = offset_x + (x - x0) * cell, offset_y + (y - y0) * cell
        right = offset_x + ((x1 if x1 is not None else x) - x0 + 1) * cell
        bottom = offset_y + ((y1 if y1 is not None else y) - y0 + 1) * cell
        return (round(left), round(top)), (round(right) - 1, round(bottom) - 1)

    if dies:  # the outline: a round wafer's edge, or a frame around a rectangular grid (as the wafer analysis sees it)
        geo = wafer_geometry((d.x, d.y) for d in dies)
        cx, cy = offset_x + (geo.centre_x - x0 + 0.5) * cell, offset_y + (geo.centre_y - y0 + 0.5) * cell
        if geo.shape == "round":
            cv2.circle(canvas, (round(cx), round(cy)), round(geo.radius * cell) + 2, GRID, 2, cv2.LINE_AA)
        else:
            half_x, half_y = geo.half_x * cell + 3, geo.half_y * cell + 3
            cv2.rectangle(canvas, (round(cx - half_x), round(cy - half_y)), (round(cx + half_x), round(cy + half_y)),
                          GRID, 2)  # fmt: skip
    shown: dict[str, tuple[int, int, int]] = {}
    for d in dies:
        if d.decision in DEFECTIVE:
            name = d.defect_class or "UNCLASSIFIED"
            colour = shown.setdefault(name, class_colour(name))
        else:
            colour = NOT_INSPECTED if d.decision == "NOT_INSPECTED" else CLEAN
        a, b = box(d.x, d.y)
        cv2.rectangle(canvas, a, b, colour, -1)
        cv2.rectangle(canvas, a, b, WHITE, 1)
    for c in clusters:
        a, b = box(c[0], c[1], c[2], c[3])
        cv2.rectangle(canvas, (a[0] - 2, a[1] - 2), (b[0] + 2, b[1] + 2), INK, 1, cv2.LINE_AA)
    if mark is not None:
        a, b = box(*mark)
        cv2.rectangle(canvas, (a[0] - 3, a[1] - 3), (b[0] + 3, b[1] + 3), MARK, 3)
    x = 6
    for name, colour in sorted(shown.items()):
        cv2.rectangle(canvas, (x, side + 8), (x + 10, side + 18), colour, -1)
        cv2.putText(canvas, name, (x + 14, side + 18), FONT, 0.38, INK, 1, cv2.LINE_AA)
        x += 24 + 8 * len(name)
    return png(canvas)


def trend(points: Sequence[TrendPoint], budget: float, lower: float, upper: float, width: int = 560,
          height: int = 220) -> bytes:  # fmt: skip
    """Threshold (blue, left axis spanning the engineer's bounds, dashed) and FPR over the window (red, right axis,
    with the budget dashed; the certified bound orange where there is one), one point per closed lot, oldest left."""
    canvas: Image = np.full((height, width, 3), WHITE, np.uint8)
    left, right, top, bottom = 44, width - 56, 14, height - 30
    cv2.rectangle(canvas, (left, top), (right, bottom), GRID, 1)
    fpr_top = max([budget * 2] + [p.fpr_window for p in points] + [p.certified or 0 for p in points]) * 1.1
    low = min([lower] + [p.threshold for p in points]) - 0.02
    high = max([upper] + [p.threshold for p in points]) + 0.02

    def px(i: int) -> int:
        return left + round((right - left) * (i / max(1, len(points) - 1)))

    def py(value: float, full: float, base: float = 0.0) -> int:
        return bottom - round((bottom - top) * min(1.0, max(0.0, (value - base) / (full - base))))

    for value in (lower, upper):
        _dashed(canvas, left, right, py(value, high, low), (200, 120, 60))
    _dashed(canvas, left, right, py(budget, fpr_top), (60, 60, 220))
    series = [([p.threshold for p in points], high, low, (180, 90, 20)),
              ([p.fpr_window for p in points], fpr_top, 0.0, (40, 40, 220))]  # fmt: skip
    certified = [p.certified for p in points if p.certified is not None]
    if len(certified) == len(points):
        series.append(([float(c) for c in certified], fpr_top, 0.0, (0, 150, 255)))
    for values, full, base, colour in series:
        line = np.array([(px(i), py(v, full, base)) for i, v in enumerate(values)], np.int32)
        if len(line) > 1:
            cv2.polylines(canvas, [line], False, colour, 2, cv2.LINE_AA)
        for p in line:
            cv2.circle(canvas, (int(p[0]), int(p[1])), 2, colour, -1, cv2.LINE_AA)
    shown = {lower, upper} | ({points[-1].threshold} if points else set())
    for value in sorted(shown):
        cv2.putText(canvas, f"{value:.2f}", (6, py(value, high, low) + 4), FONT, 0.38, (180, 90, 20), 1, cv2.LINE_AA)
    for value in (0.0, budget, fpr_top / 1.1):
        cv2.putText(canvas, f"{100 * value:.2f}%", (right + 4, py(value, fpr_top) + 4), FONT, 0.36, (40, 40, 220), 1,
                    cv2.LINE_AA)  # fmt: skip
    caption = f"{len(points)} lots" if points else "no lot closed yet"
    if points:
        caption += f": {points[0].lot_id} .. {points[-1].lot_id}"
    cv2.putText(canvas, caption, (left, height - 10), FONT, 0.4, INK, 1, cv2.LINE_AA)
    cv2.putText(canvas, "threshold", (right - 160, height - 10), FONT, 0.4, (180, 90, 20), 1, cv2.LINE_AA)
    cv2.putText(canvas, "FPR", (right - 80, height - 10), FONT, 0.4, (40, 40, 220), 1, cv2.LINE_AA)
    return png(canvas)


def _dashed(canvas: Image, x0: int, x1: int, y: int, colour: tuple[int, int, int]) -> None:
    for x in range(x0, x1, 10):
        cv2.line(canvas, (x, y), (min(x + 5, x1), y), colour, 1)
