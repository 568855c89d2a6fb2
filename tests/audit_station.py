"""A station's stores as the daemon and the reviewers leave them, for the subgroup audit's tests: the events and
calibration rows written by the daemon's own functions (``Calibration.rows`` / ``apply``, ``records``, the outbox,
the capture store), the reviews through ``apply_review`` (the MQTT and review-page path), a redelivered one among
them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.capture.record import capture_of
from edge.capture.store import CaptureStore
from edge.config import Config, parse_config
from edge.decision.thresholds import Calibration, apply_review
from edge.flow import Frame, FrameHeader, Outcome, ProcessLog, Tensors, Verdict
from edge.ops.metrics import Metrics
from edge.publish.events import EventIds
from edge.publish.outbox import Outbox
from edge.publish.records import Stamp, records
from edge.watch.line_watch import die_row
from tools.sim.wafer_patterns import round_wafer_dies

R, R2, T1, T2 = "R1", "R2", "AOI-01", "AOI-02"
DAY = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
MODELS = {"anomaly": "1", "classifier": "2"}
CENTRE, MIDDLE, EDGE = (4, 4), (2, 4), (0, 4)  # on a round wafer of radius 5 dies (x and y 0..8)


@dataclass(frozen=True)
class Die:
    """One inspected die: its decision, where and when, and what is kept of it."""

    name: str
    decision: str  # DEFECT, REVIEW, AUDIT (a suppressed pass sampled) or PASS
    tool: str
    hour: float  # hours after DAY (UTC)
    die: tuple[int, int]
    note: bool = False
    process: bool = False
    captured: bool = True
    in_outbox: bool = True
    recipe: str = R
    reviews: tuple[dict[str, Any], ...] = ()  # review messages (disposition, class), in the order they arrive


def _outcome(d: Die, frame_id: str) -> Outcome:
    rgb = np.zeros((3, 16, 16), np.uint8)
    header = FrameHeader(frame_id, d.tool, d.recipe, "L1", "W1", d.die, 0.0, "png", None,
                         "operator: wipe" if d.note else None, None)  # fmt: skip
    context = ProcessLog("L1", "W1", d.recipe, d.tool, 0.0, {"rf_power": 1.0},
                         chamber_id=f"{d.tool}-CH1") if d.process else None  # fmt: skip
    frame = Frame(b"tool", header, Tensors(rgb, rgb[:1]), 0.0, 1.0, DAY + 3600 * d.hour, context)
    if d.decision == "DEFECT":
        verdict = Verdict("DEFECT", "PART-SM", 0.9, 0.6, "REJECT", False, False, (("PART-SM", 0.9), ("GOOD", 0.1)))
    elif d.decision == "REVIEW":
        verdict = Verdict("REVIEW", "UNCLASSIFIED", 0.7, None, "REJECT", False, False, (("GOOD", 0.7),))
    else:  # a suppressed candidate, sampled for audit or not
        verdict = Verdict("PASS", "GOOD", 0.55, 0.6, "PASS", True, d.decision == "AUDIT", (("CRACK", 0.55),))
    return Outcome(frame, verdict, 0.1, models=dict(MODELS))


def fill(root: Path, dies: list[Die], review: dict[str, Any] | None = None) -> tuple[Config, dict[str, str]]:
    """The config of a station whose stores hold ``dies`` (and a full wafer of passes on each tool, for the die
    grid), reviewed as each says, with ``review`` as its review section; returns it and each die's event id."""
    cfg = parse_config({
        "tools": [{"id": T1}, {"id": T2}], "recipes": {R: {}, R2: {}},
        "capture": {"path": str(root / "captures")}, "outbox": {"path": str(root / "outbox.sqlite")},
        "calibration": {"path": str(root / "calibration.sqlite")}, "review": review or {},
    })  # fmt: skip
    calibration = Calibration(cfg, Metrics())
    captures = CaptureStore(cfg.capture.path, 10**9, 10**9, 10**9)
    outbox = Outbox(cfg.outbox.path)
    ids: dict[str, str] = {}
    try:
        for i, d in enumerate(dies):
            wall = DAY + 3600 * d.hour
            outcome = _outcome(d, f"f{i}")
            event_id = EventIds(clock=lambda wall=wall: wall).new() if outcome.event_decision else None
            rows = calibration.rows([outcome], [event_id])
            assert rows is not None
            calibration.apply(f"batch-{i}", rows)
            if event_id is None:
                continue
            ids[d.name] = event_id
            stamp = Stamp("S1", "fab", dict(MODELS), time.monotonic(), wall)
            result, event = records(outcome, event_id, stamp, captured=d.captured)
            if d.in_outbox:
                outbox.record([result], [event] if event else [])
            if d.captured:
                captures.write([capture_of(outcome, event_id, str(outcome.event_decision), dict(MODELS), wall)])
        grid = [Die("grid", "PASS", tool, 1.0, xy) for tool in (T1, T2) for xy in round_wafer_dies(5.0)]
        wafer = [_outcome(d, f"g{i}") for i, d in enumerate(grid)]
        first = [die_row(o) for o in wafer if o.frame.header.tool_id == T1]
        outbox.record([], [], first, summarised=[(T1, "L1", "W1")])  # a summarised wafer: its map row
        outbox.record([], [], [die_row(o) for o in wafer if o.frame.header.tool_id == T2])  # an open wafer's dies
        for d in dies:
            for review in d.reviews:
                message = json.dumps({"event_id": ids[d.name], "reviewer": "eve", **review}).encode()
                assert apply_review(calibration.store, message, cfg.decision.classes) == "accepted"
    finally:
        calibration.close()
        captures.close()
        outbox.close()
    return cfg, ids
