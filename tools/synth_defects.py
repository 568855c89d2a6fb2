"""Defect painters for the synthetic fab, one per class of the default taxonomy.

Geometry painters edit a ``Scene`` before it is rendered (the defect is part of the pattern); overlay painters paint
onto the rendered float RGB image. Both return the defect's boolean pixel mask. Each painter draws its size, position,
colour and shape from the generator it is given, so two dies of one class differ.

Borderline cases sit on both sides of an accept/reject boundary: ``within_tolerance`` gives a GOOD die one bump
that is slightly undersized but inside the radius tolerance, while a share of BUMP-SM bumps are just outside it; a
share of small particles land against a bump (easily taken for a deformed bump) and a share of BUMP-DEF bumps are
only mildly distorted.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from edge.taxonomy import DEFECT_CLASSES
from tools.synth_render import BUMP_RADIUS, MARGIN, PITCH, SIZE, X_GRID, Y_GRID, BumpShape, Scene, segment_distance

GeometryPainter = Callable[[Scene, np.random.Generator], np.ndarray]
OverlayPainter = Callable[[np.ndarray, Scene, np.random.Generator], np.ndarray]
_SUBPIXEL = 4  # fractional bits for cv2 drawing
_SCALE = 1 << _SUBPIXEL


def _soft_ellipse(rng: np.random.Generator, r_lo: float, r_hi: float, soft: float) -> np.ndarray:
    """A smooth 0..1 weight over a randomly placed, sized and rotated ellipse (edge width about ``soft`` px)."""
    cx, cy = rng.uniform(40, SIZE - 40, 2)
    rx, ry = rng.uniform(r_lo, r_hi, 2)
    a = rng.uniform(0, np.pi)
    px, py = X_GRID - cx, Y_GRID - cy
    q = np.sqrt(((px * np.cos(a) + py * np.sin(a)) / rx) ** 2 + ((-px * np.sin(a) + py * np.cos(a)) / ry) ** 2)
    return (1.0 / (1.0 + np.exp((q - 1.0) * min(rx, ry) / soft))).astype(np.float32)


def _disc(center: np.ndarray, radius: float) -> np.ndarray:
    return (X_GRID - center[0]) ** 2 + (Y_GRID - center[1]) ** 2 <= radius**2


def _pick_bump(rng: np.random.Generator) -> tuple[int, int]:
    """A bump index well inside the image."""
    last = int(SIZE // PITCH) - 2
    return int(rng.integers(1, last + 1)), int(rng.integers(1, last + 1))


def _blend(img: np.ndarray, alpha: np.ndarray, color: np.ndarray | float) -> None:
    img += (np.asarray(color, dtype=np.float32) - img) * alpha[..., None]


def _stroke(points: np.ndarray, thickness: int) -> np.ndarray:
    """Anti-aliased polyline as a 0..1 alpha map."""
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    pts = np.round(points * _SCALE).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA, _SUBPIXEL)
    return canvas.astype(np.float32) / 255.0


# --- geometry painters --------------------------------------------------------------------------------------


def cmp_error(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """CMP dishing/erosion: a large smooth patch where bumps are worn flat and the surface is darker or brighter."""
    region = _soft_ellipse(rng, 45, 110, soft=rng.uniform(12, 25))
    scene.height = 1.0 - rng.uniform(0.45, 0.85) * region
    scene.luma = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.18) * region
    return region > 0.5


def layer_shift(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Misregistered layer: the pattern on one side of a straight boundary is shifted by a fraction of the pitch."""
    axis = rng.integers(2)
    coord = X_GRID if axis == 0 else Y_GRID
    cut = rng.uniform(64, SIZE - 64)
    region = coord > cut if rng.random() < 0.5 else coord < cut
    along = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.45) * PITCH
    across = rng.uniform(-0.1, 0.1) * PITCH
    shift_x, shift_y = (along, across) if rng.random() < 0.5 else (across, along)
    scene.offset_x = np.where(region, np.float32(shift_x), np.float32(0.0))
    scene.offset_y = np.where(region, np.float32(shift_y), np.float32(0.0))
    return region


