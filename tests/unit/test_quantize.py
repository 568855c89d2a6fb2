"""INT8 (QDQ) and FP16 forms from tools.quantize on tiny untrained models with the serving interface: their graphs,
their outputs, the report, and INT8 results that do not depend on the CPU's instruction set."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from tools.quantize import MODELS, OUTPUTS, feeds, run_all
from tools.synth import make_dataset
from tools.tiny_models import tiny_models

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
    return tiny_models(tmp_path_factory.mktemp("models")), make_dataset(seed=8, n=12)


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


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", MODELS)
def test_outputs_keep_their_shapes_types_and_meaning(built, name, precision):
    """Finite FP32 outputs of the FP32 shapes; distributions still sum to one. How close each form comes to FP32 is
    the precision gate's question, on held-out dies (tests/unit/test_precision_gate.py)."""
    out, ds = built
    inputs = feeds(name, ds)
    want = run_all(out / f"{name}.onnx", inputs, threads=1)
    got = run_all(out / f"{name}.{precision}.onnx", inputs, threads=1)
    for key in OUTPUTS[name]:
        assert got[key].dtype == np.float32 and got[key].shape == want[key].shape
        assert np.all(np.isfinite(got[key]))
    if name == "classifier":
        np.testing.assert_allclose(got["PROBS"].sum(1), 1.0, atol=1e-3)
        np.testing.assert_allclose(got["ATTENTION"].sum(1), 1.0, atol=1e-3)


def test_fp16_outputs_stay_within_two_percent_of_fp32(built):
    out, ds = built
    for name in MODELS:
        inputs = feeds(name, ds)
        want = run_all(out / f"{name}.onnx", inputs, threads=1)
        got = run_all(out / f"{name}.fp16.onnx", inputs, threads=1)
        for key in OUTPUTS[name]:
            scale = float(np.max(np.abs(want[key])))
            assert float(np.max(np.abs(got[key] - want[key]))) <= 0.02 * scale, (name, key, scale)


# Runs in the child, natively or under QEMU's user-mode emulation of a CPU with AVX2 and no VNNI (an EPYC Milan):
# the INT8 classifier's PROBS with the serving session and with ONNX Runtime's default INT8 kernels
# (tools.kernel_check.int8_probs). Prints the largest difference of each from the FP32 model.
_KERNEL_PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from tools.kernel_check import int8_probs
    from tools.quantize import feeds
    from tools.synth import make_dataset
    probs = int8_probs(Path(sys.argv[1]), feeds("classifier", make_dataset(seed=8, n=12)), threads=1)
    print(*(float(np.abs(probs[k] - probs["fp32"]).max()) for k in ("int8", "int8-default")))
""")


def _probe(models: Path, emulate: str | None) -> tuple[float, float]:
    command = [sys.executable, "-c", _KERNEL_PROBE, str(models)]
    if emulate:
        command = ["qemu-x86_64", "-cpu", emulate, *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    served, plain = done.stdout.split()
    return float(served), float(plain)


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user is not installed (make deps installs it)")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the VNNI question is an x86-64 one")
def test_int8_results_do_not_depend_on_vnni(built):
    """The INT8 form scores the same on a CPU without VNNI as on this one. Under emulation of such a CPU, ONNX
    Runtime's default INT8 kernels saturate (the collapse this guards against); the serving session does not."""
    native_served, _ = _probe(built[0], None)
    emulated_served, emulated_plain = _probe(built[0], "EPYC-Milan")
    assert emulated_served == pytest.approx(native_served, abs=1e-3)  # float rounding, not saturation
    assert emulated_plain > 5 * emulated_served + 0.01, "the emulated CPU did not reproduce the saturating kernel"


def test_precision_metrics_json(built):
    report = json.loads((built[0] / "precision_metrics.json").read_text())
    assert report["data"]["heldout"] == 40 and report["data"]["heldout_good"] == 20
    assert report["data"]["calibration"] == 24
    assert report["data"]["calibration_seed"] not in (report["data"]["heldout_seed"], 1)
    for name, headline in {"anomaly": "auroc", "classifier": "accuracy"}.items():
        entry = report["models"][name]
        assert set(entry) == {"fp32", "fp16", "int8"}
        for precision, row in entry.items():
            assert row["bytes"] == (built[0] / row["file"]).stat().st_size
            assert row["gate"]["passed"] in (True, False) and len(row["sha256"]) == 64
            assert 0.0 <= row["metrics"][headline] <= 1.0
            assert row["latency_ms"]["batch1"] > 0 and row["latency_ms"]["batch8"] > 0
            if precision != "fp32":
                change = row["metrics"][headline] - entry["fp32"]["metrics"][headline]
                assert row["change_vs_fp32"][headline] == pytest.approx(change, abs=1e-4)
                assert set(row["max_abs_diff_vs_fp32"]) == set(OUTPUTS[name])
    for name in MODELS:
        sizes = {p: report["models"][name][p]["bytes"] for p in ("fp32", "fp16", "int8")}
        assert sizes["fp16"] < sizes["fp32"] and sizes["int8"] < sizes["fp32"], sizes
