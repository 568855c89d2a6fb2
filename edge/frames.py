"""A frame inside the daemon, and the model inputs of a batch of frames. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from edge.context import ProcessLog
from edge.imaging import Tensors
from edge.notes import tokenize
from edge.process_params import process_vector
from edge.wire import FrameHeader


@dataclass(eq=False)
class Frame:
    identity: bytes  # ROUTER identity of the tool connection to answer
    header: FrameHeader
    tensors: Tensors
    received: float  # monotonic seconds
    deadline: float  # monotonic seconds
    received_wall: float  # epoch seconds
    context: ProcessLog | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.header.tool_id, self.header.frame_id)

    @property
    def wafer_key(self) -> tuple[str, str, str]:
        return (self.header.tool_id, self.header.lot_id, self.header.wafer_id)

    @property
    def note(self) -> str | None:
        return self.header.notes or (self.context.notes if self.context else None)


@dataclass(frozen=True, slots=True)
class BatchInputs:
    grey: npt.NDArray[np.uint8]  # (B, 1, H, W) uint8
    rgb: npt.NDArray[np.uint8]  # (B, 3, H, W) uint8
    process: npt.NDArray[np.float32]  # (B, 48) float32
    present: npt.NDArray[np.float32]  # (B, 2) float32
    notes: npt.NDArray[np.int64]  # (B, 32) int64


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


@dataclass(frozen=True, slots=True)
class HotRegion:
    """Where the anomaly is, in image pixels: the hottest heatmap cell's centre, and the bounding box
    (x0, y0, x1, y1, inclusive) of the hot cells 8-connected to it."""

    peak_xy: tuple[int, int]
    bbox: tuple[int, int, int, int]


def hot_region(heatmap: npt.NDArray[np.float32], image_hw: tuple[int, int], floor: float) -> HotRegion:
    """The peak cell, and the region of cells around it at or over half the peak and at or over ``floor``
    (the PASS band: the score is in the cells' units, at least the largest cell, so the band reads on cells
    too). A peak under ``floor`` (a normal frame, or a broad faint anomaly that only its larger windows
    carry over the band) gives the peak cell alone."""
    gy, gx = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cell_h, cell_w = image_hw[0] / heatmap.shape[0], image_hw[1] / heatmap.shape[1]
    peak = float(heatmap[gy, gx])
    hot = heatmap >= max(0.5 * peak, floor)
    hot[gy, gx] = True
    _, labels = cv2.connectedComponents(hot.astype(np.uint8), connectivity=8)
    ys, xs = np.nonzero(labels == labels[gy, gx])
    bbox = (int(xs.min() * cell_w), int(ys.min() * cell_h),
            int((xs.max() + 1) * cell_w) - 1, int((ys.max() + 1) * cell_h) - 1)
    return HotRegion((int((gx + 0.5) * cell_w), int((gy + 0.5) * cell_h)), bbox)
