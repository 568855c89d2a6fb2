"""Image decoding: sizes read from headers before decoding; bombs and wrong sizes refused."""

import cv2
import numpy as np
import pytest

from edge.flow import FrameHeader, Rejected
from edge.ingest.imaging import decode, jpeg_size, png_size


def hdr(encoding, shape=None):
    return FrameHeader("f", "T", "R", "L", "W", (0, 0), 0.0, encoding, shape, None, None)


def encoded(ext, h, w, channels=3):
    image = np.random.default_rng(0).integers(0, 255, (h, w, channels), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return image, buf.tobytes()


def test_header_sizes_are_read_without_decoding():
    assert png_size(encoded(".png", 30, 70)[1]) == (30, 70)
    assert jpeg_size(encoded(".jpg", 40, 90)[1]) == (40, 90)
    assert png_size(b"not a png") is None and jpeg_size(b"\xff\xd8\xff") is None


def test_png_roundtrip_gives_rgb_channels_first_and_grey():
    bgr, data = encoded(".png", 256, 256)
    out = decode(hdr("png"), data, (256, 256), 10**7, resize=False)
    assert not isinstance(out, Rejected)
    assert out.rgb.shape == (3, 256, 256) and out.grey.shape == (1, 256, 256)
    assert np.array_equal(out.rgb[0], bgr[:, :, 2])  # channel 0 is red


def test_grey_raw_frame_is_expanded_to_three_channels():
    raw = np.arange(256 * 256, dtype=np.uint32).astype(np.uint8).tobytes()
    out = decode(hdr("raw", (256, 256)), raw, (256, 256), 10**7, resize=False)
    assert out.rgb.shape == (3, 256, 256) and np.array_equal(out.rgb[0], out.rgb[2])


def test_decompression_bomb_is_refused_from_its_header():
    # A 20000 x 20000 PNG of zeros compresses to a few hundred kB; only its header is read.
    ihdr_only = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    out = decode(hdr("png"), ihdr_only + b"\x00" * 64, (256, 256), 4096 * 4096, resize=False)
    assert isinstance(out, Rejected) and out.reason == "image_too_large"


@pytest.mark.parametrize(
    ("encoding", "payload", "reason"),
    [
        ("png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "undecodable"),
        ("jpeg", b"GIF89a....", "undecodable"),
    ],
)
def test_garbage_is_undecodable(encoding, payload, reason):
    out = decode(hdr(encoding), payload, (256, 256), 10**7, resize=False)
    assert isinstance(out, Rejected) and out.reason == reason


def test_wrong_dimensions_rejected_unless_resizing():
    _, data = encoded(".png", 128, 128)
    assert decode(hdr("png"), data, (256, 256), 10**7, resize=False).reason == "wrong_dimensions"
    out = decode(hdr("png"), data, (256, 256), 10**7, resize=True)
    assert out.rgb.shape == (3, 256, 256)


def test_a_png_that_is_the_models_input_is_kept_for_the_capture_and_others_are_not():
    _, data = encoded(".png", 256, 256)
    kept = decode(hdr("png"), data, (256, 256), 10**7, resize=False)
    assert kept.png == data  # 8-bit RGB at the models' size: decoding it again gives exactly these pixels
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].transpose(2, 0, 1)
    assert np.array_equal(pixels, kept.rgb)
    _, grey = encoded(".png", 256, 256, channels=1)
    _, small = encoded(".png", 128, 128)
    _, jpeg = encoded(".jpg", 256, 256)
    assert decode(hdr("png"), grey, (256, 256), 10**7, resize=False).png is None  # the rule made it RGB
    assert decode(hdr("png"), small, (256, 256), 10**7, resize=True).png is None  # the rule resized it
    assert decode(hdr("jpeg"), jpeg, (256, 256), 10**7, resize=False).png is None
    raw = bytes(256 * 256 * 3)
    assert decode(hdr("raw", (256, 256, 3)), raw, (256, 256), 10**7, resize=False).png is None
