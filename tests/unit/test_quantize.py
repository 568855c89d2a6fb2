"""INT8 (QDQ) and FP16 forms from tools.quantize on tiny untrained models with the serving interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from tools.export import export_anomaly, export_classifier
from tools.models import ConvVAE, DefectClassifier
from tools.quantize import MODELS, OUTPUTS, feeds, main, run_all
from tools.synth import make_dataset

# name and elem type of every serving input and output (model_repository/README.md)
INTERFACE = {
    "anomaly": {
        "inputs": [("IMAGE", TensorProto.UINT8)],
        "outputs": [("SCORE", TensorProto.FLOAT), ("HEATMAP", TensorProto.FLOAT)],
    },
    "classifier": {
        "inputs": [
            ("IMAGE", TensorProto.UINT8),
            ("PROCESS", TensorProto.FLOAT),
            ("PRESENT", TensorProto.FLOAT),
            ("NOTES", TensorProto.INT64),
        ],
        "outputs": [("PROBS", TensorProto.FLOAT), ("ATTENTION", TensorProto.FLOAT)],
    },
}


def _interface(model: onnx.ModelProto) -> dict:
    def sig(values) -> list:
        return [
            (v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values
        ]

    return {"inputs": sig(model.graph.input), "outputs": sig(model.graph.output)}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, object]:
    """Tiny models exported like the real ones, then ``python -m tools.quantize`` on them."""
    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    sample = make_dataset(seed=7, n=4)
    vae = ConvVAE(latent=8, width=4).eval()
    export_anomaly(vae, feeds("anomaly", sample)["IMAGE"], out / "anomaly.onnx")
    classifier = DefectClassifier(dim=32).eval()
    x = feeds("classifier", sample)
    export_classifier(classifier, x["IMAGE"], x["PROCESS"], x["PRESENT"], x["NOTES"], out / "classifier.onnx")
    assert main(["--models", str(out), "--calibration-size", "24", "--heldout", "40", "--threads", "1"]) == 0
    return out, make_dataset(seed=8, n=12)


@pytest.mark.parametrize("name", MODELS)
def test_int8_is_qdq_with_per_channel_int8_weights(built, name):
    model = onnx.load(str(built[0] / f"{name}.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    assert any(n.op_type == "Conv" for n in weighted)
    for node in weighted:  # each reads its weight through DequantizeLinear of an INT8 initializer, a scale per channel
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", node.name
        weight = inits[dq.input[0]]
        assert weight.data_type == TensorProto.INT8
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert onnx.numpy_helper.to_array(inits[dq.input[1]]).size == weight.dims[axis], node.name


@pytest.mark.parametrize("name", MODELS)
def test_fp16_has_fp16_weights(built, name):
    model = onnx.load(str(built[0] / f"{name}.fp16.onnx"))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(inits[c.input[1]] == TensorProto.FLOAT16 for c in convs)
    assert sum(t == TensorProto.FLOAT16 for t in inits.values()) > len(inits) / 2


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", MODELS)
def test_serving_interface_unchanged(built, name, precision):
    reference = onnx.load(str(built[0] / f"{name}.onnx"))
    model = onnx.load(str(built[0] / f"{name}.{precision}.onnx"))
    want = _interface(reference)
    assert {k: [v[:2] for v in values] for k, values in want.items()} == INTERFACE[name]
    assert want["inputs"][0][2][0] == "batch"
    assert _interface(model) == want  # names, types and shapes
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize(("precision", "rtol"), [("fp16", 0.02), ("int8", 0.25)])
@pytest.mark.parametrize("name", MODELS)
def test_outputs_close_to_fp32(built, name, precision, rtol):
    """Loose: each output's largest difference stays within ``rtol`` of that output's largest FP32 magnitude."""
    out, ds = built
    inputs = feeds(name, ds)
    want = run_all(out / f"{name}.onnx", inputs, threads=1)
    got = run_all(out / f"{name}.{precision}.onnx", inputs, threads=1)
    for key in OUTPUTS[name]:
        assert got[key].dtype == np.float32 and got[key].shape == want[key].shape
        assert np.all(np.isfinite(got[key]))
        scale = float(np.max(np.abs(want[key])))
        assert float(np.max(np.abs(got[key] - want[key]))) <= rtol * scale, (key, scale)
    if name == "classifier":
        np.testing.assert_allclose(got["PROBS"].sum(1), 1.0, atol=1e-3)
        np.testing.assert_allclose(got["ATTENTION"].sum(1), 1.0, atol=1e-3)


def test_precision_metrics_json(built):
    report = json.loads((built[0] / "precision_metrics.json").read_text())
    assert report["data"]["heldout"] == 40 and report["data"]["calibration"] == 24
    assert report["data"]["calibration_seed"] not in (report["data"]["heldout_seed"], 1)
    for name, headline in {"anomaly": "auroc", "classifier": "accuracy"}.items():
        entry = report["models"][name]
        assert set(entry) == {"fp32", "fp16", "int8"}
        for precision, row in entry.items():
            assert row["bytes"] == (built[0] / row["file"]).stat().st_size
            assert 0.0 <= row["metrics"][headline] <= 1.0
            assert row["latency_ms"]["batch1"] > 0 and row["latency_ms"]["batch8"] > 0
            if precision != "fp32":
                change = row["metrics"][headline] - entry["fp32"]["metrics"][headline]
                assert row["change_vs_fp32"][headline] == pytest.approx(change, abs=1e-4)
                assert set(row["max_abs_diff_vs_fp32"]) == set(OUTPUTS[name])
    for name in MODELS:
        sizes = {p: report["models"][name][p]["bytes"] for p in ("fp32", "fp16", "int8")}
        assert sizes["fp16"] < sizes["fp32"] and sizes["int8"] < sizes["fp32"], sizes
