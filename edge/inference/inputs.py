"""The model inputs of a batch of frames. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edge.flow import Frame, HotRegion
from edge.notes import tokenize
from edge.process_params import process_vector

Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Images:
    """A batch's image tensors, (B, C, H, W) uint8, held as the frames' own (C, H, W) arrays until they are sent: then
    stacked once, straight where they go (a shared-memory region, or the one array a gRPC request carries), rather
    than into an array of their own first and copied again. A batch that is one array already (``of``) stays one."""

    frames: Sequence[Pixels] | Pixels

    @classmethod
    def of(cls, batch: Pixels) -> Images:
        return cls(batch)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, ...]:
        if isinstance(self.frames, np.ndarray):
            return tuple(self.frames.shape)
        return (len(self.frames), *self.frames[0].shape)

    @property
    def nbytes(self) -> int:
        if isinstance(self.frames, np.ndarray):
            return int(self.frames.nbytes)
        return sum(frame.nbytes for frame in self.frames)

    def stacked(self, out: Pixels | None = None) -> Pixels:
        """The batch as one array: written into ``out`` (of ``shape``) where given, else a new one (or the array the
        batch already is); ``ValueError`` when the frames' shapes differ or do not fit ``out``."""
        if isinstance(self.frames, np.ndarray):
            if out is None:
                return self.frames
            if out.shape != self.frames.shape:
                raise ValueError(f"a batch of {self.frames.shape} does not fit {out.shape}")
            np.copyto(out, self.frames)
            return out
        return np.stack(self.frames, out=out)

    def take(self, rows: Sequence[int]) -> Images:
        return Images([self.frames[i] for i in rows])


@dataclass(frozen=True, slots=True)
class BatchInputs:
    grey: Images  # (B, 1, H, W) uint8
    rgb: Images  # (B, 3, H, W) uint8
    process: npt.NDArray[np.float32]  # (B, 48) float32
    present: npt.NDArray[np.float32]  # (B, 2) float32
    notes: npt.NDArray[np.int64]  # (B, 32) int64

    def take(self, rows: Sequence[int]) -> BatchInputs:
        """These inputs for the frames at ``rows`` (all of them: the arrays themselves, not copies)."""
        if list(rows) == list(range(len(self.grey))):
            return self
        idx = np.asarray(rows)
        return BatchInputs(self.grey.take(rows), self.rgb.take(rows), self.process[idx], self.present[idx],
                           self.notes[idx])  # fmt: skip


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
        grey=Images([f.tensors.grey for f in frames]),
        rgb=Images([f.tensors.rgb for f in frames]),
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
