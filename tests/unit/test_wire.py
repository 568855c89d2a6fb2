"""Frame wire parsing: every rejection reason, and the accepted form."""

import msgpack
import pytest

from edge.flow import FrameHeader, Rejected
from edge.ingest.wire import REJECT_REASONS, Limits, parse_frame

LIMITS = Limits(
    max_header_bytes=4096,
    max_payload_bytes=300_000,
    max_image_pixels=512 * 512,
    tools=frozenset({"AOI-01"}),
    recipes=frozenset({"R1"}),
)


def header(**overrides):
    h = {
        "v": 1,
        "frame_id": "f-1",
        "tool_id": "AOI-01",
        "recipe_id": "R1",
        "lot_id": "L1",
        "wafer_id": "W1",
        "die": [3, 4],
        "ts": 1_700_000_000.5,
        "encoding": "raw",
        "shape": [256, 256, 3],
        "dtype": "uint8",
    }
    h.update(overrides)
    return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()
RAW = bytes(256 * 256 * 3)


def parse(h, payload=RAW):
    return parse_frame([msgpack.packb(h), payload], LIMITS)


def test_valid_raw_frame_is_accepted_with_all_fields():
    result = parse(header(notes="seen near notch", deadline_ms=500))
    assert not isinstance(result, Rejected)
    parsed, payload = result
    assert isinstance(parsed, FrameHeader)
    assert parsed.die == (3, 4) and parsed.shape == (256, 256, 3) and parsed.deadline_ms == 500
    assert parsed.notes == "seen near notch" and payload is RAW


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"only-one"], "bad_multipart"),
        ([b"\xc1\xc1", RAW], "bad_msgpack"),
        ([msgpack.packb([1, 2]), RAW], "bad_msgpack"),
        ([b"x" * 5000, RAW], "header_too_large"),
    ],
)
def test_structural_rejections(parts, reason):
    result = parse_frame(parts, LIMITS)
    assert isinstance(result, Rejected) and result.reason == reason


@pytest.mark.parametrize(
    ("overrides", "payload", "reason"),
    [
        ({"frame_id": _DROP}, RAW, "missing_key"),
        ({"shape": _DROP}, RAW, "missing_key"),
        ({"v": 2}, RAW, "bad_version"),
        ({"tool_id": "AOI-99"}, RAW, "unknown_tool"),
        ({"recipe_id": "R9"}, RAW, "unknown_recipe"),
        ({"encoding": "bmp"}, RAW, "bad_encoding"),
        ({"shape": [256, 256, 4]}, RAW, "bad_shape"),
        ({"shape": [256, -1]}, RAW, "bad_shape"),
        ({"shape": [100_000, 100_000]}, RAW, "image_too_large"),
        ({}, RAW + b"x", "bad_size"),
        ({"encoding": "png", "shape": _DROP}, b"x" * 400_000, "payload_too_large"),
        ({"die": [1]}, RAW, "bad_value"),
        ({"die": [True, 2]}, RAW, "bad_value"),
        ({"ts": "yesterday"}, RAW, "bad_value"),
        ({"ts": float("nan")}, RAW, "bad_value"),
        ({"frame_id": ""}, RAW, "bad_value"),
        ({"frame_id": 17}, RAW, "bad_value"),
        ({"dtype": "float32"}, RAW, "bad_value"),
        ({"notes": 5}, RAW, "bad_value"),
        ({"deadline_ms": -1}, RAW, "bad_value"),
    ],
)
def test_header_rejections_name_their_reason(overrides, payload, reason):
    result = parse(header(**overrides), payload)
    assert isinstance(result, Rejected), result
    assert result.reason == reason and result.reason in REJECT_REASONS
    assert result.detail


def test_rejection_keeps_the_frame_id_when_readable():
    result = parse(header(tool_id="nope"))
    assert isinstance(result, Rejected) and result.frame_id == "f-1"
