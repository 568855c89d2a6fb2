"""The quick PNG path (edge.png): the pixels OpenCV gives for every PNG it takes (8-bit RGB or grey, rows
None, Sub or Up, however the IDAT data is split), None for every other PNG or damaged payload, and the same tensors
from the daemon's decode whichever way a frame goes. The PNGs are written here row by row with each filter, and by
OpenCV at every compression level."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.flow import FrameHeader, Rejected
from edge.ingest import imaging
from edge.png import decode_png

SIZE = (256, 256)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def ihdr(height: int, width: int, colour: int, depth: int = 8, interlace: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def filtered_rows(image: npt.NDArray[np.uint8], filters: list[int]) -> bytes:
    """The scanlines of ``image`` (RGB or grey), row ``r`` under filter ``filters[r]`` (0 None .. 4 Paeth)."""
    height, width = image.shape[:2]
    bpp = 1 if image.ndim == 2 else 3
    raw = image.reshape(height, width * bpp).astype(np.int64)
    out = bytearray()
    for r, kind in enumerate(filters):
        x = raw[r]
        above = raw[r - 1] if r else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), above[:-bpp]])
        if kind == 0:
            prediction = np.zeros_like(x)
        elif kind == 1:
            prediction = left
        elif kind == 2:
            prediction = above
        elif kind == 3:
            prediction = (left + above) // 2
        else:  # Paeth
            p = left + above - upper_left
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
            prediction = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, above, upper_left))
        out += bytes([kind]) + ((x - prediction) % 256).astype(np.uint8).tobytes()
    return bytes(out)


def encode(image: npt.NDArray[np.uint8], filters: list[int], pieces: int = 1, before: bytes = b"") -> bytes:
    """A PNG of ``image`` with the given row filters, its IDAT data in ``pieces`` chunks, ``before`` them."""
    stream = zlib.compress(filtered_rows(image, filters), 6)
    step = -(-len(stream) // pieces)
    idat = b"".join(chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step))
    colour = 0 if image.ndim == 2 else 2
    return b"\x89PNG\r\n\x1a\n" + ihdr(*image.shape[:2], colour) + before + idat + chunk(b"IEND", b"")


def opencv(png: bytes) -> npt.NDArray[np.uint8]:
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    return decoded if decoded.ndim == 2 else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 24),
    st.integers(1, 24),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.data(),
)
def test_none_sub_and_up_rows_give_what_opencv_gives(height, width, grey, seed, data):
    shape = (height, width) if grey else (height, width, 3)
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    filters = data.draw(st.lists(st.integers(0, 2), min_size=height, max_size=height))
    pieces = data.draw(st.integers(1, 4))
    text = data.draw(st.sampled_from([b"", chunk(b"tEXt", b"Software\x00aoi"), chunk(b"pHYs", bytes(9))]))
    png = encode(image, filters, pieces, text)
    out = decode_png(png)
    assert out is not None and out.dtype == np.uint8
    assert np.array_equal(out, image) and np.array_equal(out, opencv(png))


@pytest.mark.parametrize("level", [None, *range(10)])
def test_opencv_encoded_dies_decode_as_opencv_decodes_them(level):
    """OpenCV's default PNG (no level asked: every row Sub) takes the quick path; at a level it asks for, libpng
    picks each row's filter, Average and Paeth among them, and the die goes to OpenCV."""
    bgr = np.random.default_rng(level).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    bgr[40:80, 100:180] = (10, 200, 30)  # a flat patch among the noise
    ok, png = cv2.imencode(".png", bgr, [] if level is None else [cv2.IMWRITE_PNG_COMPRESSION, level])
    assert ok
    out = decode_png(png.tobytes())
    if level is None:
        assert out is not None
    assert out is None or np.array_equal(out, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("kind", [3, 4])
@pytest.mark.parametrize("row", [0, 1, 130, 255])
def test_average_or_paeth_rows_are_left_to_opencv(kind, row):
    """Wherever the row is: in the first piece inflated (checked before the rest is) or in the rest."""
    image = np.random.default_rng(kind).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    filters = [1] * 256
    filters[row] = kind
    png = encode(image, filters)
    assert decode_png(png) is None
    assert np.array_equal(opencv(png), image)  # the encoder here is right: OpenCV reads the same pixels


def die_png() -> bytes:
    return encode(np.random.default_rng(7).integers(0, 256, (6, 5, 3), dtype=np.uint8), [1] * 6)


def with_idat(png: bytes, stream: bytes) -> bytes:
    """``png`` with its IDAT data replaced by ``stream``."""
    start = png.index(b"IDAT") - 4
    end = png.index(b"IEND") - 4
    return png[:start] + chunk(b"IDAT", stream) + png[end:]


def bad_crc(png: bytes) -> bytes:
    at = png.index(b"IDAT") + 4  # the first byte of the IDAT data
    return png[:at] + bytes([png[at] ^ 1]) + png[at + 1 :]


STREAM = zlib.compress(filtered_rows(np.random.default_rng(7).integers(0, 256, (6, 5, 3), dtype=np.uint8), [1] * 6))
OTHERS = {
    "not a png": b"GIF89a" + bytes(40),
    "a chunk's checksum": bad_crc(die_png()),
    "a stream cut short": with_idat(die_png(), STREAM[:-9]),
    "data past the stream's end": with_idat(die_png(), STREAM + b"more"),
    "more rows than the header says": with_idat(die_png(), zlib.compress(bytes(7 * 16))),
    "a stream that inflates far past its rows": with_idat(die_png(), zlib.compress(bytes(50_000_000))),
    "not zlib at all": with_idat(die_png(), b"\x00" * 40),
    "no IEND": die_png()[:-12],
    "IDAT before IHDR": b"\x89PNG\r\n\x1a\n" + chunk(b"IDAT", STREAM) + ihdr(6, 5, 2) + chunk(b"IEND", b""),
    "16-bit": b"\x89PNG\r\n\x1a\n" + ihdr(6, 5, 2, depth=16) + chunk(b"IDAT", STREAM) + chunk(b"IEND", b""),
    "interlaced": b"\x89PNG\r\n\x1a\n" + ihdr(6, 5, 2, interlace=1) + chunk(b"IDAT", STREAM) + chunk(b"IEND", b""),
    "RGBA": b"\x89PNG\r\n\x1a\n" + ihdr(6, 5, 6) + chunk(b"IDAT", STREAM) + chunk(b"IEND", b""),
    "a transparency chunk": encode(np.zeros((2, 2, 3), np.uint8), [0, 0], before=chunk(b"tRNS", bytes(6))),
    "a gamma chunk": encode(np.zeros((2, 2, 3), np.uint8), [0, 0], before=chunk(b"gAMA", struct.pack(">I", 45455))),
}


@pytest.mark.parametrize("case", OTHERS)
def test_other_or_damaged_pngs_are_left_to_opencv(case):
    assert decode_png(OTHERS[case]) is None


def header() -> FrameHeader:
    return FrameHeader("f", "T", "R", "L", "W", (0, 0), 0.0, "png", None, None, None)


@pytest.mark.parametrize("filters", [[1] * 256, [0, 2] * 128, [2] * 256, [4] * 256])
def test_the_daemon_gives_the_same_tensors_either_way(filters, monkeypatch):
    die = np.random.default_rng(len(set(filters))).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    png = encode(die, filters)
    quick = imaging.decode(header(), png, SIZE, 10**7, resize=False)
    monkeypatch.setattr(imaging, "decode_png", lambda payload: None)
    slow = imaging.decode(header(), png, SIZE, 10**7, resize=False)
    assert not isinstance(quick, Rejected) and not isinstance(slow, Rejected)
    assert np.array_equal(quick.rgb, slow.rgb) and np.array_equal(quick.grey, slow.grey) and quick.png == slow.png
    assert np.array_equal(quick.rgb, die.transpose(2, 0, 1))


def test_a_damaged_die_is_still_refused_by_opencv():
    out = imaging.decode(header(), bad_crc(encode(np.zeros((*SIZE, 3), np.uint8), [1] * 256)), SIZE, 10**7, False)
    assert isinstance(out, Rejected) and out.reason == "undecodable"
