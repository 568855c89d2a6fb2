"""The rule that turns a die image into the models' input tensors, the same in training and in serving (pure).

1. Depth: a 16-bit image keeps its top 8 bits (``value >> 8``); an 8-bit one is as it is.
2. Channels: a grey image (2-D, or one channel) is repeated into RGB; RGB stays RGB (channel order R, G, B).
3. Size: an image of the models' size is as it is. Any other is scaled by the one factor that fits it whole
   inside the models' size (the aspect ratio kept: INTER_AREA when shrinking, INTER_LINEAR when enlarging), then
   padded to that size on both sides equally (the odd pixel at the bottom or right) by repeating its border rows
   and columns, so the padding adds no edge of its own.
4. The grey tensor is the RGB one converted by OpenCV's RGB-to-grey weights.
"""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from edge.flow import Tensors

Image = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


def from_opencv(image: Image) -> Image:
    """An image as OpenCV decodes it (colour as BGR or BGRA) in RGB order, without an alpha channel; grey as is."""
    if image.ndim == 3 and image.shape[2] == 4:
        return cast("Image", cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
    if image.ndim == 3 and image.shape[2] == 3:
        return cast("Image", cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return image


def read(path: str) -> Image:
    """The image file at ``path`` as the rule takes it (RGB or grey, its own depth); ``ValueError`` if unreadable."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read an image from {path}")
    return from_opencv(cast("Image", image))


def unusable(image: npt.NDArray[np.generic]) -> str | None:
    """Why the rule cannot take ``image`` (its depth or its channels); None when it can."""
    if image.dtype not in (np.uint8, np.uint16):
        return f"{image.dtype} pixels: 8- or 16-bit only"
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else 0)
    if channels not in (1, 3):
        return f"{channels} channels: grey or RGB only"
    return None


def to_eight_bit_rgb(image: Image) -> npt.NDArray[np.uint8]:
    """Steps 1 and 2: (H, W, 3) uint8 RGB; ``ValueError`` saying why for an image the rule cannot take."""
    reason = unusable(image)
    if reason is not None:
        raise ValueError(reason)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 3:
        image = image if image.shape[2] == 3 else image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return cast("npt.NDArray[np.uint8]", image)


def fit(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """Step 3: ``rgb`` (H, W, 3) at ``size`` (height, width)."""
    h, w = rgb.shape[:2]
    if (h, w) == size:
        return rgb
    scale = min(size[0] / h, size[1] / w)
    inner = (min(size[0], max(1, round(h * scale))), min(size[1], max(1, round(w * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(rgb, (inner[1], inner[0]), interpolation=interpolation)
    top, left = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
    padded = cv2.copyMakeBorder(scaled, top, size[0] - inner[0] - top, left, size[1] - inner[1] - left,
                                cv2.BORDER_REPLICATE)  # fmt: skip
    return cast("npt.NDArray[np.uint8]", padded)


def model_input(image: Image, size: tuple[int, int]) -> Tensors:
    """The whole rule: the (3, H, W) RGB and (1, H, W) grey uint8 tensors of ``image`` at ``size``."""
    rgb = np.ascontiguousarray(fit(to_eight_bit_rgb(image), size))
    grey = cast("npt.NDArray[np.uint8]", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return Tensors(rgb=_planes(rgb, (0, 1, 2)), grey=grey[None])


def opencv_input(decoded: Image, size: tuple[int, int]) -> Tensors:
    """``model_input(from_opencv(decoded), size)`` for an image as OpenCV decodes it; the usual frame (8-bit BGR at
    the models' size) goes straight to the tensors, without an RGB copy between."""
    if decoded.dtype == np.uint8 and decoded.shape == (*size, 3):
        bgr = cast("npt.NDArray[np.uint8]", decoded)
        grey = cast("npt.NDArray[np.uint8]", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        return Tensors(rgb=_planes(bgr, (2, 1, 0)), grey=grey[None])
    return model_input(from_opencv(decoded), size)


def _planes(image: npt.NDArray[np.uint8], into: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """The (3, H, W) planes of an (H, W, 3) image, its channel c becoming plane ``into[c]``. OpenCV splits them
    straight into the one array: one copy, not a split and a stack (and far quicker than NumPy's transposed copy)."""
    planes = np.empty((3, *image.shape[:2]), np.uint8)
    cv2.split(image, [planes[i] for i in into])
    return planes
