"""Seeded synthetic fab: die images with defects and masks, MES process logs, operator notes, production plans.

Everything is a pure function of its seed (numpy + OpenCV only), so two simulator processes that build
``Fab(seed)`` and call ``plan`` with the same arguments agree on every lot, wafer, die, label and pixel.

Truth rule (DESIGN 3.4): the DISCOLOR *look* is a real DISCOLOR defect only on a wafer whose process log has a
thermal/chemical excursion; on a normal wafer the same look is cosmetic and labelled GOOD.

Held-out data comes from another seed and, via ``shift``, slightly moved tool optics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from itertools import repeat
from multiprocessing import get_context

import cv2
import numpy as np

from edge.notes import MAX_TOKENS, tokenize
from edge.process_params import DEFAULT_PARAMETERS, process_vector
from edge.taxonomy import DEFAULT_CLASSES, DEFECT_CLASSES, GOOD
from tools.synth_defects import GEOMETRY, OVERLAY, within_tolerance
from tools.synth_mes import operator_note, sample_process
from tools.synth_render import (
    NO_DRIFT,
    SIZE,
    Drift,
    ToolOptics,
    apply_optics,
    base_scene,
    expose,
    render_pattern,
    rng_for,
    tool_optics,
)

DISCOLOR = "DISCOLOR"
DEFAULT_TOOLS: tuple[str, ...] = ("AOI-01", "AOI-02")
DEFAULT_RECIPE = "R-7NM-L4"
LOOKS: tuple[str, ...] = DEFAULT_CLASSES  # what a die shows; GOOD is the clean look
GOOD_BORDERLINE_RATE = 0.15  # clean dies with one bump undersized but inside the tolerance

__all__ = [
    "DEFAULT_RECIPE",
    "DEFAULT_TOOLS",
    "LOOKS",
    "NO_DRIFT",
    "Dataset",
    "Die",
    "DiePlan",
    "Drift",
    "Fab",
    "SampleOptions",
    "ToolOptics",
    "WaferPlan",
    "grey",
    "label_for",
    "make_dataset",
    "render_die",
    "tool_optics",
]  # fmt: skip


def label_for(look: str, excursion: bool) -> str:
    """The truth label of a die showing ``look`` on a wafer with or without a process excursion."""
    return GOOD if look == DISCOLOR and not excursion else look


def render_die(look: str, seed: int, optics: ToolOptics) -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 RGB uint8 die image showing ``look`` through ``optics``, and the defect's boolean mask."""
    if look not in LOOKS:
        raise KeyError(f"unknown look {look!r}")
    rng = np.random.default_rng(seed)
    scene = base_scene(rng)
    mask = GEOMETRY[look](scene, rng) if look in GEOMETRY else np.zeros((SIZE, SIZE), bool)
    if look == GOOD and rng.random() < GOOD_BORDERLINE_RATE:
        within_tolerance(scene, rng)
    img = render_pattern(scene)
    if look in OVERLAY:
        mask = OVERLAY[look](img, scene, rng)
    return expose(apply_optics(img, optics), rng), mask


def grey(images: np.ndarray) -> np.ndarray:
    """RGB uint8 images (N, H, W, 3) to grey (N, 1, H, W) with ``cv2.COLOR_RGB2GRAY``, as the daemon does."""
    return np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images])[:, None]


@dataclass(frozen=True)
class DiePlan:
    frame_id: str  # unique per tool
    die: tuple[int, int]  # (x, y) position on the wafer's die grid
    look: str
    label: str
    seed: int  # render seed


@dataclass(frozen=True)
class WaferPlan:
    lot_id: str
    wafer_id: str
    tool_id: str
    excursion: bool  # the wafer's process log has a thermal/chemical excursion
    note: str | None  # operator note, None for ~40% of wafers
    dies: list[DiePlan]


@dataclass(frozen=True)
class Die:
    image: np.ndarray  # (256, 256, 3) uint8 RGB
    label: str
    mask: np.ndarray  # (256, 256) bool, empty for GOOD


