"""What a training batch of a fab's dies is drawn from and how it is varied (pure torch and numpy).

Sampling: each die is drawn with a weight of ``1 / n_class ** BALANCE_POWER``, so a class holds a share of every
epoch proportional to the square root of its count: a 1.5% class (about 30 training dies in 3,000) is seen about
seven times less often than GOOD instead of fifty-five times, without repeating its few dies so often that the model
learns them by heart.

Augmentations are the variations an AOI tool really produces between two images of the same die, and none that
could turn one class into another: a global gain and offset (lamp ageing, exposure), a slight defocus blur, sensor
noise, and a stage offset of a few pixels (the border repeated, as the serving rule pads). No flips or rotations:
a die's layout has an orientation, and a mirrored line can look like a bridge or an open in the wrong place. No
local colour or contrast change: a local tint is what some classes are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

BALANCE_POWER = 0.5


def sample_weights(labels: npt.NDArray[np.int64], n_classes: int, power: float = BALANCE_POWER) -> npt.NDArray:
    """Per die, the probability of drawing it: ``1 / count(its class) ** power``, normalised."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = 1.0 / np.maximum(counts[labels], 1.0) ** power
    return weights / weights.sum()


def epoch_indices(
    weights: npt.NDArray, batch: int, rng: np.random.Generator, most: int | None = None
) -> list[npt.NDArray[np.int64]]:
    """One epoch of batches (as many dies as there are weights, at most ``most``, whole batches only), drawn with
    replacement."""
    n = (min(len(weights), most or len(weights)) // batch) * batch
    draws = rng.choice(len(weights), size=n, replace=True, p=weights)
    return [draws[i : i + batch] for i in range(0, n, batch)]


@dataclass(frozen=True)
class Variation:
    """How far each augmentation goes; ``VAE`` is milder (the anomaly model learns what normal looks like, so it
    should not learn that a blurred or noisy die is normal)."""

    gain: float = 0.12  # multiplicative, +-
    offset: float = 10.0  # grey levels, +-
    blur: float = 0.3  # probability of a Gaussian defocus (sigma 0.4..1.0 px)
    noise: float = 4.0  # grey levels: the largest standard deviation of added Gaussian noise
    shift: int = 6  # pixels, +- in each direction


CLASSIFIER = Variation()
VAE = Variation(gain=0.05, offset=4.0, blur=0.0, noise=0.0, shift=3)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per image a separable 5-tap Gaussian with that image's ``sigma`` (B,), borders repeated."""
    taps = torch.arange(-2, 3, dtype=images.dtype)
    kernel = torch.exp(-(taps[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 5)
    b, c, h, w = images.shape
    x = F.pad(images.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
    k = kernel.repeat_interleave(c, dim=0)  # (B*C, 5)
    x = F.conv2d(x, k.view(b * c, 1, 1, 5), groups=b * c)
    x = F.conv2d(x, k.view(b * c, 1, 5, 1), groups=b * c)
    return x.view(b, c, h, w)


def _shift(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, most: int) -> torch.Tensor:
    """Each image moved by (dx, dy) pixels, the uncovered border filled by repeating the edge."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (most, most, most, most), mode="replicate")
    return torch.stack(
        [padded[i, :, most + int(y) : most + int(y) + h, most + int(x) : most + int(x) + w] for i, (x, y) in
         enumerate(zip(dx, dy, strict=True))]
    )  # fmt: skip


def augment(
    images: torch.Tensor, gen: torch.Generator, how: Variation = CLASSIFIER, photometric: int | None = None
) -> torch.Tensor:
    """UINT8 dies (B, C, H, W) -> varied dies as float grey levels 0..255, rounded as a camera would quantise.
    ``photometric``: only the first that many channels get gain, blur and noise (the others, maps derived from the
    die, only move with it); None: all of them."""
    b = images.shape[0]
    x = images.float()

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=gen)

    if how.shift:
        dx = torch.randint(-how.shift, how.shift + 1, (b,), generator=gen)
        dy = torch.randint(-how.shift, how.shift + 1, (b,), generator=gen)
        x = _shift(x, dx, dy, how.shift)
    x, derived = (x, x[:, :0]) if photometric is None else (x[:, :photometric], x[:, photometric:])
    if how.blur:
        blurred = _blur(x, uniform(0.4, 1.0))
        x = torch.where((torch.rand(b, generator=gen) < how.blur).view(b, 1, 1, 1), blurred, x)
    x = x * uniform(1 - how.gain, 1 + how.gain).view(b, 1, 1, 1) + uniform(-how.offset, how.offset).view(b, 1, 1, 1)
    if how.noise:
        x = x + torch.randn(x.shape, generator=gen) * uniform(0.0, how.noise).view(b, 1, 1, 1)
    return torch.cat([x.clamp(0.0, 255.0).round(), derived], dim=1)
