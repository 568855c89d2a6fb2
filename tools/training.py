"""What the two training runs share: seeds, data budgets, the held-out split, batching and logging."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge.taxonomy import DEFAULT_CLASSES, GOOD
from tools.synth import Dataset, make_dataset

TRAIN_SEED, HELDOUT_SEED, BANDS_SEED = 1, 1001, 2001
HELDOUT_SHIFT = 1.0  # held-out dies are seen through slightly moved tool optics (tools.synth_render.tool_optics)
GOOD_WEIGHT = 3.0  # GOOD is drawn this many times as often as each defect class (half of them cosmetic)
THREADS = 2  # torch threads, and processes that render synthetic data


@dataclass(frozen=True)
class Budget:
    """Data sizes and epochs. ``FULL`` is what the model cards report; ``QUICK`` trains the same architectures on
    less data for tests."""

    vae_train: int  # GOOD dies for the VAE (and the PCA baseline)
    vae_epochs: int
    cls_train: int  # dies for the classifier and the CNN baseline
    cls_epochs: int
    heldout: int  # held-out dies, all classes
    heldout_good: int  # held-out GOOD dies that set the anomaly bands


FULL = Budget(vae_train=1500, vae_epochs=12, cls_train=3200, cls_epochs=8, heldout=960, heldout_good=480)
QUICK = Budget(vae_train=600, vae_epochs=6, cls_train=960, cls_epochs=4, heldout=320, heldout_good=160)


def log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def batches(n: int, size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches over ``n`` items in order; with ``rng`` (training) shuffled, dropping the last partial batch."""
    if rng is None:
        yield from (np.arange(start, min(start + size, n)) for start in range(0, n, size))
        return
    order = rng.permutation(n)
    for start in range(0, n - size + 1, size):
        yield order[start : start + size]


def class_weights() -> list[float]:
    """Sampling weights of the taxonomy's classes in the training and held-out mixes."""
    return [GOOD_WEIGHT if c == GOOD else 1.0 for c in DEFAULT_CLASSES]


class HeldOut:
    """Held-out datasets from seeds never trained on, generated on first use and shared between the models."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._mixed: Dataset | None = None
        self._good: Dataset | None = None

    @property
    def mixed(self) -> Dataset:
        if self._mixed is None:
            self._mixed = make_dataset(
                HELDOUT_SEED, self.budget.heldout, shift=HELDOUT_SHIFT, class_weights=class_weights(), workers=THREADS
            )
        return self._mixed

    @property
    def good(self) -> Dataset:
        if self._good is None:
            self._good = make_dataset(
                BANDS_SEED, self.budget.heldout_good, classes=(GOOD,), shift=HELDOUT_SHIFT, workers=THREADS
            )
        return self._good
