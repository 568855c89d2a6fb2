"""Model cards render the metrics they are given, flag the weakest classes, and tabulate latency."""

from tools.model_card import render_card

CLASSIFIER = {
    "accuracy": 0.97, "macro_f1": 0.96, "escape_rate": 0.01, "false_positive_rate": 0.02,
    "accuracy_masked": {"process": 0.9, "notes": 0.95, "both": 0.88},
    "per_class_recall": {"GOOD": 0.99, "PART-SM": 0.81, "CRACK": 0.97},
    "data": {"train_seed": 1, "heldout_seed": 1001}, "seconds": {"total": 100.0}, "budget": {"name": "full"},
}


def test_classifier_card_has_metrics_weak_classes_and_latency_table():
    io_rows = [("input", "IMAGE", "tensor(uint8)", ["batch", 3, 256, 256])]
    text = render_card("classifier", CLASSIFIER, None, io_rows, {1: 2.0, 8: 12.0}, "test host")
    assert "| accuracy | 0.97 |" in text and "| accuracy, process masked | 0.9 |" in text
    assert "- PART-SM: recall 0.81" in text and "CRACK: recall" not in text
    assert "| 8 | 12.0 | 1.5 |" in text and "test host" in text
    assert "Precision forms" not in text  # none given
