"""ONNX export of the two models (opset 17, dynamic batch), checked with onnx.checker and against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tools.models import AnomalyExport, ClassifierExport, ConvVAE, DefectClassifier

OPSET = 17


def _export(wrapper: nn.Module, inputs: dict[str, np.ndarray], outputs: list[str], path: Path, atol: float) -> dict:
    """Export ``wrapper`` on ``inputs``; raise if the ONNX graph is invalid or ORT disagrees with PyTorch."""
    wrapper.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(a) for a in inputs.values())
    axes = {name: {0: "batch"} for name in [*inputs, *outputs]}
    torch.onnx.export(
        wrapper, args, str(path), input_names=list(inputs), output_names=outputs,
        dynamic_axes=axes, opset_version=OPSET, dynamo=False,
    )  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(outputs, inputs)
    with torch.no_grad():
        want = [t.numpy() for t in wrapper(*args)]
    errors = {name: float(np.max(np.abs(g - w))) for name, g, w in zip(outputs, got, want)}
    if max(errors.values()) > atol:
        raise RuntimeError(f"ONNX Runtime and PyTorch disagree on {path.name}: {errors}")
    return {"file": path.name, "opset": OPSET, "bytes": path.stat().st_size, "max_abs_diff": errors}


def export_anomaly(vae: ConvVAE, grey_images: np.ndarray, path: Path, weights: np.ndarray | None = None) -> dict:
    """``grey_images``: a few (B, 1, 256, 256) uint8 dies for the parity check; ``weights``: SCORE's window weights
    (``tools.models.multiscale_score``; None: all 1)."""
    wrapper = AnomalyExport(vae, None if weights is None else torch.from_numpy(np.asarray(weights, np.float32)))
    return _export(wrapper, {"IMAGE": grey_images}, ["SCORE", "HEATMAP"], path, atol=1e-4)


def export_classifier(
    model: DefectClassifier, images: np.ndarray, process: np.ndarray, present: np.ndarray, notes: np.ndarray,
    path: Path,
) -> dict:  # fmt: skip
    """``images``: a few (B, 3, 256, 256) uint8 dies with their modalities, for the parity check."""
    inputs = {"IMAGE": images, "PROCESS": process, "PRESENT": present, "NOTES": notes}
    return _export(ClassifierExport(model), inputs, ["PROBS", "ATTENTION"], path, atol=1e-4)
