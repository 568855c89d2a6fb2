"""Evaluation metrics in plain numpy: AUROC, AUPRC, FNR at a fixed FPR, anomaly bands, classification report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative (ties 1/2)."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1]):  # average ranks of ties
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(scores: np.ndarray, positive: np.ndarray, negative_weight: float = 1.0) -> float:
    """Area under the precision-recall curve as average precision: precision at each recall step, tied scores
    sharing one operating point. ``negative_weight`` counts each negative that many times, which restates the
    figure at another prevalence than the sample's."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, pos = scores[order], positive[order]
    tp, fp = np.cumsum(pos), np.cumsum(~pos) * negative_weight
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp_at, fp_at = tp[last_of_tie], fp[last_of_tie]
    new_tp = np.diff(np.r_[0, tp_at])
    return float(np.sum(new_tp * tp_at / (tp_at + fp_at)) / pos.sum())


def fnr_at_fpr(scores: np.ndarray, positive: np.ndarray, fpr: float = 0.05) -> tuple[float, float]:
    """(false-negative rate, threshold) with the threshold at the ``1 - fpr`` quantile of the negatives' scores,
    a positive counting as found when it scores strictly above it."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    threshold = float(np.quantile(scores[~positive], 1.0 - fpr, method="higher"))
    return float((scores[positive] <= threshold).mean()), threshold


def decision_bands(good_scores: np.ndarray, pass_quantile: float = 0.99, reject_margin: float = 1.25) -> dict:
    """PASS band at a high quantile of confirmed-good scores; REJECT band above every good score seen.

    ``reject_band`` = ``reject_margin`` x the largest good score, so a good frame essentially never lands there.
    """
    good_scores = np.asarray(good_scores, float)
    pass_band = float(np.quantile(good_scores, pass_quantile))
    return {"pass_band": pass_band, "reject_band": float(max(good_scores.max() * reject_margin, pass_band))}


def detection_report(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], bands: dict) -> dict:
    """Per class (GOOD included): fraction of dies scoring at or above each band."""
    report = {}
    for k, name in enumerate(classes):
        sel = labels == k
        if sel.any():
            report[name] = {
                "n": int(sel.sum()),
                "at_or_above_pass": round(float((scores[sel] >= bands["pass_band"]).mean()), 4),
                "at_or_above_reject": round(float((scores[sel] >= bands["reject_band"]).mean()), 4),
            }
    return report


def classification_report(pred: np.ndarray, labels: np.ndarray, classes: Sequence[str], good: int = 0) -> dict:
    """Accuracy, per-class recall, macro-F1, escape rate, false-positive rate and the confusion matrix."""
    n = len(classes)
    confusion = np.bincount(labels * n + pred, minlength=n * n).reshape(n, n)
    support, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    defect = labels != good
    return {
        "accuracy": round(float((pred == labels).mean()), 4),
        "macro_f1": round(float(f1[support > 0].mean()), 4),
        "escape_rate": round(float((pred[defect] == good).mean()), 4) if defect.any() else None,
        "false_positive_rate": round(float((pred[~defect] != good).mean()), 4) if (~defect).any() else None,
        "per_class_recall": {c: round(float(r), 4) for c, r, s in zip(classes, recall, support) if s > 0},
        "confusion_matrix": {"classes": list(classes), "rows_true_cols_pred": confusion.tolist()},
    }
