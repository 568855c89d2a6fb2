"""Model cards render the metrics they are given, flag the weakest classes, and tabulate latency."""

from tools.model_card import render_card

CLASSIFIER = {
    "accuracy": 0.97, "macro_f1": 0.96, "escape_rate": 0.01, "false_positive_rate": 0.02,
    "modalities": {
        "all": {"accuracy": 0.97, "macro_f1": 0.96, "escape_rate": 0.01, "false_positive_rate": 0.02,
                "discolour": {"real_recall": 0.9, "cosmetic_passed": 0.95}},
        "image_only": {"accuracy": 0.9, "macro_f1": 0.88, "escape_rate": 0.03, "false_positive_rate": 0.2,
                       "discolour": {"real_recall": 0.4, "cosmetic_passed": 0.6}},
    },
    "baseline_cnn": {"accuracy": 0.8, "macro_f1": 0.77, "escape_rate": 0.05, "false_positive_rate": 0.1,
                     "discolour": {"real_recall": 0.3, "cosmetic_passed": 0.7}},
    "confusion_matrix": {"classes": ["GOOD", "CRACK"], "rows_true_cols_pred": [[9, 1], [0, 5]]},
    "per_class_recall": {"GOOD": 0.99, "PART-SM": 0.81, "CRACK": 0.97},
    "data": {"train_seed": 1, "heldout_seed": 1001}, "seconds": {"total": 100.0}, "budget": {"name": "full"},
}


def test_classifier_card_has_metrics_weak_classes_and_latency_table():
    io_rows = [("input", "IMAGE", "tensor(uint8)", ["batch", 3, 256, 256])]
    text = render_card("classifier", CLASSIFIER, None, io_rows, {1: 2.0, 8: 12.0}, "test host")
    assert "| escape_rate | 0.01 | < 0.01 |" in text and "| macro_f1 | 0.96 | > 0.71 |" in text
    assert "| multimodal, image_only | 0.9 | 0.88 | 0.03 | 0.2 | 0.4 | 0.6 |" in text
    assert "| vision-only CNN baseline | 0.8 | 0.77 | 0.05 | 0.1 | 0.3 | 0.7 |" in text
    assert "|  | GOOD | CRACK |" in text and "| GOOD | 9 | 1 |" in text
    assert "- PART-SM: recall 0.81" in text and "CRACK: recall" not in text
    assert "| 8 | 12.0 | 1.5 |" in text and "test host" in text
    assert "Precision forms" not in text  # none given


def test_anomaly_card_compares_with_the_pca_baseline():
    metrics = {
        "auroc": 0.99, "auprc": 0.98, "fnr_at_fpr_5pct": 0.004, "pixel_auroc": 0.93, "auroc_image_mean": 0.8,
        "pass_band": 0.01, "reject_band": 0.02, "per_class": {"GOOD": {"at_or_above_pass": 0.01},
                                                             "BRIDGE": {"at_or_above_pass": 0.3}},
        "pca_baseline": {"50": {"auroc": 0.7, "auprc": 0.8, "fnr_at_fpr_5pct": 0.6, "auroc_image_mean": 0.6}},
        "data": {"train_seed": 1}, "seconds": {"total": 10.0},
    }
    text = render_card("anomaly", metrics, None, [], {1: 1.0}, "test host")
    assert "| fnr_at_fpr_5pct | 0.004 | < 0.005 |" in text and "| pixel_auroc | 0.93 | > 0.90 |" in text
    assert "| VAE | 0.99 | 0.98 | 0.004 | 0.8 |" in text and "| PCA, 50 components | 0.7 | 0.8 | 0.6 | 0.6 |" in text
    assert "- BRIDGE: share of defect dies at or above the pass band 0.3" in text