def pattern_error(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Lithography error: a local period error (magnified or shrunk pattern) or a ripple distortion."""
    region = _soft_ellipse(rng, 45, 90, soft=10.0)
    cy, cx = np.unravel_index(int(np.argmax(region)), region.shape)
    if rng.random() < 0.5:
        err = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3)
        scene.offset_x, scene.offset_y = region * err * (X_GRID - cx), region * err * (Y_GRID - cy)
    else:
        amp, wavelength = rng.uniform(4.0, 7.0), rng.uniform(30.0, 60.0)
        scene.offset_x = region * amp * np.sin(2 * np.pi * (Y_GRID - cy) / wavelength)
        scene.offset_y = region * amp * np.sin(2 * np.pi * (X_GRID - cx) / wavelength)
    return region > 0.3


def bridge(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Bump bridging: a bar of bump material joining two neighbouring bumps."""
    iu, iv = _pick_bump(rng)
    du, dv = [(1, 0), (0, 1), (1, 1)][rng.choice(3, p=[0.45, 0.45, 0.1])]
    p0, p1 = scene.center(iu, iv), scene.center(iu + du, iv + dv)
    half_width = float(rng.uniform(3.0, 5.5))
    scene.bridges.append((p0, p1, half_width))
    return segment_distance(p0, p1) <= half_width + 1.0


def _resize_bump(scene: Scene, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    iu, iv = _pick_bump(rng)
    scene.radius[iv + MARGIN, iu + MARGIN] *= rng.uniform(lo, hi)
    return _disc(scene.center(iu, iv), BUMP_RADIUS + 1.5)


# Bump radius tolerance, as a fraction of nominal: a GOOD bump may be this small, a BUMP-SM bump is smaller than
# ``SMALL_BUMP_MAX``; the gap between them is the measurement guard band.
RADIUS_TOLERANCE = 0.88
SMALL_BUMP_MAX = 0.80
BORDERLINE_SHARE = 0.3  # share of BUMP-SM, PART-SM and BUMP-DEF dies drawn at their class boundary


def missing_bump(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One bump absent (at most a tiny stub left): the least variable class."""
    return _resize_bump(scene, rng, 0.0, 0.12)


def small_bump(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One undersized bump; a share just outside the radius tolerance."""
    if rng.random() < BORDERLINE_SHARE:
        return _resize_bump(scene, rng, 0.72, SMALL_BUMP_MAX)
    return _resize_bump(scene, rng, 0.4, 0.72)


def within_tolerance(scene: Scene, rng: np.random.Generator) -> None:
    """A GOOD borderline: one bump undersized but inside the tolerance (no defect, so no mask)."""
    _resize_bump(scene, rng, RADIUS_TOLERANCE, 0.95)


def deformed_bump(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One bump with a shape anomaly: elongated and/or lobed; a share only mildly."""
    iu, iv = _pick_bump(rng)
    mild = rng.random() < BORDERLINE_SHARE
    scene.shapes[(iu, iv)] = BumpShape(
        aspect=float(rng.uniform(1.35, 1.7) if mild else rng.uniform(1.7, 2.5)),
        angle=float(rng.uniform(0, np.pi)),
        lobes=int(rng.integers(2, 5)),
        wobble=float(rng.uniform(0.08, 0.15) if mild else rng.uniform(0.1, 0.35)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )
    return _disc(scene.center(iu, iv), BUMP_RADIUS * 1.7 + 1.5)


# --- overlay painters ---------------------------------------------------------------------------------------


def _particle(r_lo: float, r_hi: float, beside_bump: float = 0.0) -> OverlayPainter:
    def paint(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        r = rng.uniform(r_lo, r_hi)
        if rng.random() < beside_bump:  # touching a bump's edge: the borderline with a deformed bump
            a = rng.uniform(0, 2 * np.pi)
            center = scene.center(*_pick_bump(rng)) + (BUMP_RADIUS + 0.5 * r) * np.array([np.cos(a), np.sin(a)])
        else:
            center = rng.uniform(r + 4, SIZE - r - 4, 2)
        angles = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        harmonics = np.arange(2, 6)[:, None]
        wobble = rng.normal(0.0, 0.08, (4, 1)) * np.cos(harmonics * angles + rng.uniform(0, 2 * np.pi, (4, 1)))
        radii = r * np.clip(1.0 + wobble.sum(axis=0), 0.5, 1.5)
        pts = center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        canvas = np.zeros((SIZE, SIZE), np.uint8)
        cv2.fillPoly(canvas, [np.round(pts * _SCALE).astype(np.int32)], 255, cv2.LINE_AA, _SUBPIXEL)
        alpha = canvas.astype(np.float32) / 255.0
        dark = rng.random() < 0.6
        color = rng.uniform(0.05, 0.2, 3) if dark else rng.uniform(0.82, 0.95, 3)
        shading = 1.0 + 0.3 * np.clip(-((X_GRID - center[0]) + (Y_GRID - center[1])) / (2 * r), -1, 1)
        img += (color * shading[..., None] - img) * alpha[..., None]
        return alpha > 0.5

    paint.__doc__ = (f"Foreign particle: an opaque irregular blob, radius {r_lo:g}-{r_hi:g} px, dark or bright; "
                     f"{beside_bump:.0%} of them against a bump.")
    return paint


def _bezier(rng: np.random.Generator, length: float) -> np.ndarray:
    mid = rng.uniform(48, SIZE - 48, 2)
    a = rng.uniform(0, np.pi)
    half = 0.5 * length * np.array([np.cos(a), np.sin(a)])
    bend = rng.uniform(-0.3, 0.3) * length * np.array([-np.sin(a), np.cos(a)])
    t = np.linspace(0.0, 1.0, 48)[:, None]
    p0, p1, p2 = mid - half, mid + bend, mid + half
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def fine_scratch(img: np.ndarray, _scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A long thin smooth scratch, mostly bright (polished), sometimes dark."""
    alpha = _stroke(_bezier(rng, rng.uniform(90, 230)), 2) * rng.uniform(0.6, 0.9)
    _blend(img, alpha, rng.uniform(0.85, 1.0) if rng.random() < 0.75 else rng.uniform(0.08, 0.2))
    return alpha > 0.2


def wide_scratch(img: np.ndarray, _scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A wide gouge with ragged edges: several jittered strokes of 4-8 px."""
    path = _bezier(rng, rng.uniform(80, 200))
    width = int(rng.integers(5, 10))
    alpha = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(3):
        jitter = rng.normal(0.0, 0.8, path.shape).cumsum(axis=0) * 0.3
        alpha = np.maximum(alpha, _stroke(path + jitter, max(2, width + int(rng.integers(-1, 2)))))
    alpha *= rng.uniform(0.65, 0.9)
    _blend(img, alpha, rng.uniform(0.8, 0.95) if rng.random() < 0.6 else rng.uniform(0.08, 0.2))
    return alpha > 0.3


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int) -> np.ndarray:
    """A jagged path: each step turns sharply but the path keeps its overall heading."""
    angles = heading + rng.normal(0.0, 0.6, steps)
    steps_xy = rng.uniform(3.0, 7.0, (steps, 1)) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps_xy, axis=0)])


def crack(img: np.ndarray, _scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A dark jagged crack with one to three branches."""
    heading = rng.uniform(0, 2 * np.pi)
    main = _walk(rng, rng.uniform(50, SIZE - 50, 2), heading, int(rng.integers(14, 30)))
    paths = [main]
    for _ in range(int(rng.integers(1, 4))):
        turn = rng.uniform(0.4, 1.2) * rng.choice([-1.0, 1.0])
        paths.append(_walk(rng, main[rng.integers(2, len(main) - 1)], heading + turn, int(rng.integers(5, 14))))
    thickness = int(rng.integers(2, 4))
    alpha = np.max([_stroke(p, thickness) for p in paths], axis=0) * rng.uniform(0.8, 1.0)
    _blend(img, alpha, rng.uniform(0.03, 0.12))
    return alpha > 0.2


_RESIDUE_COLORS = np.array([[0.62, 0.52, 0.28], [0.78, 0.75, 0.64], [0.45, 0.36, 0.28]], np.float32)


def residue(img: np.ndarray, _scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A translucent irregular stain with a darker drying rim (watermark / chemical residue)."""
    w = int(rng.integers(50, 110))
    yy, xx = np.mgrid[-1 : 1 : w * 1j, -1 : 1 : w * 1j]
    field = cv2.resize(rng.random((5, 5)).astype(np.float32), (w, w), interpolation=cv2.INTER_CUBIC)
    shape = ((0.5 * field + 1.0 - np.sqrt(xx**2 + yy**2)) > rng.uniform(0.55, 0.7)).astype(np.float32)
    soft = cv2.GaussianBlur(shape, (0, 0), 1.5)
    rim = np.clip(soft - cv2.GaussianBlur(cv2.erode(shape, np.ones((5, 5), np.uint8)), (0, 0), 1.5), 0, 1)
    local = np.clip(rng.uniform(0.35, 0.6) * soft + rng.uniform(0.25, 0.45) * rim, 0, 1)
    alpha = np.zeros((SIZE, SIZE), np.float32)
    x0, y0 = rng.integers(4, SIZE - w - 4, 2)
    alpha[y0 : y0 + w, x0 : x0 + w] = local
    _blend(img, alpha, _RESIDUE_COLORS[rng.integers(len(_RESIDUE_COLORS))] * rng.uniform(0.9, 1.1))
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0 : y0 + w, x0 : x0 + w] = soft > 0.5
    return mask


_OXIDE_TINTS = np.array([[1.25, 0.9, 1.25], [1.2, 1.05, 0.7], [0.8, 0.95, 1.3], [1.2, 0.9, 0.75]], np.float32)


def discolor(img: np.ndarray, _scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A broad smooth colour tint (heat / chemical oxide colours); the pattern underneath stays intact."""
    strength = rng.uniform(0.4, 0.7)
    weight = _soft_ellipse(rng, 55, 120, soft=rng.uniform(15, 30)) * strength
    tint = _OXIDE_TINTS[rng.integers(len(_OXIDE_TINTS))] * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    img *= 1.0 + weight[..., None] * (tint - 1.0)
    return weight > 0.5 * strength


GEOMETRY: dict[str, GeometryPainter] = {
    "CMP-ERR": cmp_error,
    "LAYER-SHIFT": layer_shift,
    "BRIDGE": bridge,
    "MISS-BUMP": missing_bump,
    "BUMP-SM": small_bump,
    "BUMP-DEF": deformed_bump,
    "PATTERN": pattern_error,
}
OVERLAY: dict[str, OverlayPainter] = {
    "PART-SM": _particle(4.5, 7.5, beside_bump=BORDERLINE_SHARE),
    "PART-MD": _particle(9.0, 15.0),
    "PART-LG": _particle(18.0, 32.0),
    "SCR-FINE": fine_scratch,
    "SCR-WIDE": wide_scratch,
    "CRACK": crack,
    "RESIDUE": residue,
    "DISCOLOR": discolor,
}
assert set(GEOMETRY) | set(OVERLAY) == set(DEFECT_CLASSES) and not set(GEOMETRY) & set(OVERLAY)