class Fab:
    """A deterministic production line: one recipe, a few AOI tools; each lot runs on one tool (round robin)."""

    def __init__(
        self,
        seed: int,
        recipe_id: str = DEFAULT_RECIPE,
        tool_ids: Sequence[str] = DEFAULT_TOOLS,
        shift: float = 0.0,
        excursion_rate: float = 0.1,
        note_rate: float = 0.6,
        drift: Drift = NO_DRIFT,
    ) -> None:
        self.seed = int(seed)
        self.recipe_id = recipe_id
        self.tool_ids = tuple(tool_ids)
        self.excursion_rate = excursion_rate
        self.note_rate = note_rate
        self.shift = shift
        self._optics = {tool: tool_optics(tool, shift, drift) for tool in self.tool_ids}

    def optics(self, tool_id: str) -> ToolOptics:
        return self._optics[tool_id]

    def set_drift(self, tool_id: str, drift: Drift) -> None:
        """From now on ``tool_id`` renders through aged, re-coated or warmed optics (drift scenarios)."""
        self._optics[tool_id] = tool_optics(tool_id, self.shift, drift)

    def plan(
        self,
        lots: int,
        wafers_per_lot: int,
        dies_per_wafer: int,
        defect_rate: float,
        looks: Sequence[str] | None = None,
        first_lot: int = 0,
    ) -> list[WaferPlan]:
        """Wafers of lots ``first_lot .. first_lot + lots - 1``, dies in row-major order on a square grid.

        Each die shows a defect look (uniform over ``looks``, default every defect class) with probability
        ``defect_rate``, else the clean look; its label follows ``label_for``.
        """
        looks = tuple(looks or DEFECT_CLASSES)
        side = math.ceil(math.sqrt(dies_per_wafer))
        wafers = []
        for lot in range(first_lot, first_lot + lots):
            lot_id, tool_id = f"LOT-{self.seed}-{lot:04d}", self.tool_ids[lot % len(self.tool_ids)]
            for w in range(wafers_per_lot):
                rng = rng_for(self.seed, "wafer", lot, w)
                excursion = bool(rng.random() < self.excursion_rate)
                wafer_id = f"W{w + 1:02d}"
                dies = []
                for i in range(dies_per_wafer):
                    look = looks[rng.integers(len(looks))] if rng.random() < defect_rate else GOOD
                    dies.append(DiePlan(
                        frame_id=f"{lot_id}-{wafer_id}-{i:04d}",
                        die=(i % side, i // side),
                        look=look,
                        label=label_for(look, excursion),
                        seed=int(rng.integers(2**31)),
                    ))  # fmt: skip
                note = operator_note(rng, excursion, [d.look for d in dies], self.note_rate)
                wafers.append(WaferPlan(lot_id, wafer_id, tool_id, excursion, note, dies))
        return wafers

    def process_log(self, wafer_plan: WaferPlan, ts: float) -> dict:
        """The wafer's MES process log, JSON-ready (DESIGN 3.2)."""
        rng = rng_for(self.seed, "process", wafer_plan.lot_id, wafer_plan.wafer_id)
        return {
            "lot_id": wafer_plan.lot_id,
            "wafer_id": wafer_plan.wafer_id,
            "recipe_id": self.recipe_id,
            "tool_id": wafer_plan.tool_id,
            "ts": float(ts),
            "params": sample_process(rng, wafer_plan.excursion),
        }

    def render(self, die_plan: DiePlan, wafer_plan: WaferPlan) -> Die:
        image, mask = render_die(die_plan.look, die_plan.seed, self.optics(wafer_plan.tool_id))
        return Die(image, die_plan.label, mask)


@dataclass(frozen=True)
class Dataset:
    """Training/evaluation arrays; class and look ids index ``edge.taxonomy.DEFAULT_CLASSES``."""

    images: np.ndarray  # (N, 256, 256, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64
    looks: np.ndarray  # (N,) int64: what the die shows (a cosmetic GOOD has the DISCOLOR look)
    process: np.ndarray  # (N, 48) float32 raw values, zeros where absent
    present: np.ndarray  # (N, 2) float32 [process log present, note present]
    notes: np.ndarray  # (N, 32) int64 token ids
    masks: np.ndarray  # (N, 256, 256) bool
    excursion: np.ndarray  # (N,) bool
    tool: np.ndarray  # (N,) int64 index into the tool ids


@dataclass(frozen=True)
class SampleOptions:
    """How ``make_dataset`` draws context: a GOOD die shows the cosmetic DISCOLOR look with ``cosmetic_rate``
    (never on an excursion wafer); a DISCOLOR die always has an excursion, any other die with ``excursion_rate``;
    the process log is present with ``process_rate``, an operator note with ``note_rate``."""

    cosmetic_rate: float = 0.5
    excursion_rate: float = 0.15
    note_rate: float = 0.6
    process_rate: float = 0.95


def _balanced_labels(rng: np.random.Generator, n: int, classes: Sequence[str], weights: Sequence[float] | None):
    w = np.ones(len(classes)) if weights is None else np.asarray(weights, float)
    counts = np.floor(n * w / w.sum()).astype(int)
    counts[np.argsort(-w)[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.array(classes, dtype=object), counts))


def make_dataset(
    seed: int,
    n: int,
    classes: Sequence[str] = DEFAULT_CLASSES,
    tool_ids: Sequence[str] = DEFAULT_TOOLS,
    with_process: bool = True,
    shift: float = 0.0,
    class_weights: Sequence[float] | None = None,
    options: SampleOptions = SampleOptions(),
    workers: int = 1,
    drift: Drift = NO_DRIFT,
) -> Dataset:
    """``n`` independent dies with labels drawn from ``classes`` in exact proportion to ``class_weights``.

    Sample ``i`` depends only on (``seed``, ``i``, its label), so the result is the same for any ``workers``
    (processes that render chunks in parallel).
    """
    names = _balanced_labels(rng_for(seed, "dataset"), n, classes, class_weights)
    spec = (seed, tuple(tool_ids), with_process, shift, options, drift)
    chunks = [c for c in np.array_split(np.arange(n), max(1, workers)) if len(c)]
    if len(chunks) <= 1:
        return _render_samples(spec, 0, names)
    with ProcessPoolExecutor(len(chunks), mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_render_samples, repeat(spec), [c[0] for c in chunks], [names[c] for c in chunks]))
    return Dataset(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Dataset)})


