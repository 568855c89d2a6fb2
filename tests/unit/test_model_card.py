"""Model cards render the metrics they are given, flag the weakest classes, tabulate latency, the precision gate and
the seed spread, and record the provenance that the committed cards are checked against."""

import re
from pathlib import Path

import pytest

from tools import provenance
from tools.precision_gate import Choice
from tools.reports.model_card import render_card

CLASSIFIER = {
    "accuracy": 0.97,
    "macro_f1": 0.96,
    "escape_rate": 0.01,
    "false_positive_rate": 0.02,
    "modalities": {
        "all": {
            "accuracy": 0.97,
            "macro_f1": 0.96,
            "escape_rate": 0.01,
            "false_positive_rate": 0.02,
            "discolour": {"real_recall": 0.9, "cosmetic_passed": 0.95},
        },
        "image_only": {
            "accuracy": 0.9,
            "macro_f1": 0.88,
            "escape_rate": 0.03,
            "false_positive_rate": 0.2,
            "discolour": {"real_recall": 0.4, "cosmetic_passed": 0.6},
        },
    },
    "baseline_cnn": {
        "accuracy": 0.8,
        "macro_f1": 0.77,
        "escape_rate": 0.05,
        "false_positive_rate": 0.1,
        "discolour": {"real_recall": 0.3, "cosmetic_passed": 0.7},
    },
    "confusion_matrix": {"classes": ["GOOD", "CRACK"], "rows_true_cols_pred": [[9, 1], [0, 5]]},
    "per_class_recall": {"GOOD": 0.99, "PART-SM": 0.81, "CRACK": 0.97},
    "data": {"train_seed": 1, "heldout_seed": 1001},
    "seconds": {"total": 100.0},
    "budget": {"name": "full"},
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
        "auroc": 0.99,
        "auprc": 0.98,
        "fnr_at_fpr_5pct": 0.004,
        "pixel_auroc": 0.93,
        "auroc_image_mean": 0.8,
        "pass_band": 0.01,
        "reject_band": 0.02,
        "per_class": {"GOOD": {"at_or_above_pass": 0.01}, "BRIDGE": {"at_or_above_pass": 0.3}},
        "pca_baseline": {"50": {"auroc": 0.7, "auprc": 0.8, "fnr_at_fpr_5pct": 0.6, "auroc_image_mean": 0.6}},
        "data": {"train_seed": 1},
        "seconds": {"total": 10.0},
    }
    text = render_card("anomaly", metrics, None, [], {1: 1.0}, "test host")
    assert "| fnr_at_fpr_5pct | 0.004 | < 0.005 |" in text and "| pixel_auroc | 0.93 | > 0.90 |" in text
    assert "| VAE | 0.99 | 0.98 | 0.004 | 0.8 |" in text and "| PCA, 50 components | 0.7 | 0.8 | 0.6 | 0.6 |" in text
    assert "- BRIDGE: share of defect dies at or above the pass band 0.3" in text


CARDS = Path(__file__).resolve().parents[2] / "model_repository" / "cards"


@pytest.mark.parametrize("name", ["anomaly", "classifier"])
def test_committed_cards_describe_models_of_this_training_code(name):
    """The cards' figures come from the code that trains and measures the models: change that code and this fails
    until `make cards` retrains, re-measures and rewrites them (tools/provenance.py)."""
    card = (CARDS / f"{name}.md").read_text()
    recorded = re.search(r"\| code digest \| `([0-9a-f]{64})` \|", card)
    assert recorded, f"{name}.md records no code digest: regenerate it with `make cards`"
    assert recorded.group(1) == provenance.code_digest(), (
        f"{name}.md was generated from other training code than this checkout's: run `make cards`"
    )
    assert "## Seed spread" in card and "## Precision forms (ONNX Runtime, CPU) and the precision gate" in card


def test_provenance_follows_imports_from_the_training_entry_points():
    files = {path.relative_to(provenance.ROOT).as_posix() for path in provenance.sources()}
    assert {"tools/train.py", "tools/quantize.py", "tools/synth_render.py", "tools/models.py", "edge/taxonomy.py",
            "tools/precision_gate.py", "tools/provenance.py"} <= files  # fmt: skip
    serving_and_reporting = {"tools/station/demo.py", "edge/daemon.py", "tools/reports/model_card.py"}
    assert not serving_and_reporting & files


def test_code_digest_changes_with_any_source_byte(tmp_path):
    paths = [tmp_path / "a.py", tmp_path / "b.py"]
    for path in paths:
        path.write_text("x = 1\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(provenance, "ROOT", tmp_path)
        before = provenance.code_digest(paths)
        paths[1].write_text("x = 2\n")
        assert provenance.code_digest(paths) != before


def test_card_shows_seed_spread_gate_served_forms_and_provenance():
    spread = {
        "seeds": [1, 2, 3],
        "budget": "full",
        "models": {
            "classifier": {
                p: {
                    "figures": {"escape_rate": {"mean": 0.005, "sd": 0.002, "min": 0.003, "max": 0.007}},
                    "gate_passed": "3/3" if p != "int8" else "2/3",
                }
                for p in ("fp32", "fp16", "int8")
            }
        },
    }
    precision = {
        "data": {"heldout": 960, "heldout_good": 480},
        "models": {
            "classifier": {
                "fp32": {"bytes": 5e6, "metrics": {"escape_rate": 0.005}, "gate": {"passed": True, "failures": []}},
                "int8": {
                    "bytes": 2e6,
                    "metrics": {"escape_rate": 0.02},
                    "change_vs_fp32": {"escape_rate": 0.015},
                    "gate": {"passed": False, "failures": ["escape_rate 0.005 -> 0.02 (allowed +0.005)"]},
                },
            }
        },
    }
    served = {"GPU engines": Choice("int8", "fp16", "int8: escape_rate 0.005 -> 0.02 (allowed +0.005)")}
    origin = {
        "code_digest": "a" * 64,
        "data_recipe_digest": "b" * 64,
        "budget": "full",
        "seed": 1,
        "dependencies": {"torch": "2.13.0"},
        "host": "x86_64",
        "sources": ["tools/train.py"],
    }
    text = render_card("classifier", CLASSIFIER, precision, [], {1: 2.0}, "host", served, spread, origin)
    assert "| escape_rate | 0.005 ± 0.002 (0.003-0.007) | 0.005 ± 0.002 (0.003-0.007) |" in text
    assert "| passed the precision gate | 3/3 | 3/3 | 2/3 |  |" in text
    assert "| int8 | 2.0 MB | escape_rate 0.02 |" in text and "fail: escape_rate 0.005 -> 0.02" in text
    assert "- GPU engines: asks int8, serves **fp16** (fallback: int8: escape_rate" in text
    assert f"| code digest | `{'a' * 64}` |" in text and "| escape_rate | rise" not in text
