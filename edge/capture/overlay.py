"""Pictures of a capture for a reviewer: the die with the anomaly heatmap or the classifier's attention laid over
it, drawn by the server with OpenCV (no browser-side drawing). Pure: arrays in, BGR image arrays out.

The heatmap (32x32, anomaly units) is scaled to the die with bilinear interpolation and shown where it is above
``floor`` of its own peak, so clean areas keep their look; attention (64 weights over 8x8 patches) is shown per
patch, as the classifier pooled it. Both use the TURBO colour map: blue low, red high.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


def die_bgr(rgb: Image) -> Image:
    """A (3, H, W) RGB die as an (H, W, 3) BGR image, as OpenCV draws and encodes."""
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)[:, :, ::-1])


def _blend(base: Image, weights: npt.NDArray[np.float32], shown: npt.NDArray[np.bool_], alpha: float) -> Image:
    colours = cv2.applyColorMap(np.clip(weights * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    mixed = cv2.addWeighted(base, 1 - alpha, colours, alpha, 0)
    out = base.copy()
    out[shown] = mixed[shown]
    return out


def heatmap_overlay(rgb: Image, heatmap: npt.NDArray[np.float32], alpha: float = 0.5, floor: float = 0.25) -> Image:
    """The die with its heatmap over the cells above ``floor`` x the peak (nothing over a flat map)."""
    base = die_bgr(rgb)
    h, w = base.shape[:2]
    peak = float(np.max(heatmap)) if heatmap.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return base
    fitted = cv2.resize(np.clip(heatmap / peak, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    scaled = np.asarray(fitted, np.float32)
    return _blend(base, scaled, scaled >= floor, alpha)


def attention_overlay(rgb: Image, attention: npt.NDArray[np.float32], alpha: float = 0.45) -> Image:
    """The die with the classifier's attention per patch (a square grid of weights), the heaviest patch red."""
    base = die_bgr(rgb)
    h, w = base.shape[:2]
    side = math.isqrt(attention.size)
    if side * side != attention.size or side == 0:
        raise ValueError(f"attention over {attention.size} patches is not a square grid")
    grid = attention.reshape(side, side).astype(np.float32)
    low, high = float(grid.min()), float(grid.max())
    weights = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    scaled = np.asarray(cv2.resize(weights, (w, h), interpolation=cv2.INTER_NEAREST), np.float32)
    return _blend(base, scaled, np.ones((h, w), bool), alpha)


def png(image: Image) -> bytes:
    """An (H, W, 3) BGR image as PNG bytes."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("OpenCV could not encode the picture")
    return bytes(data.tobytes())


def over(die_png: bytes, which: str, heatmap: npt.NDArray[np.float32] | None,
         attention: npt.NDArray[np.float32] | None) -> bytes:  # fmt: skip
    """A captured die (its PNG) with the ``heatmap`` or the ``attention`` over it, as PNG; the die itself for
    ``which`` = none or a map the capture lacks."""
    bgr = np.asarray(cv2.imdecode(np.frombuffer(die_png, np.uint8), cv2.IMREAD_COLOR), np.uint8)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))
    if which == "heatmap" and heatmap is not None:
        return png(heatmap_overlay(rgb, heatmap))
    if which == "attention" and attention is not None:
        return png(attention_overlay(rgb, attention))
    return die_png
