"""What the two training runs share: seeds, data budgets, the held-out split, batching and logging."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge.taxonomy import DEFAULT_CLASSES, GOOD
from tools.synth import Dataset, make_dataset

TRAIN_SEED, HELDOUT_SEED, BANDS_SEED = 1, 1001, 2001  # TRAIN_SEED: the reference models' seed
TRAIN_SEEDS = range(1, 1000)  # training seeds stay clear of the held-out (1001, 2001), calibration and check seeds
VALIDATION_OFFSET = 5000  # a run's validation dies (no optics shift) come from seed VALIDATION_OFFSET + its seed
HELDOUT_SHIFT = 1.0  # held-out dies are seen through slightly moved tool optics (tools.synth_render.tool_optics)
GOOD_WEIGHT = 3.0  # GOOD is drawn this many times as often as each defect class (half of them cosmetic)
# The training mix draws DISCOLOR, the one class whose truth depends on the process log (the same look on a normal
# wafer is cosmetic, GOOD), 2.5 times as often as another defect class: at equal shares the model had to learn the
# look and the excursion together from a twentieth of the dies, and DISCOLOR called GOOD made 6 of its 8 escapes.
TRAINING_EXTRA = {"DISCOLOR": 2.5}
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


FULL = Budget(vae_train=1500, vae_epochs=12, cls_train=3200, cls_epochs=12, heldout=960, heldout_good=480)
QUICK = Budget(vae_train=600, vae_epochs=6, cls_train=960, cls_epochs=4, heldout=320, heldout_good=160)


@dataclass(frozen=True)
class Run:
    """One training run: ``seed`` draws the training dies, the initial weights and the batch order (the held-out
    split never changes, so runs of different seeds are measured on the same dies); ``baselines`` adds the
    comparison models of the cards (PCA, vision-only CNN), which the served models do not need."""

    seed: int = TRAIN_SEED
    baselines: bool = True

    def __post_init__(self) -> None:
        if self.seed not in TRAIN_SEEDS:
            raise ValueError(f"training seed {self.seed} outside {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1}")


def validation_seed(seed: int) -> int:
    """The seed of training run ``seed``'s validation dies: drawn like its training dies, never held out."""
    return VALIDATION_OFFSET + seed


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


def class_weights(training: bool = False) -> list[float]:
    """Sampling weights of the taxonomy's classes: the held-out mix, or with ``training`` the training mix."""
    extra = TRAINING_EXTRA if training else {}
    return [extra.get(c, GOOD_WEIGHT if c == GOOD else 1.0) for c in DEFAULT_CLASSES]


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
