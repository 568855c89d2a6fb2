"""Evaluation metrics against hand-computed values."""

import numpy as np
import pytest

from tools.metrics import auprc, auroc, fnr_at_fpr


def test_auroc_and_auprc_by_hand() -> None:
    scores, positive = np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0], bool)
    assert auroc(scores, positive) == pytest.approx(0.75)
    assert auprc(scores, positive) == pytest.approx((1.0 + 2 / 3) / 2)
    assert auprc(np.ones(4), positive) == pytest.approx(0.5)  # one tied operating point: the prevalence


def test_auprc_at_another_prevalence() -> None:
    scores, positive = np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0], bool)
    # each negative counted 3 times: precision at the second positive is 2 / (2 + 3)
    assert auprc(scores, positive, negative_weight=3.0) == pytest.approx((1.0 + 2 / 5) / 2)


def test_fnr_at_fpr() -> None:
    negatives, positives = np.arange(100.0), np.array([50.0, 96.0, 99.5, 200.0])
    scores = np.r_[negatives, positives]
    positive = np.r_[np.zeros(100, bool), np.ones(4, bool)]
    fnr, threshold = fnr_at_fpr(scores, positive, 0.05)
    assert threshold == 95.0 and (negatives > threshold).mean() <= 0.05
    assert fnr == pytest.approx(0.25)  # only the 50.0 positive is missed