def _render_samples(spec: tuple, start: int, names: np.ndarray) -> Dataset:
    """Samples ``start .. start + len(names) - 1`` of a dataset (see ``make_dataset``)."""
    seed, tool_ids, with_process, shift, opt, drift = spec
    n = len(names)
    optics = [tool_optics(t, shift, drift) for t in tool_ids]
    out = Dataset(
        images=np.empty((n, SIZE, SIZE, 3), np.uint8),
        labels=np.array([DEFAULT_CLASSES.index(c) for c in names], np.int64),
        looks=np.empty(n, np.int64),
        process=np.zeros((n, len(DEFAULT_PARAMETERS)), np.float32),
        present=np.zeros((n, 2), np.float32),
        notes=np.zeros((n, MAX_TOKENS), np.int64),
        masks=np.empty((n, SIZE, SIZE), bool),
        excursion=np.empty(n, bool),
        tool=np.empty(n, np.int64),
    )
    for i, label in enumerate(names):
        r = rng_for(seed, "sample", start + i)
        if label == GOOD:
            look = DISCOLOR if r.random() < opt.cosmetic_rate else GOOD
            excursion = look == GOOD and r.random() < opt.excursion_rate
        else:
            look, excursion = label, label == DISCOLOR or r.random() < opt.excursion_rate
        tool = int(r.integers(len(tool_ids)))
        out.images[i], out.masks[i] = render_die(look, int(r.integers(2**31)), optics[tool])
        if with_process and r.random() < opt.process_rate:
            out.process[i], _ = process_vector(sample_process(r, excursion))
            out.present[i, 0] = 1.0
        out.notes[i], has_note = tokenize(operator_note(r, excursion, [look], opt.note_rate))
        out.present[i, 1] = float(has_note)
        out.looks[i], out.excursion[i], out.tool[i] = DEFAULT_CLASSES.index(look), excursion, tool
    return out
