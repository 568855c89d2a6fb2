"""PNG the quick way for the usual die: 8-bit RGB or grey, not interlaced, rows filtered None, Sub or Up. Most of the
cost of a PNG is its deflate stream, and ISA-L (``isal``) inflates a 140 kB die in about 0.4 ms where the zlib OpenCV
links takes about 1.0 ms, and deflates it (level 1) in about 0.6 ms where OpenCV's encoder takes several ms.

``decode_png`` reads such a die and undoes its filters in a few whole-array NumPy steps. Any other PNG, or anything
unexpected in this one (a bad checksum, a chunk that could change the pixels, a stream too short or too long), gives
None and the caller decodes it with OpenCV, so what the models receive never depends on which way a frame went.
``encode_png`` writes a die as a standard PNG (every row Sub, as OpenCV's encoder does) that any reader takes. The
only module that imports isal."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import cast

import numpy as np
import numpy.typing as npt
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 1  # ISA-L's deflate level for encode_png: a die within 2% of OpenCV's level-1 file, about 13x quicker
# chunks that say nothing about the pixels: a PNG with any other besides IHDR, IDAT and IEND goes to OpenCV
INFORMATIONAL = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"})
CHANNELS = {0: 1, 2: 3}  # colour types taken: grey, RGB (8 bits each)
NONE, SUB, UP = 0, 1, 2
INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)  # isal's stub types it as an instance, not a class
FIRST_BYTES = 32 * 1024  # inflated first, its rows' filters checked before the rest is


def decode_png(data: bytes) -> npt.NDArray[np.uint8] | None:
    """The image of an 8-bit RGB (H, W, 3, in R, G, B order) or grey (H, W) PNG whose rows are filtered None, Sub or
    Up; None for any other PNG or payload. The caller has checked the dimensions against its pixel limit."""
    parts = _chunks(data)
    if parts is None:
        return None
    height, width, channels, idat = parts
    raw = _inflate(idat, width * channels + 1, height)
    if raw is None:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, width * channels + 1)
    image = _unfilter(rows[:, 1:].reshape(height, width, channels), rows[:, 0])
    return image[:, :, 0] if channels == 1 else image


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """An 8-bit RGB (H, W, 3, in R, G, B order) or grey (H, W) image as PNG bytes, every row filtered Sub (each byte
    less the one a pixel to its left); ``ValueError`` for an image of another kind."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"a PNG takes 8-bit RGB (H, W, 3) or grey (H, W), not {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"a PNG has at least one pixel, not {image.shape}")
    channels = 1 if image.ndim == 2 else 3
    pixels = np.ascontiguousarray(image).reshape(height, width * channels)
    rows = np.empty((height, width * channels + 1), np.uint8)
    rows[:, 0] = SUB
    rows[:, 1 : channels + 1] = pixels[:, :channels]
    np.subtract(pixels[:, channels:], pixels[:, :-channels], out=rows[:, channels + 1 :])  # uint8: modulo 256
    return b"".join((
        SIGNATURE,
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)),
        _chunk(b"IDAT", isal_zlib.compress(rows, LEVEL)),
        _chunk(b"IEND", b""),
    ))  # fmt: skip


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", isal_zlib.crc32(body, isal_zlib.crc32(kind)))


def _inflate(stream: bytes, stride: int, height: int) -> bytes | None:
    """The ``height`` scanlines of ``stride`` bytes the zlib ``stream`` holds, exactly; None when it holds fewer or
    more, is damaged, or a row is filtered Average or Paeth (each byte of such a row waits on the one before it).
    Inflated in two calls: the first ``FIRST_BYTES`` (most encoders that filter Average or Paeth do so from the second
    row, so such a PNG costs that piece, not all), then the rest at once. Each call lets go of the interpreter lock
    and takes it back; with the event loop busy, taking it back costs more CPU than the inflate of a piece."""
    inflater, need = isal_zlib.decompressobj(), height * stride
    try:
        head = inflater.decompress(stream, min(need, FIRST_BYTES))
        if not head or not _plain(head, stride):
            return None
        # room for one byte more than the rows: a stream that holds more shows it, one that holds them ends here
        raw = head + inflater.decompress(inflater.unconsumed_tail, need + 1 - len(head))
    except INFLATE_ERROR:  # a damaged stream
        return None
    if len(raw) != need or not inflater.eof or inflater.unused_data or not _plain(raw, stride):
        return None
    return raw


def _plain(raw: bytes, stride: int) -> bool:
    """Whether every whole row in ``raw`` is filtered None, Sub or Up."""
    return max(raw[: len(raw) // stride * stride : stride], default=NONE) <= UP


def walk(data: bytes) -> Iterator[tuple[bytes, memoryview, int]]:
    """Each chunk after the signature whose bytes all lie in ``data``: (type, body, stored CRC), in order; the walk
    stops at the first chunk that runs past the end."""
    view, offset = memoryview(data), len(SIGNATURE)
    while offset + 12 <= len(data):
        length, kind = struct.unpack(">I4s", view[offset : offset + 8])
        end = offset + 12 + length
        if end > len(data):
            return
        (crc,) = struct.unpack(">I", view[end - 4 : end])
        yield kind, view[offset + 8 : end - 4], crc
        offset = end


def _chunks(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(height, width, channels, the IDAT data joined) of a PNG this module decodes, each chunk's CRC checked."""
    if not data.startswith(SIGNATURE):
        return None
    header, idat = None, []
    for kind, body, crc in walk(data):
        if isal_zlib.crc32(body, isal_zlib.crc32(kind)) != crc:
            return None
        if kind == b"IHDR":
            if header is not None or len(body) != 13:
                return None
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in CHANNELS or (compression, filtering, interlace) != (0, 0, 0):
                return None
            if width == 0 or height == 0:
                return None
            header = (height, width, CHANNELS[colour])
        elif header is None:  # IHDR comes first
            return None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            return (*header, b"".join(idat)) if idat else None
        elif kind not in INFORMATIONAL:
            return None
    return None


def _unfilter(filtered: npt.NDArray[np.uint8], filters: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Rows back from their None, Sub or Up filters (PNG's arithmetic is modulo 256: NumPy's uint8 wraps alike).
    Sub adds the pixel to the left: a running sum along the row. Up adds the row above: a running sum down each
    run of Up rows, plus the row before the run."""
    sub = filters == SUB
    if sub.all():  # OpenCV's encoder: every row Sub, one pass
        return np.cumsum(filtered, axis=1, dtype=np.uint8)
    image = np.array(filtered)  # contiguous, writable
    if sub.any():
        image[sub] = np.cumsum(filtered[sub], axis=1, dtype=np.uint8)
    up = np.flatnonzero(filters == UP)
    if up.size:
        breaks = np.flatnonzero(np.diff(up) != 1)
        for start, stop in zip(up[np.r_[0, breaks + 1]], up[np.r_[breaks, up.size - 1]] + 1, strict=True):
            run = np.cumsum(image[start:stop], axis=0, dtype=np.uint8)
            if start > 0:
                run += image[start - 1]
            image[start:stop] = run
    return image
