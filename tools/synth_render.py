"""Rendering core of the synthetic fab: a die scene (bump grid over a line pattern), tool optics, shot noise.

A die is described by a mutable ``Scene``. Geometry defects edit the scene before it is rendered (per-bump radius,
bump shape, bridges, coordinate offsets, erosion); overlay defects paint on the rendered float image. Tool optics and
shot noise come last, so the same scene looks different under two tools.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

SIZE = 256
PITCH = 32.0  # bump pitch, pixels
BUMP_RADIUS = 9.5
LINE_PERIOD = PITCH / 2
EDGE = 3.0  # width of the soft bump edge, pixels
MARGIN = 3  # bump indices kept beyond each image edge (shifted patterns can reveal them)
N_BUMPS = int(SIZE // PITCH) + 2 * MARGIN
FULL_WELL = 900.0  # photo-electrons at full scale: sets the shot-noise level
READ_NOISE = 0.004

# Standard normals that ``expose`` slices at random offsets: fresh normals per image would cost more than the
# whole rest of rendering.
_NOISE_BANK = np.random.default_rng(20240607).standard_normal(1 << 21, dtype=np.float32)
_NOISE_BANK.flags.writeable = False

Y_GRID, X_GRID = (g.astype(np.float32) for g in np.mgrid[0:SIZE, 0:SIZE])
Y_GRID.flags.writeable = False
X_GRID.flags.writeable = False


def rng_for(*parts: int | str) -> np.random.Generator:
    """A generator seeded from ``parts``; strings hash with CRC32, so every process derives the same stream."""
    entropy = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    return np.random.default_rng(np.random.SeedSequence(entropy))


@dataclass(frozen=True)
class BumpShape:
    """Distortion of one bump: stretched along ``angle`` by ``aspect`` (area kept) with a ``lobes``-fold wobble."""

    aspect: float
    angle: float
    lobes: int
    wobble: float
    phase: float

    def distance(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Normalised distance from the bump centre: the bump edge lies where it equals the bump radius."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        along, across = dx * c + dy * s, -dx * s + dy * c
        d = np.sqrt((along / np.sqrt(self.aspect)) ** 2 + (across * np.sqrt(self.aspect)) ** 2)
        theta = np.arctan2(across, along)
        return d / (1.0 + self.wobble * np.cos(self.lobes * theta + self.phase))


@dataclass
class Scene:
    """Everything that fixes a die's pattern before optics; defects edit it in place."""

    phase: np.ndarray  # (x, y) pixel position of bump (0, 0)
    radius: np.ndarray  # (N_BUMPS, N_BUMPS) per-bump radius, indexed [iv + MARGIN, iu + MARGIN]
    background: np.ndarray  # RGB, 0..1
    bump_color: np.ndarray  # RGB, 0..1
    line_amp: float  # relative contrast of the line pattern
    offset_x: np.ndarray | None = None  # per-pixel coordinate offsets (LAYER-SHIFT, PATTERN)
    offset_y: np.ndarray | None = None
    height: np.ndarray | None = None  # bump contrast multiplier (CMP erosion)
    luma: np.ndarray | None = None  # brightness multiplier (CMP dishing)
    shapes: dict[tuple[int, int], BumpShape] = field(default_factory=dict)
    bridges: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)  # (p0, p1, half width)

    def center(self, iu: int, iv: int) -> np.ndarray:
        """Pixel position of bump (iu, iv) in an unshifted pattern."""
        return self.phase + PITCH * np.array([iu, iv], dtype=np.float32)


def base_scene(rng: np.random.Generator) -> Scene:
    """A defect-free die with small per-die jitter of pattern phase, bump size, colours and brightness."""
    gain = rng.uniform(0.97, 1.03)
    return Scene(
        phase=(PITCH / 2 + rng.uniform(-0.6, 0.6, 2)).astype(np.float32),
        radius=np.full((N_BUMPS, N_BUMPS), BUMP_RADIUS + rng.uniform(-0.2, 0.2), dtype=np.float32),
        background=(np.array([0.30, 0.35, 0.44]) + rng.uniform(-0.02, 0.02, 3)).astype(np.float32) * gain,
        bump_color=(np.array([0.80, 0.76, 0.66]) + rng.uniform(-0.02, 0.02, 3)).astype(np.float32) * gain,
        line_amp=float(rng.uniform(0.14, 0.20)),
    )


