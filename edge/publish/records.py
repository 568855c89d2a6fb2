"""How a frame ended, and the records it leaves: the reply bytes, the result row, the event row. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge.capture.record import reference
from edge.flow import EventRow, Outcome, ResultRow
from edge.ingest.wire import encode_reply, error_reply, ok_reply
from edge.publish.events import FrameFacts, event_body, event_topic

STATIC_CALIBRATION = {"profile_version": 0, "status": "static"}


@dataclass(frozen=True, slots=True)
class Stamp:
    """What every record of a batch shares."""

    station: str
    prefix: str
    models: dict[str, str]  # the live versions: for an outcome that names none
    now: float  # monotonic seconds, for latencies
    wall: float  # epoch seconds, for the event's ts


def records(outcome: Outcome, event_id: str | None, stamp: Stamp, calibration: dict[str, Any] = STATIC_CALIBRATION,
            captured: bool = False) -> tuple[ResultRow, EventRow | None]:  # fmt: skip
    """The result row (holding the encoded reply) and, when the outcome makes one, the event row (with the
    ``calibration`` facts of its class). ``event_id`` must be given exactly when ``outcome.event_decision`` is set.
    ``captured``: the die is kept under the event's id: the event names its capture and is held until it is
    written."""
    frame, h = outcome.frame, outcome.frame.header
    latency = {k: round(v * 1000, 3) for k, v in frame.timings.items() if k in ("queue", "infer")}
    latency["total"] = round((stamp.now - frame.received) * 1000, 3)
    if outcome.reason is None:
        reply = ok_reply(h.frame_id, outcome.decision, event_id, latency["total"])
    else:
        reply = {**error_reply(h.frame_id, "not_inspected", outcome.reason), "event_id": event_id}
    event = None
    if outcome.event_decision:
        assert event_id is not None
        facts = FrameFacts(
            stamp.station,
            h.tool_id,
            h.recipe_id,
            h.lot_id,
            h.wafer_id,
            h.die,
            h.frame_id,
            outcome.score,
            outcome.hot,
            frame.context is not None,
            frame.context.anomalous if frame.context else (),
            outcome.models or stamp.models,
            latency,
            outcome.digests,
            frame.context.chamber_id if frame.context else None,
        )
        body = event_body(
            event_id, stamp.wall, outcome.event_decision, outcome.verdict, facts, calibration, outcome.reason
        )
        if captured:
            body["capture"] = reference(event_id)
        event = EventRow(
            event_id,
            event_topic(stamp.prefix, stamp.station, h.tool_id),
            outcome.event_decision,
            json.dumps(body, separators=(",", ":")),
            held=captured,
        )
    result = ResultRow(h.tool_id, h.frame_id, outcome.decision, event_id, encode_reply(reply))
    return result, event
