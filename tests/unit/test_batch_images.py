"""A batch's images as the daemon holds them (edge.inference.inputs.Images): the frames' own tensors, stacked once
where they are sent, the same array whichever way."""

from __future__ import annotations

import numpy as np
import pytest

from edge.inference.inputs import Images


def frames(n: int, channels: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (channels, 6, 5), dtype=np.uint8) for _ in range(n)]


def test_frames_stack_into_a_new_array_or_straight_into_the_one_given() -> None:
    parts = frames(4)
    images = Images(parts)
    assert len(images) == 4 and images.shape == (4, 3, 6, 5) and images.nbytes == 4 * 3 * 6 * 5
    np.testing.assert_array_equal(images.stacked(), np.stack(parts))
    region = np.full((4, 3, 6, 5), 7, np.uint8)
    assert images.stacked(out=region) is region
    np.testing.assert_array_equal(region, np.stack(parts))


def test_a_batch_that_is_one_array_is_sent_as_it_is_and_copied_only_into_a_region() -> None:
    batch = np.stack(frames(3, channels=1))
    images = Images.of(batch)
    assert images.stacked() is batch and images.shape == batch.shape and images.nbytes == batch.nbytes
    region = np.zeros_like(batch)
    assert images.stacked(out=region) is region
    np.testing.assert_array_equal(region, batch)
    with pytest.raises(ValueError, match="does not fit"):
        images.stacked(out=np.zeros((4, 1, 6, 5), np.uint8))


def test_a_take_keeps_the_rows_asked_for_in_their_order() -> None:
    parts = frames(5)
    for images in (Images(parts), Images.of(np.stack(parts))):
        np.testing.assert_array_equal(images.take([3, 0]).stacked(), np.stack([parts[3], parts[0]]))


def test_frames_of_another_shape_do_not_stack() -> None:
    with pytest.raises(ValueError):
        Images([*frames(2), np.zeros((3, 6, 4), np.uint8)]).stacked()
    with pytest.raises(ValueError):
        Images(frames(2)).stacked(out=np.zeros((3, 3, 6, 5), np.uint8))
