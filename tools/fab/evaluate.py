"""The figures of a model trained on a fab's data, measured on its ``test`` split (pure).

Classifier: accuracy, macro-F1, per-class recall and precision, escape rate (a defect called GOOD) and false-positive
rate (GOOD called a defect), over the whole split, per tool and per recipe, and again with the process log marked
missing on every die. A class is told apart only with the log (an excursion-only class and its cosmetic twin on
GOOD dies) when, without the log, its recall falls by ``LOG_DEPENDENT_DROP`` or more, or it takes in GOOD dies
numbering ``LOG_DEPENDENT_DROP`` or more of its own support (the cosmetic twins, called the defect once the log
that clears them is gone).

Anomaly: AUROC of SCORE for defect dies against GOOD dies, over every defect class and over the classes the image
shows (the log-dependent classes left out: their look is also on GOOD dies, and only the log tells them apart,
which is the classifier's job), and per band the share of GOOD and defect dies at or above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tools.metrics import auroc, classification_report

LOG_DEPENDENT_DROP = 0.3
HEADLINE = ("accuracy", "macro_f1", "escape_rate", "false_positive_rate")


def classifier_report(pred: npt.NDArray[np.int64], labels: npt.NDArray[np.int64], classes: Sequence[str]) -> dict:
    """``tools.metrics.classification_report`` with per-class precision and support added."""
    report = classification_report(pred, labels, classes)
    confusion = np.array(report["confusion_matrix"]["rows_true_cols_pred"])
    predicted, support = confusion.sum(0), confusion.sum(1)
    report["per_class_precision"] = {
        c: round(float(confusion[k, k] / predicted[k]), 4) for k, c in enumerate(classes) if predicted[k] > 0
    }
    report["support"] = {c: int(support[k]) for k, c in enumerate(classes)}
    return report


def _groups(names: Sequence[str], index: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.bool_]]:
    return {name: index == k for k, name in enumerate(names) if (index == k).any()}


def _headline(report: dict) -> dict:
    return {k: report[k] for k in (*HEADLINE, "per_class_recall")} | {"n": int(sum(report["support"].values()))}


def classifier_figures(
    probs: npt.NDArray[np.float32], probs_no_log: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
    classes: Sequence[str], groups: dict[str, tuple[Sequence[str], npt.NDArray[np.int64]]],
) -> dict[str, Any]:  # fmt: skip
    """``groups``: e.g. {"tool": (tool ids, index per die), "recipe": (...)}."""
    pred, pred_no_log = probs.argmax(1), probs_no_log.argmax(1)
    overall = classifier_report(pred, labels, classes)
    masked = classifier_report(pred_no_log, labels, classes)
    per_group = {
        kind: {name: _headline(classifier_report(pred[sel], labels[sel], classes))
               for name, sel in _groups(names, index).items()}
        for kind, (names, index) in groups.items()
    }  # fmt: skip
    drop = {c: round(overall["per_class_recall"][c] - masked["per_class_recall"].get(c, 0.0), 4)
            for c in overall["per_class_recall"]}  # fmt: skip
    good = labels == 0
    taken = {c: (int((pred[good] == k).sum()), int((pred_no_log[good] == k).sum()))
             for k, c in enumerate(classes) if k}  # fmt: skip
    support = overall["support"]
    dependent = [c for c in classes[1:] if drop.get(c, 0.0) >= LOG_DEPENDENT_DROP
                 or taken[c][1] - taken[c][0] >= max(1.0, LOG_DEPENDENT_DROP * support[c])]  # fmt: skip
    return {
        **overall,
        "per": per_group,
        "without_process_log": _headline(masked) | {"confusion_matrix": masked["confusion_matrix"]},
        "recall_drop_without_log": drop,
        "good_called_with_and_without_log": taken,
        "log_dependent_classes": dependent,
    }


def anomaly_figures(
    scores: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], classes: Sequence[str], bands: dict[str, float],
    log_dependent: Sequence[str] = (),
) -> dict[str, Any]:  # fmt: skip
    """AUROC over every defect and over the visual ones, and the band rates (GOOD is class 0)."""
    good = labels == 0
    visual = good | ~np.isin(labels, [classes.index(c) for c in log_dependent])
    figures: dict[str, Any] = {
        "auroc_all_defects": round(auroc(scores, ~good), 4) if good.any() and (~good).any() else None,
        "auroc": round(auroc(scores[visual], ~good[visual]), 4) if good.any() and (~good[visual]).any() else None,
        "auroc_leaves_out": list(log_dependent),
        "bands": dict(bands),
        "per_class_at_or_above_pass": {
            c: round(float((scores[labels == k] >= bands["pass_band"]).mean()), 4)
            for k, c in enumerate(classes) if (labels == k).any()
        },
    }  # fmt: skip
    return figures


def targets(cls: dict[str, Any], anomaly: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The acceptance targets of a model trained on a fab's data: (what, measured, met)."""
    worst = min(cls["per_class_recall"].items(), key=lambda kv: kv[1])
    rows = [
        ("macro-F1 >= 0.90", f"{cls['macro_f1']:.3f}", cls["macro_f1"] >= 0.90),
        ("every class recall >= 0.80", f"{worst[0]} {worst[1]:.3f}", worst[1] >= 0.80),
        ("escape rate <= 1%", _pct(cls["escape_rate"]), (cls["escape_rate"] or 0.0) <= 0.01),
        ("false-positive rate <= 5%", _pct(cls["false_positive_rate"]), (cls["false_positive_rate"] or 0.0) <= 0.05),
    ]
    if anomaly.get("auroc") is not None:
        rows.append(("anomaly AUROC >= 0.95 (visual defects vs GOOD)", f"{anomaly['auroc']:.4f}",
                     anomaly["auroc"] >= 0.95))  # fmt: skip
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