def segment_distance(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Per-pixel distance to the segment p0-p1."""
    d = p1 - p0
    t = np.clip(((X_GRID - p0[0]) * d[0] + (Y_GRID - p0[1]) * d[1]) / float(d @ d), 0.0, 1.0)
    return np.hypot(X_GRID - p0[0] - t * d[0], Y_GRID - p0[1] - t * d[1])


def render_pattern(scene: Scene) -> np.ndarray:
    """The scene as a float32 RGB image (H, W, 3), values about 0..1, before optics and noise."""
    x = X_GRID if scene.offset_x is None else X_GRID + scene.offset_x
    y = Y_GRID if scene.offset_y is None else Y_GRID + scene.offset_y
    u, v = (x - scene.phase[0]) / PITCH, (y - scene.phase[1]) / PITCH
    iu, iv = np.floor(u + 0.5), np.floor(v + 0.5)
    dx, dy = (u - iu) * PITCH, (v - iv) * PITCH
    iu_i = np.clip(iu.astype(np.int32) + MARGIN, 0, N_BUMPS - 1)
    iv_i = np.clip(iv.astype(np.int32) + MARGIN, 0, N_BUMPS - 1)
    r = scene.radius[iv_i, iu_i]
    d = np.sqrt(dx * dx + dy * dy)
    for (bu, bv), shape in scene.shapes.items():
        sel = (iu_i == bu + MARGIN) & (iv_i == bv + MARGIN)
        d[sel] = shape.distance(dx[sel], dy[sel])
    bump = np.clip((r - d) / EDGE + 0.5, 0.0, 1.0)
    for p0, p1, half_width in scene.bridges:
        bump = np.maximum(bump, np.clip((half_width - segment_distance(p0, p1)) / EDGE + 0.5, 0.0, 1.0))
    if scene.height is not None:
        bump *= scene.height
    shade = 1.0 + 0.22 * np.clip(-(dx + dy) / (2.0 * BUMP_RADIUS), -1.0, 1.0)  # light from the top left
    lines = 1.0 + scene.line_amp * np.cos(2.0 * np.pi * (v * PITCH) / LINE_PERIOD)
    bg = lines[..., None] * scene.background
    img = bg + (shade[..., None] * scene.bump_color - bg) * bump[..., None]
    if scene.luma is not None:
        img *= scene.luma[..., None]
    return img.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ToolOptics:
    """Optical signature of one AOI tool: vignetting, a focus gradient, edge ringing, gain and colour tint."""

    vignette: float  # relative brightness lost at the corner furthest from ``center``
    center: tuple[float, float]
    blur_angle: float  # direction (radians) towards which focus degrades
    blur_sigma: float  # Gaussian sigma at the worst-focused side, pixels
    gain: tuple[float, float, float]  # per-channel multiplicative gain
    tint: tuple[float, float, float]  # additive RGB offset
    ringing: float  # edge diffraction: overshoot of edges (fraction of the edge contrast)


@dataclass(frozen=True)
class Drift:
    """Slow changes of a tool and its process that move the image without any defect (DESIGN: drift knobs).

    ``aging`` (0 new .. 1 due for service): optics defocus and lose light at the edge of the field.
    ``reflectance``: relative change of the resist's reflectance (e.g. +0.1 after a resist lot change), which
    brightens the film, blue more than red. ``temperature``: degrees off the tool's calibration point (a
    temperature cycle); focus and gain wander with it.
    """

    aging: float = 0.0
    reflectance: float = 0.0
    temperature: float = 0.0

    @staticmethod
    def cycle(hours: float, amplitude_c: float = 1.5, period_h: float = 24.0) -> float:
        """The temperature offset of a daily cycle ``hours`` into it."""
        return float(amplitude_c * np.sin(2.0 * np.pi * hours / period_h))


NO_DRIFT = Drift()


def tool_optics(tool_id: str, shift: float = 0.0, drift: Drift = NO_DRIFT) -> ToolOptics:
    """The optics of ``tool_id``: fixed by its name; ``shift`` moves every parameter a little (held-out data) and
    ``drift`` ages, re-coats or warms the tool."""
    rng = rng_for("optics", tool_id)
    tint = rng.uniform(-0.03, 0.03, 3) + 0.01 * shift * np.array([1.0, -0.5, -0.5])
    low, high = [0.08, 98, 98, 0, 0.5, 0.92], [0.24, 158, 158, 2 * np.pi, 1.5, 1.08]
    vignette, cx, cy, angle, sigma, gain = rng.uniform(low, high)
    ringing = rng.uniform(0.05, 0.25)
    temp = abs(drift.temperature)
    gain_rgb = gain * (1.0 + 0.02 * shift - 0.06 * drift.aging - 0.01 * drift.temperature)
    gain_rgb = gain_rgb * (1.0 + drift.reflectance * np.array([0.4, 0.8, 1.2]))
    return ToolOptics(
        vignette=float(vignette + 0.03 * shift + 0.1 * drift.aging),
        center=(float(cx + 6 * shift), float(cy - 6 * shift)),
        blur_angle=float(angle + 0.3 * shift),
        blur_sigma=float(sigma + 0.2 * shift + 0.8 * drift.aging + 0.15 * temp),
        gain=(float(gain_rgb[0]), float(gain_rgb[1]), float(gain_rgb[2])),
        tint=(float(tint[0]), float(tint[1]), float(tint[2])),
        ringing=float(ringing * (1.0 + 0.2 * shift)),
    )


@lru_cache(maxsize=32)
def _optics_maps(optics: ToolOptics) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel focus weight (0 sharp .. 1 fully blurred) and vignetting gain of one tool."""
    c, s = np.cos(optics.blur_angle), np.sin(optics.blur_angle)
    ramp = ((X_GRID - SIZE / 2) * c + (Y_GRID - SIZE / 2) * s) / (SIZE / 2)
    focus = np.clip(0.5 + 0.5 * ramp, 0.0, 1.0)[..., None]
    r2 = (X_GRID - optics.center[0]) ** 2 + (Y_GRID - optics.center[1]) ** 2
    vig = (1.0 - optics.vignette * r2 / r2.max())[..., None] * np.asarray(optics.gain)
    return focus.astype(np.float32), vig.astype(np.float32)


RINGING_SIGMA = 2.5  # spatial scale of the diffraction fringe at edges, pixels


def apply_optics(img: np.ndarray, optics: ToolOptics) -> np.ndarray:
    """The image as seen through a tool: edge diffraction (an overshoot fringe along every edge), spatially
    varying defocus, vignetting, gain and tint."""
    focus, vig = _optics_maps(optics)
    img = img + optics.ringing * (img - cv2.GaussianBlur(img, (0, 0), RINGING_SIGMA))
    blurred = cv2.GaussianBlur(img, (0, 0), optics.blur_sigma)
    out = img + (blurred - img) * focus
    out *= vig
    out += np.asarray(optics.tint, dtype=np.float32)
    return out


def expose(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (variance proportional to intensity) plus read noise, quantised to uint8."""
    clean = np.clip(img, 0.0, 1.0)
    start = int(rng.integers(_NOISE_BANK.size - clean.size))
    noise = _NOISE_BANK[start : start + clean.size].reshape(clean.shape)
    noisy = clean + np.sqrt(clean * (1.0 / FULL_WELL) + READ_NOISE**2) * noise
    return np.clip(noisy * 255.0 + 0.5, 0, 255).astype(np.uint8)
