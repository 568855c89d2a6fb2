"""The types that travel between the daemon's stages: a frame's header and tensors, its process context, the frame
in work, its verdict and outcome, and the rows the outbox keeps. Pure data, imported by every stage, importing none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

PASS = "PASS"
DEFECT = "DEFECT"
REVIEW = "REVIEW"
AUDIT = "AUDIT"
NOT_INSPECTED = "NOT_INSPECTED"
WAFER = "WAFER"  # the outbox decision column of a wafer summary
DECISIONS = (PASS, DEFECT, REVIEW, AUDIT, NOT_INSPECTED)
WaferKey = tuple[str, str, str]  # (tool_id, lot_id, wafer_id), as Frame.wafer_key

# Why a frame is rejected (``rejected`` reply, ``edge_frames_rejected_total{reason}``); tool_key_mismatch: the
# sender's CURVE key does not speak for the header's tool_id
FrameRejectReason = Literal[
    "bad_multipart", "header_too_large", "bad_msgpack", "missing_key", "bad_value", "bad_version", "unknown_tool",
    "tool_key_mismatch", "unknown_recipe", "bad_encoding", "bad_shape", "payload_too_large", "image_too_large",
    "bad_size", "undecodable", "wrong_dimensions",
]  # fmt: skip
# Why an MES message, a review or a re-baseline command is refused (``edge_mes_rejected_total{reason}``)
MesRejectReason = Literal["bad_json", "not_an_object", "missing_key", "bad_value", "unknown_tool", "unknown_recipe",
                          "bad_multipart"]  # fmt: skip
RejectReason = FrameRejectReason | MesRejectReason
# Why a frame was accepted and still not inspected (``not_inspected`` reply)
NotInspectedReason = Literal["deadline_passed", "triton_unavailable", "inference_failed"]


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str
    frame_id: str | None = None


@dataclass(frozen=True, slots=True)
class FrameHeader:
    frame_id: str
    tool_id: str
    recipe_id: str
    lot_id: str
    wafer_id: str
    die: tuple[int, int]
    ts: float
    encoding: str
    shape: tuple[int, ...] | None
    notes: str | None
    deadline_ms: int | None


@dataclass(frozen=True, slots=True)
class Tensors:
    rgb: npt.NDArray[np.uint8]  # (3, H, W) uint8, channels first
    grey: npt.NDArray[np.uint8]  # (1, H, W) uint8
    png: bytes | None = None  # the tool's own PNG, where it decodes to exactly ``rgb``: a capture keeps it as it is


@dataclass(frozen=True, slots=True)
class ProcessLog:
    lot_id: str
    wafer_id: str
    recipe_id: str
    tool_id: str
    ts: float
    params: dict[str, float]
    notes: str | None = None
    anomalous: tuple[dict[str, Any], ...] = ()  # parameters far from their running statistics: {name, value, z}
    chamber_id: str | None = None  # the chamber the wafer ran in, where the MES names it

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tool_id, self.lot_id, self.wafer_id)


@dataclass(frozen=True, slots=True)
class LotEvent:
    kind: str  # lot_start | lot_end | wafer_end
    lot_id: str
    recipe_id: str
    tool_id: str
    wafer_id: str | None = None  # wafer_end only


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
class HotRegion:
    """Where the anomaly is, in image pixels: the hottest heatmap cell's centre, and the bounding box
    (x0, y0, x1, y1, inclusive) of the hot cells 8-connected to it."""

    peak_xy: tuple[int, int]
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: str  # PASS, DEFECT or REVIEW: what the tool is told
    defect_class: str  # the named class, UNCLASSIFIED for REVIEW, GOOD for a clean PASS
    confidence: float  # classifier probability of the top class (0 when the classifier was skipped)
    threshold: float | None  # threshold of the top class when it is a defect class
    band: str  # PASS, MARGINAL or REJECT
    suppressed: bool  # a defect class won but under its threshold
    audit: bool  # a suppressed candidate sampled for review
    top_k: tuple[tuple[str, float], ...]

    @property
    def event_decision(self) -> str | None:
        """Decision carried by the published event, or None when the frame makes no event."""
        if self.decision in (DEFECT, REVIEW):
            return self.decision
        return AUDIT if self.audit else None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verdict for the frame, or not inspected for ``reason``."""

    frame: Frame
    verdict: Verdict | None
    score: float = 0.0
    hot: HotRegion | None = None
    reason: NotInspectedReason | None = None
    heatmap: npt.NDArray[np.float32] | None = None  # (32, 32): the anomaly model's map, kept for the capture
    attention: npt.NDArray[np.float32] | None = None  # (64,): the classifier's attention over 8x8 patches
    bands: tuple[float, float] | None = None  # the anomaly bands (pass, reject) the score was judged by
    models: dict[str, str] = field(default_factory=dict)  # model name -> the version that scored (or was to score)
    digests: dict[str, str] = field(default_factory=dict)  # model name -> that version's digest
    embedding: npt.NDArray[np.float32] | None = None  # (D,): the classifier's pooled representation, where served

    @property
    def decision(self) -> str:
        return self.verdict.decision if self.verdict else NOT_INSPECTED

    @property
    def event_decision(self) -> str | None:
        return self.verdict.event_decision if self.verdict else NOT_INSPECTED


@dataclass(frozen=True, slots=True)
class ResultRow:
    tool_id: str
    frame_id: str
    decision: str
    event_id: str | None
    reply: bytes


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: str
    topic: str
    decision: str
    payload: str
    held: bool = False  # not published until its capture is written (the outbox releases it)


@dataclass(frozen=True, slots=True)
class DieRow:
    """One inspected die of a wafer not yet summarised."""

    tool_id: str
    lot_id: str
    wafer_id: str
    x: int
    y: int
    recipe_id: str
    decision: str
    defect_class: str | None

    @property
    def wafer_key(self) -> tuple[str, str, str]:
        return (self.tool_id, self.lot_id, self.wafer_id)
