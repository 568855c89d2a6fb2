"""The serving forms of a model trained on a fab's data, each measured on that fab's ``test`` dies and gated.

FP32 ONNX (``tools.export``: checked against PyTorch in ONNX Runtime), FP16 and INT8 Q/DQ (``tools.quantize``'s
converters; INT8 calibrated on the CPU on ``CALIBRATION`` dies of the fab's ``train`` split). Every form runs on the
``test`` dies in ONNX Runtime as the CPU repository serves it, and ``tools.precision_gate`` judges FP16 and INT8
against FP32 with the same tolerances as the reference models: a form that misses them is recorded as failed and is
never installed (the repository falls back, and says why in the config). The figures go to
``precision_metrics.json`` in the form ``tools.precision_gate`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from onnxruntime.quantization import CalibrationMethod

from tools.dataset.arrays import Arrays
from tools.metrics import auroc, classification_report, fnr_at_fpr
from tools.precision_gate import PRECISIONS, REPORT, TOLERANCES, onnx_path, sha256, verdict
from tools.quantize import bands_index, convert_fp16, quantize_int8, run_all

CALIBRATION = 160  # dies of train that calibrate INT8 (every class, in the training order)
Outputs = dict[str, npt.NDArray[Any]]


def feeds(name: str, data: Arrays, idx: npt.NDArray[np.int64] | slice = slice(None)) -> dict[str, npt.NDArray[Any]]:
    """The serving inputs of ``name`` (model_repository/README.md) for the dies ``idx`` of ``data``."""
    if name == "anomaly":
        return {"IMAGE": data.grey[idx]}
    return {"IMAGE": data.images[idx], "PROCESS": data.process[idx], "PRESENT": data.present[idx],
            "NOTES": data.notes[idx]}  # fmt: skip


def calibration_dies(data: Arrays, n: int = CALIBRATION, seed: int = 0) -> npt.NDArray[np.int64]:
    """``n`` dies of ``data``, every class first (up to its share), then at random."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    first = [order[data.labels[order] == k][: max(1, n // 16)] for k in np.unique(data.labels)]
    chosen = list(dict.fromkeys([*np.concatenate(first).tolist(), *order.tolist()]))[:n]
    return np.array(sorted(chosen), np.int64)


def headline(name: str, outputs: Outputs, reference: Outputs, labels: npt.NDArray[np.int64],
             classes: tuple[str, ...], bands: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """The figures the gate judges (``tools.precision_gate.TOLERANCES``) for one form's outputs on ``test``."""
    if name == "classifier":
        report = classification_report(outputs["PROBS"].argmax(1), labels, classes)
        figures = {k: report[k] for k in ("accuracy", "macro_f1", "escape_rate", "false_positive_rate")}
        figures["top1_changes"] = round(float((outputs["PROBS"].argmax(1) != reference["PROBS"].argmax(1)).mean()), 4)
        return figures
    score, defect = outputs["SCORE"][:, 0], labels != 0
    changed = bands_index(score, bands) != bands_index(reference["SCORE"][:, 0], bands)
    return {"auroc": round(auroc(score, defect), 4), "fnr_at_fpr_5pct": round(fnr_at_fpr(score, defect)[0], 4),
            "band_changes": round(float(changed.mean()), 4)}  # fmt: skip


def make_forms(
    models: Path, name: str, train: Arrays, test: Arrays, classes: tuple[str, ...], bands: dict[str, float],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], Outputs]:  # fmt: skip
    """Write the FP16 and INT8 forms beside ``<models>/<name>.onnx``, measure all three on ``test``; the report
    entry of ``name`` and the FP32 outputs on ``test``."""
    paths = {p: onnx_path(models, name, p) for p in PRECISIONS}
    fp32_ops = convert_fp16(paths["fp32"], paths["fp16"])
    quantize_int8(paths["fp32"], paths["int8"], feeds(name, train, calibration_dies(train)), CalibrationMethod.MinMax)
    inputs = feeds(name, test)
    entries: dict[str, Any] = {}
    reference: Outputs = {}
    for precision, path in paths.items():
        outputs = run_all(path, inputs)
        reference = reference or outputs
        figures = headline(name, outputs, reference, test.labels, classes, bands)
        fp32 = entries["fp32"]["metrics"] if entries else figures
        entries[precision] = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
                              "metrics": figures, "gate": verdict(name, precision, fp32, figures)}  # fmt: skip
        gate = entries[precision]["gate"]
        log(f"{name} {precision}: {figures} gate {'pass' if gate['passed'] else 'FAIL ' + '; '.join(gate['failures'])}")
    entries["fp16"]["fp32_op_types"] = fp32_ops
    return entries, reference


def write_report(models: Path, entries: dict[str, dict[str, Any]], test_dies: int) -> None:
    report = {
        "data": {"split": "test", "dies": test_dies, "calibration": f"{CALIBRATION} dies of train"},
        "gate": {name: [{"metric": lim.metric, "worse": lim.worse, "tolerance": lim.tolerance} for lim in limits]
                 for name, limits in TOLERANCES.items()},
        "models": entries,
    }  # fmt: skip
    (models / REPORT).write_text(json.dumps(report, indent=2) + "\n")
