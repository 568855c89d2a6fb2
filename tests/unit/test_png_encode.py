"""The PNG writer (edge.png.encode_png): whatever 8-bit RGB or grey image it is given, OpenCV's reader and the quick
decoder both give back exactly its pixels; any other image is refused with the reason."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge.capture.store import encode_png as encode_die
from edge.errors import CaptureError
from edge.png import decode_png, encode_png

images = st.one_of(
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3))),
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))),
)


def read_with_opencv(data: bytes) -> npt.NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image if image.ndim == 2 else image[:, :, ::-1]  # BGR to RGB


@settings(max_examples=150, deadline=None)
@given(images)
def test_every_image_reads_back_exactly_with_opencv_and_the_quick_decoder(image: npt.NDArray[np.uint8]) -> None:
    data = encode_png(image)
    assert np.array_equal(read_with_opencv(data), image)
    quick = decode_png(data)
    assert quick is not None and np.array_equal(quick, image)


def test_a_noisy_die_is_about_as_small_as_opencvs_own_file() -> None:
    rng = np.random.default_rng(7)
    die = np.clip(rng.normal(128, 12, (256, 256, 3)) + np.linspace(0, 60, 256)[None, :, None], 0, 255).astype(np.uint8)
    ok, theirs = cv2.imencode(".png", die[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    ours = encode_png(die)
    assert len(ours) < 1.05 * len(theirs) and len(ours) < 0.8 * die.nbytes
    assert np.array_equal(read_with_opencv(ours), die)


def test_a_strided_view_is_encoded_as_its_pixels() -> None:
    chw = np.random.default_rng(3).integers(0, 256, (3, 20, 30), dtype=np.uint8)  # the models' (3, H, W) layout
    assert np.array_equal(read_with_opencv(encode_die(chw)), chw.transpose(1, 2, 0))


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.zeros((4, 4, 3), np.uint16), "8-bit"),
        (np.zeros((4, 4, 4), np.uint8), "RGB"),
        (np.zeros((4, 4, 3, 1), np.uint8), "RGB"),
        (np.zeros((0, 4, 3), np.uint8), "at least one pixel"),
        (np.zeros((4, 0), np.uint8), "at least one pixel"),
    ],
)
def test_other_images_are_refused_with_the_reason(image: npt.NDArray[np.uint8], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        encode_png(image)


@pytest.mark.parametrize(
    "die", [np.zeros((3, 4, 4), np.float32), np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), np.uint8)]
)
def test_the_capture_store_turns_a_refusal_into_its_own_error(die: npt.NDArray[np.uint8]) -> None:
    with pytest.raises(CaptureError, match="cannot encode a die of shape"):
        encode_die(die)
