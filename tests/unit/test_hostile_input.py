"""Hostile input, generated: frame headers and payloads, MES JSON, re-baseline commands and review messages
never raise, and every rejection carries a known reason. Four properties x 2,500 examples = 10,000 generated
inputs per run."""

from __future__ import annotations

import json
import struct
import zlib

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.decision.thresholds import Review, parse_review
from edge.flow import FrameHeader, LotEvent, ProcessLog, Rejected, Tensors
from edge.ingest.imaging import decode
from edge.ingest.wire import REJECT_REASONS, Limits, parse_frame
from edge.mes.context import parse_lot_event, parse_process_log
from edge.watch import rebaseline

EXAMPLES = 2500
LIMITS = Limits(4096, 1 << 20, 300 * 300, frozenset({"AOI-01"}), frozenset({"R-1"}))  # dies are 256 x 256
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
VALID = {"v": 1, "frame_id": "f1", "tool_id": "AOI-01", "recipe_id": "R-1", "lot_id": "L1", "wafer_id": "W1",
         "die": [1, 2], "ts": 1.7e9, "encoding": "raw", "shape": [4, 4, 3], "dtype": "uint8"}  # fmt: skip


def _png(width: int, height: int, body: bytes) -> bytes:
    """A PNG signature and IHDR declaring ``width`` x ``height``, followed by arbitrary bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + body


keys = st.sampled_from(sorted(VALID))
headers = st.one_of(
    st.dictionaries(keys | st.text(max_size=10), values, max_size=14),
    st.builds(lambda changes: {**VALID, **changes}, st.dictionaries(keys, values, max_size=3)),
)
payloads = st.one_of(
    st.binary(max_size=256),
    st.builds(_png, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.binary(max_size=64)),
    st.builds(lambda body: b"\xff\xd8\xff" + body, st.binary(max_size=128)),
)


def _decoded_or_rejected(header: FrameHeader, payload: bytes) -> None:
    out = decode(header, payload, (256, 256), LIMITS.max_image_pixels, resize=True)
    assert isinstance(out, (Tensors, Rejected))
    if isinstance(out, Rejected):
        assert out.reason in REJECT_REASONS


@FUZZ
@given(header=headers, payload=payloads, raw_header=st.booleans(), junk=st.binary(max_size=64))
def test_frames_never_raise_and_rejections_have_a_known_reason(header, payload, raw_header, junk) -> None:
    encoded = junk if raw_header else msgpack.packb(header, use_bin_type=True)
    out = parse_frame([encoded, payload], LIMITS)
    if isinstance(out, Rejected):
        assert out.reason in REJECT_REASONS, out
        return
    parsed, body = out
    _decoded_or_rejected(parsed, body)


@FUZZ
@given(encoding=st.sampled_from(["png", "jpeg"]), payload=payloads)
def test_image_payloads_are_decoded_or_refused_before_decoding(encoding, payload) -> None:
    fields = {k: v for k, v in VALID.items() if k != "shape"} | {"encoding": encoding}
    out = parse_frame([msgpack.packb(fields, use_bin_type=True), payload], LIMITS)
    assert not isinstance(out, Rejected), out
    _decoded_or_rejected(*out)


@FUZZ
@given(doc=values | st.fixed_dictionaries({"tool_id": values | st.just("AOI-01"), "by": values},
                                          optional={"recipe_id": values, "reason": values, "schema": values}),
       raw=st.binary(max_size=64), as_json=st.booleans())  # fmt: skip
def test_mes_and_rebaseline_messages_never_raise(doc, raw, as_json) -> None:
    payload = json.dumps(doc, default=repr).encode() if as_json else raw
    for parse, ok in ((parse_process_log, ProcessLog), (parse_lot_event, LotEvent)):
        out = parse(payload)
        assert isinstance(out, (ok, Rejected))
    command = rebaseline.parse(payload, ("AOI-01",), ("R-1",))
    assert isinstance(command, rebaseline.Rebaseline) or command.reason in rebaseline.RESULTS


@FUZZ
@given(doc=values | st.fixed_dictionaries({"event_id": values, "disposition": values, "reviewer": values,
                                           "class": values, "comment": values}),
       raw=st.binary(max_size=64), as_json=st.booleans())  # fmt: skip
def test_review_messages_never_raise(doc, raw, as_json) -> None:
    payload = json.dumps(doc, default=repr).encode() if as_json else raw
    assert isinstance(parse_review(payload, ("GOOD", "CRACK")), (Review, Rejected))


def test_decompression_bomb_is_refused_from_its_header() -> None:
    """A small PNG that declares 60,000 x 60,000 pixels is refused on the declared size, before any decoding."""
    bomb = _png(60_000, 60_000, zlib.compress(b"\x00" * 100_000))
    fields = {k: v for k, v in VALID.items() if k != "shape"} | {"encoding": "png"}
    header, payload = parse_frame([msgpack.packb(fields), bomb], LIMITS)
    out = decode(header, payload, (256, 256), LIMITS.max_image_pixels, resize=True)
    assert isinstance(out, Rejected) and out.reason == "image_too_large"
    assert len(bomb) < 1000 and np.prod([60_000, 60_000]) > LIMITS.max_image_pixels


def test_a_png_with_a_chunk_past_the_end_is_refused_without_decoding() -> None:
    """cv2 spends about a second on such a payload; the chunk walk refuses it before cv2 sees it."""
    import cv2

    from edge.ingest.imaging import png_chunks_complete

    good = cv2.imencode(".png", np.zeros((256, 256, 3), np.uint8))[1].tobytes()
    assert png_chunks_complete(good)
    truncated = _png(256, 256, b"junkjunkjunk")
    assert not png_chunks_complete(truncated) and not png_chunks_complete(good[:-5])
    fields = {k: v for k, v in VALID.items() if k != "shape"} | {"encoding": "png"}
    header, payload = parse_frame([msgpack.packb(fields), truncated], LIMITS)
    out = decode(header, payload, (256, 256), LIMITS.max_image_pixels, resize=True)
    assert isinstance(out, Rejected) and out.reason == "undecodable" and "chunks" in out.detail
