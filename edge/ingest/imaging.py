"""Image payloads to model tensors. Dimensions are read from the PNG/JPEG header and checked
against the limit before anything is decoded, so a decompression bomb costs nothing. The decoded image becomes
the models' input by the rule training applies too (``edge.contract.images``)."""

from __future__ import annotations

import dataclasses
import struct
from typing import cast

import cv2
import numpy as np

from edge.contract.images import Image, model_input, opencv_input
from edge.flow import FrameHeader, Rejected, Tensors
from edge.png import SIGNATURE, decode_png, walk

PNG_MAGIC = SIGNATURE
KEEP_PNG = 1 << 20  # a PNG up to this size is kept for the capture as it came (a bigger one carries more)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk, or None if it is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def png_chunks_complete(data: bytes) -> bool:
    """Whether every chunk of a PNG lies inside the payload, up to IEND. A chunk whose length runs past the end
    makes the decoder stall for about a second on a 100-byte payload; this walk refuses it in microseconds."""
    return any(kind == b"IEND" for kind, _, _ in walk(data))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's first start-of-frame marker, or None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width
        i += 2 + length
    return None


def decode(
    header: FrameHeader, payload: bytes, size: tuple[int, int], max_pixels: int, resize: bool
) -> Tensors | Rejected:
    """Decode a payload into the models' tensors, or a rejection with its reason."""
    opencv = False  # whether ``image`` is as OpenCV decodes (BGR), else RGB or grey
    if header.encoding == "raw":
        assert header.shape is not None  # wire.parse_frame guarantees it
        image: Image = np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)
    else:
        dims = png_size(payload) if header.encoding == "png" else jpeg_size(payload)
        if dims is None:
            return Rejected("undecodable", f"payload is not a {header.encoding} image", header.frame_id)
        if dims[0] * dims[1] > max_pixels:
            return Rejected(
                "image_too_large", f"image {dims[0]}x{dims[1]} is over {max_pixels} pixels", header.frame_id
            )
        if header.encoding == "png" and not png_chunks_complete(payload):
            return Rejected("undecodable", "png chunks run past the end of the payload", header.frame_id)
        quick = decode_png(payload) if header.encoding == "png" else None  # the usual die (edge.png)
        if quick is not None:
            image = quick
        else:  # IMREAD_UNCHANGED keeps a 16-bit PNG's depth for the rule; cv2's stub leaves out the None it returns
            decoded = cast("Image | None", cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_UNCHANGED))
            if decoded is None:
                return Rejected("undecodable", f"{header.encoding} payload could not be decoded", header.frame_id)
            image, opencv = decoded, True  # as OpenCV gives it: BGR(A) or grey
    if image.shape[:2] != size and not resize:
        return Rejected(
            "wrong_dimensions",
            f"image is {image.shape[0]}x{image.shape[1]}, models take {size[0]}x{size[1]}",
            header.frame_id,
        )
    try:  # edge.contract.images: the rule training applies too
        tensors = opencv_input(image, size) if opencv else model_input(image, size)
    except ValueError as err:
        return Rejected("undecodable", str(err), header.frame_id)
    if header.encoding == "png" and image.dtype == np.uint8 and image.shape == (*size, 3) and len(payload) <= KEEP_PNG:
        return dataclasses.replace(tensors, png=payload)  # 8-bit colour at the models' size: the rule changed nothing
    return tensors
