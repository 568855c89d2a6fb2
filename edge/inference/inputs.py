"""A frame inside the daemon, and the model inputs of a batch of frames. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edge.flow import Frame, HotRegion
from edge.notes import tokenize
from edge.process_params import process_vector


@dataclass(frozen=True, slots=True)
class BatchInputs:
    grey: npt.NDArray[np.uint8]  # (B, 1, H, W) uint8
    rgb: npt.NDArray[np.uint8]  # (B, 3, H, W) uint8
    process: npt.NDArray[np.float32]  # (B, 48) float32
    present: npt.NDArray[np.float32]  # (B, 2) float32
    notes: npt.NDArray[np.int64]  # (B, 32) int64

    def take(self, rows: Sequence[int]) -> BatchInputs:
        """These inputs for the frames at ``rows`` (all of them: the arrays themselves, not copies)."""
        if list(rows) == list(range(len(self.grey))):
            return self
        idx = np.asarray(rows)
        return BatchInputs(self.grey[idx], self.rgb[idx], self.process[idx], self.present[idx], self.notes[idx])


def batch_inputs(frames: Sequence[Frame], parameters: Mapping[str, Sequence[str]]) -> BatchInputs:
    """Stack a batch's tensors; ``parameters`` gives each recipe's process-vector order."""
    process, present, notes = [], [], []
    for frame in frames:
        params = frame.context.params if frame.context else None
        vec, has_process = process_vector(params, parameters[frame.header.recipe_id])
        tokens, has_note = tokenize(frame.note)
        process.append(vec)
        notes.append(tokens)
        present.append((float(has_process), float(has_note)))
    return BatchInputs(
        grey=np.stack([f.tensors.grey for f in frames]),
        rgb=np.stack([f.tensors.rgb for f in frames]),
        process=np.stack(process),
        present=np.asarray(present, dtype=np.float32),
        notes=np.stack(notes),
    )


def hot_region(heatmap: npt.NDArray[np.float32], image_hw: tuple[int, int], floor: float) -> HotRegion:
    """The peak cell, and the region of cells around it at or over half the peak and at or over ``floor``
    (the PASS band: the score is in the cells' units, at least the largest cell, so the band reads on cells
    too). A peak under ``floor`` (a normal frame, or a broad faint anomaly that only its larger windows
    carry over the band) gives the peak cell alone."""
    gy, gx = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cell_h, cell_w = image_hw[0] / heatmap.shape[0], image_hw[1] / heatmap.shape[1]
    peak = float(heatmap[gy, gx])
    centre = (int((gx + 0.5) * cell_w), int((gy + 0.5) * cell_h))
    if peak < floor:  # most dies: no cell reaches the band, the region is the peak cell (no component search)
        cell = (int(gx * cell_w), int(gy * cell_h), int((gx + 1) * cell_w) - 1, int((gy + 1) * cell_h) - 1)
        return HotRegion(centre, cell)
    hot = heatmap >= max(0.5 * peak, floor)
    hot[gy, gx] = True
    _, labels = cv2.connectedComponents(hot.astype(np.uint8), connectivity=8)
    ys, xs = np.nonzero(labels == labels[gy, gx])
    bbox = (
        int(xs.min() * cell_w),
        int(ys.min() * cell_h),
        int((xs.max() + 1) * cell_w) - 1,
        int((ys.max() + 1) * cell_h) - 1,
    )
    return HotRegion(centre, bbox)
