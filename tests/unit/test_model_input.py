"""The image rule training and serving share (edge.contract.images): depth, channels, size with the aspect ratio
kept and a replicated border, and the daemon's decode applying exactly that rule to 8- and 16-bit PNGs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.contract.images import fit, model_input, to_eight_bit_rgb
from edge.flow import FrameHeader, Rejected
from edge.ingest.imaging import decode

SIZE = (256, 256)


def ramp(h: int, w: int) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)


def test_an_image_of_the_models_size_passes_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    out = model_input(rgb, SIZE)
    assert np.array_equal(out.rgb, rgb.transpose(2, 0, 1))
    assert np.array_equal(out.grey[0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_sixteen_bits_keep_their_top_eight_and_grey_becomes_rgb():
    grey16 = np.array([[0, 255, 256, 65535]], np.uint16)
    rgb = to_eight_bit_rgb(grey16)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 255] and np.array_equal(rgb[..., 0], rgb[..., 2])
    grey = ramp(*SIZE)
    assert np.array_equal(model_input(grey, SIZE).grey[0], grey)  # a grey die's grey tensor is itself


@pytest.mark.parametrize("image", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.float32)])
def test_other_channel_counts_and_depths_are_refused(image):
    with pytest.raises(ValueError, match="only"):
        to_eight_bit_rgb(image)


def test_another_aspect_is_scaled_whole_and_padded_by_its_border():
    rgb = to_eight_bit_rgb(ramp(240, 320))
    out = fit(rgb, SIZE)  # scale 0.8: 192 x 256 inside, 32 rows of padding above and below
    inner = cv2.resize(rgb, (256, 192), interpolation=cv2.INTER_AREA)
    assert out.shape == (*SIZE, 3)
    assert np.array_equal(out[32:224], inner)
    assert all(np.array_equal(out[r], inner[0]) for r in range(32))
    assert all(np.array_equal(out[r], inner[-1]) for r in range(224, 256))


def test_a_small_image_is_enlarged_without_padding_when_square():
    rgb = to_eight_bit_rgb(ramp(100, 100))
    assert np.array_equal(fit(rgb, SIZE), cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_LINEAR))


def header(encoding: str = "png") -> FrameHeader:
    return FrameHeader("f", "T", "R", "L", "W", (0, 0), 0.0, encoding, None, None, None)


@pytest.mark.parametrize(("image", "shape"), [
    (np.random.default_rng(1).integers(0, 65536, (240, 320), dtype=np.uint16), (240, 320)),  # 16-bit grey
    (np.random.default_rng(2).integers(0, 256, (300, 200, 3), dtype=np.uint8), (300, 200)),  # 8-bit colour
    (np.random.default_rng(3).integers(0, 256, (*SIZE, 3), dtype=np.uint8), SIZE),  # the usual die: straight from BGR
    (np.random.default_rng(4).integers(0, 65536, (*SIZE, 3), dtype=np.uint16), SIZE),  # 16-bit colour at size
])  # fmt: skip
def test_the_daemon_decodes_by_the_same_rule(image, shape):
    ok, png = cv2.imencode(".png", image)
    assert ok
    out = decode(header(), png.tobytes(), SIZE, 10**7, resize=True)
    assert not isinstance(out, Rejected)
    as_rgb = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # imencode took it as BGR
    expected = model_input(as_rgb, SIZE)
    assert np.array_equal(out.rgb, expected.rgb) and np.array_equal(out.grey, expected.grey)
    if shape != SIZE:
        refused = decode(header(), png.tobytes(), SIZE, 10**7, resize=False)
        assert isinstance(refused, Rejected) and refused.reason == "wrong_dimensions"


def test_an_alpha_channel_is_dropped_in_serving():
    bgra = np.zeros((*SIZE, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 200, 17  # red, mostly transparent
    ok, png = cv2.imencode(".png", bgra)
    assert ok
    out = decode(header(), png.tobytes(), SIZE, 10**7, resize=False)
    assert not isinstance(out, Rejected) and out.rgb[0].min() == 200 and out.rgb[1:].max() == 0
    assert out.png is None  # the tool's PNG is not the die the models saw (it has an alpha channel): not kept
