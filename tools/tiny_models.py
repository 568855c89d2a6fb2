"""Tiny untrained models with the serving interface, exported and given their precision forms like the real ones.

Seconds to build: the precision tests run on them in the unit tier without `make models`, and so does
`tools.kernel_check`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tools.export import export_anomaly, export_classifier
from tools.models import ConvVAE, DefectClassifier
from tools.quantize import feeds
from tools.quantize import main as quantize
from tools.synth import make_dataset

QUANTIZE_ARGS = ("--calibration-size", "24", "--heldout", "40", "--threads", "1")


def export_tiny(out: Path) -> Path:
    """``anomaly.onnx`` and ``classifier.onnx`` of seeded, untrained, narrow models in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sample = make_dataset(seed=7, n=4)
    export_anomaly(ConvVAE(latent=8, width=4).eval(), feeds("anomaly", sample)["IMAGE"], out / "anomaly.onnx")
    x = feeds("classifier", sample)
    classifier = DefectClassifier(dim=32).eval()
    export_classifier(classifier, x["IMAGE"], x["PROCESS"], x["PRESENT"], x["NOTES"], out / "classifier.onnx")
    return out


def tiny_models(out: Path) -> Path:
    """The FP32 forms (``export_tiny``), then ``python -m tools.quantize`` on them: FP16, INT8 and the report."""
    export_tiny(out)
    assert quantize(["--models", str(out), *QUANTIZE_ARGS]) == 0
    return out
