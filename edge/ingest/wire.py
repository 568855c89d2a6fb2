"""Frame wire format (DESIGN 3.1): parse a multipart message into a header or a typed rejection.

Pure: no sockets here. Every rejection carries a reason from ``REJECT_REASONS`` (a bounded set,
used as a metric label) and a human-readable detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, get_args

import msgpack

from edge.flow import FrameHeader, FrameRejectReason, Rejected

SCHEMA_VERSION = 1
ENCODINGS = ("raw", "png", "jpeg")

REJECT_REASONS: tuple[FrameRejectReason, ...] = get_args(FrameRejectReason)

REQUIRED = ("v", "frame_id", "tool_id", "recipe_id", "lot_id", "wafer_id", "die", "ts", "encoding")
_MAX_ID = 128
_MAX_NOTE = 2000


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    max_payload_bytes: int
    max_image_pixels: int
    tools: frozenset[str]
    recipes: frozenset[str]


def _text(header: dict[str, Any], key: str, max_len: int = _MAX_ID) -> str:
    value = header[key]
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _Bad("bad_value", f"{key} must be a non-empty string of at most {max_len} characters")
    return value


class _Bad(Exception):
    def __init__(self, reason: FrameRejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _shape(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in (2, 3)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    ):
        raise _Bad("bad_shape", "shape must be [h, w] or [h, w, c] with positive ints")
    if len(value) == 3 and value[2] not in (1, 3):
        raise _Bad("bad_shape", "channels must be 1 or 3")
    return tuple(value)


def _parse(header: dict[str, Any], payload: bytes, limits: Limits) -> FrameHeader:
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise _Bad("missing_key", f"missing {', '.join(missing)}")
    if header["v"] != SCHEMA_VERSION:
        raise _Bad("bad_version", f"schema version {header['v']!r} is not supported (expected {SCHEMA_VERSION})")
    frame_id = _text(header, "frame_id")
    tool_id = _text(header, "tool_id")
    recipe_id = _text(header, "recipe_id")
    lot_id = _text(header, "lot_id")
    wafer_id = _text(header, "wafer_id")
    die, ts = _die(header["die"]), _epoch(header["ts"])
    if tool_id not in limits.tools:
        raise _Bad("unknown_tool", f"tool {tool_id!r} is not configured on this station")
    if recipe_id not in limits.recipes:
        raise _Bad("unknown_recipe", f"recipe {recipe_id!r} is not configured on this station")
    encoding = header["encoding"]
    if encoding not in ENCODINGS:
        raise _Bad("bad_encoding", f"encoding must be one of {', '.join(ENCODINGS)}")
    shape = None
    if "shape" in header or encoding == "raw":
        if "shape" not in header:
            raise _Bad("missing_key", "missing shape (required for raw)")
        shape = _shape(header["shape"])
        if shape[0] * shape[1] > limits.max_image_pixels:
            raise _Bad("image_too_large", f"declared {shape[0]}x{shape[1]} is over {limits.max_image_pixels} pixels")
    if header.get("dtype", "uint8") != "uint8":
        raise _Bad("bad_value", "dtype must be uint8")
    if len(payload) > limits.max_payload_bytes:
        raise _Bad("payload_too_large", f"payload of {len(payload)} bytes is over {limits.max_payload_bytes}")
    if encoding == "raw":
        assert shape is not None
        expected = math.prod(shape)
        if len(payload) != expected:
            raise _Bad("bad_size", f"raw payload is {len(payload)} bytes, shape {list(shape)} needs {expected}")
    notes, deadline = _notes(header.get("notes")), _deadline(header.get("deadline_ms"))
    return FrameHeader(frame_id, tool_id, recipe_id, lot_id, wafer_id, die, ts, encoding, shape, notes, deadline)


def _die(die: Any) -> tuple[int, int]:
    if (
        not isinstance(die, (list, tuple))
        or len(die) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and -100_000 < d < 100_000 for d in die)
    ):
        raise _Bad("bad_value", "die must be [x, y] ints")
    return die[0], die[1]


def _epoch(ts: Any) -> float:
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise _Bad("bad_value", "ts must be epoch seconds")
    return float(ts)


def _notes(notes: Any) -> str | None:
    if notes is not None and (not isinstance(notes, str) or len(notes) > _MAX_NOTE):
        raise _Bad("bad_value", f"notes must be a string of at most {_MAX_NOTE} characters")
    return notes


def _deadline(deadline: Any) -> int | None:
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= 0):
        raise _Bad("bad_value", "deadline_ms must be a positive int")
    return deadline


def parse_frame(parts: list[bytes], limits: Limits) -> tuple[FrameHeader, bytes] | Rejected:
    """Parse ``[header, payload]``; never raises on bad input."""
    if len(parts) != 2:
        return Rejected("bad_multipart", f"expected 2 frames [header, payload], got {len(parts)}")
    raw_header, payload = parts
    if len(raw_header) > limits.max_header_bytes:
        return Rejected("header_too_large", f"header of {len(raw_header)} bytes is over {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except Exception as err:  # noqa: BLE001 - msgpack raises several unrelated types on corrupt input
        return Rejected("bad_msgpack", f"header is not msgpack: {type(err).__name__}")
    if not isinstance(header, dict):
        return Rejected("bad_msgpack", "header must be a msgpack map")
    frame_id = header.get("frame_id") if isinstance(header.get("frame_id"), str) else None
    try:
        return _parse(header, payload, limits), payload
    except _Bad as bad:
        return Rejected(bad.reason, bad.detail, frame_id)


def encode_reply(reply: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(reply, use_bin_type=True)
    return packed


def decode_reply(data: bytes) -> dict[str, Any]:
    reply: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return reply


def encode_header(header: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    return packed


def ok_reply(frame_id: str, decision: str, event_id: str | None, latency_ms: float) -> dict[str, Any]:
    return {
        "frame_id": frame_id,
        "status": "ok",
        "decision": decision,
        "event_id": event_id,
        "latency_ms": round(latency_ms, 3),
    }


def error_reply(frame_id: str | None, status: str, reason: str, retry_after_ms: int | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"frame_id": frame_id, "status": status, "reason": reason}
    if retry_after_ms is not None:
        reply["retry_after_ms"] = retry_after_ms
    return reply
