"""Malformed frames of every kind the daemon must refuse, with the rejection reason expected."""

from __future__ import annotations

import cv2
import numpy as np

from edge.ingest.wire import encode_header

MALFORMED_KINDS = (
    "bad_msgpack",
    "missing_key",
    "unknown_tool",
    "bad_size",
    "undecodable",
    "image_too_large",
    "wrong_dimensions",
    "bad_multipart",
    "bad_version",
)
ANONYMOUS = ("bad_msgpack", "bad_multipart")  # the daemon cannot read a frame id from these


def malformed_frame(kind: str, frame_id: str, good_header: dict, image: np.ndarray) -> tuple[list[bytes], str]:
    """Wire parts of a broken frame of ``kind`` and the reason the daemon should give."""
    header = {**good_header, "frame_id": frame_id}
    raw = {**header, "encoding": "raw", "shape": list(image.shape), "dtype": "uint8"}
    if kind == "bad_msgpack":
        return [b"\xc1\xc1 not msgpack", b""], kind
    if kind == "bad_multipart":
        return [encode_header(header), b"x", b"y"], kind
    if kind == "missing_key":
        return [encode_header({k: v for k, v in header.items() if k != "recipe_id"}), b""], kind
    if kind == "unknown_tool":
        return [encode_header({**header, "tool_id": "AOI-UNKNOWN"}), b""], kind
    if kind == "bad_version":
        return [encode_header({**header, "v": 99}), b""], kind
    if kind == "bad_size":
        return [encode_header(raw), image.tobytes()[:-7]], kind
    if kind == "undecodable":
        return [encode_header({**header, "encoding": "png"}), b"\x89PNG\r\n\x1a\n" + bytes(64)], kind
    if kind == "image_too_large":
        return [encode_header({**raw, "shape": [60000, 60000, 3]}), b"\x00" * 16], kind
    if kind == "wrong_dimensions":
        small = cv2.resize(image, (128, 128))
        ok, buf = cv2.imencode(".png", small)
        assert ok
        return [encode_header({**header, "encoding": "png"}), buf.tobytes()], kind
    raise ValueError(f"unknown malformed kind {kind!r}")
