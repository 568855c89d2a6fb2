"""The precision gate: tolerances against FP32, the fallback from a form that misses them, and what the CPU repository
and a GPU station's engine build install and say when the INT8 form is broken on purpose."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tools import quantize
from tools.build_repository import main as build_repository
from tools.embedding_output import with_embedding
from tools.gpu.build_engines import SOURCE as GPU_SOURCE
from tools.gpu.build_engines import model_state
from tools.gpu.tensorrt_engine import Gpu
from tools.precision_gate import (
    TOLERANCES,
    Choice,
    choose_precision,
    judge,
    onnx_path,
    parse_precisions,
    sha256,
    verdict,
)
from tools.tiny_models import QUANTIZE_ARGS, export_tiny

CLASSIFIER_FP32 = {"accuracy": 0.97, "macro_f1": 0.97, "escape_rate": 0.01, "false_positive_rate": 0.04,
                   "top1_changes": 0.0}  # fmt: skip
ANOMALY_FP32 = {"auroc": 0.999, "fnr_at_fpr_5pct": 0.002, "band_changes": 0.0}


def test_a_form_within_every_tolerance_passes() -> None:
    form = {**CLASSIFIER_FP32, "accuracy": 0.965, "escape_rate": 0.0125, "top1_changes": 0.01}
    assert judge("classifier", CLASSIFIER_FP32, form) == []
    assert verdict("classifier", "int8", CLASSIFIER_FP32, form) == {"passed": True, "failures": []}


def test_the_collapse_this_gate_exists_for_fails_on_every_count_it_touches() -> None:
    collapsed = {"accuracy": 0.703, "macro_f1": 0.746, "escape_rate": 0.008, "false_positive_rate": 0.537,
                 "top1_changes": 0.28}  # fmt: skip
    failures = judge("classifier", CLASSIFIER_FP32, collapsed)
    assert [f.split()[0] for f in failures] == ["accuracy", "false_positive_rate", "top1_changes"]
    assert "false_positive_rate 0.04 -> 0.537 (allowed +0.02)" in failures


@pytest.mark.parametrize(("metric", "value"), [("fnr_at_fpr_5pct", 0.0065), ("auroc", 0.99), ("band_changes", 0.02)])
def test_each_anomaly_tolerance_fails_on_its_own(metric: str, value: float) -> None:
    failures = judge("anomaly", ANOMALY_FP32, {**ANOMALY_FP32, metric: value})
    assert len(failures) == 1 and failures[0].startswith(metric)


def test_an_unmeasured_figure_fails_rather_than_passing_silently() -> None:
    assert judge("anomaly", ANOMALY_FP32, {"auroc": 0.999, "fnr_at_fpr_5pct": 0.002}) == ["band_changes not measured"]


def test_every_tolerance_is_positive_and_says_why() -> None:
    for limits in TOLERANCES.values():
        assert {limit.worse for limit in limits} <= {"rise", "drop"}
        assert all(limit.tolerance > 0 and limit.why for limit in limits)


def _report(tmp_path: Path, passed: dict[str, bool]) -> dict:
    """A report over placeholder classifier forms in ``tmp_path`` whose gate verdicts are ``passed``."""
    entries = {}
    for precision in ("fp32", "fp16", "int8"):
        path = onnx_path(tmp_path, "classifier", precision)
        path.write_bytes(precision.encode())
        ok = passed.get(precision, True)
        entries[precision] = {"sha256": sha256(path), "gate": {"passed": ok, "failures": [] if ok else ["x 1 -> 2"]}}
    return {"models": {"classifier": entries}}


def _choose(tmp_path: Path, requested: str, report: dict | None) -> Choice:
    return choose_precision("classifier", requested, report, lambda p: onnx_path(tmp_path, "classifier", p))


def test_choice_serves_what_was_asked_when_it_passed(tmp_path: Path) -> None:
    choice = _choose(tmp_path, "int8", _report(tmp_path, {}))
    assert choice == Choice("int8", "int8", None)
    assert choice.parameters() == {"precision": "int8", "precision_requested": "int8"}


def test_a_failed_int8_falls_back_to_fp16_and_says_why(tmp_path: Path) -> None:
    choice = _choose(tmp_path, "int8", _report(tmp_path, {"int8": False}))
    assert (choice.served, choice.fallback) == ("fp16", "int8: x 1 -> 2")
    assert choice.parameters()["precision_fallback"] == "int8: x 1 -> 2"
    assert choice.log_line("classifier") == "classifier: int8 not served, falling back to fp16: int8: x 1 -> 2"


def test_when_fp16_fails_too_fp32_is_served(tmp_path: Path) -> None:
    choice = _choose(tmp_path, "int8", _report(tmp_path, {"int8": False, "fp16": False}))
    assert choice.served == "fp32" and choice.fallback.count("x 1 -> 2") == 2


def test_a_form_changed_after_it_was_measured_is_not_served(tmp_path: Path) -> None:
    report = _report(tmp_path, {})
    onnx_path(tmp_path, "classifier", "int8").write_bytes(b"retrained since")
    choice = _choose(tmp_path, "int8", report)
    assert choice.served == "fp16" and "changed since it was measured" in choice.fallback


def test_without_a_report_only_fp32_is_served(tmp_path: Path) -> None:
    _report(tmp_path, {})
    assert _choose(tmp_path, "fp16", None).served == "fp32"
    assert _choose(tmp_path, "fp32", None) == Choice("fp32", "fp32", None)


def test_precision_arguments_override_the_defaults_and_refuse_nonsense() -> None:
    defaults = {"anomaly": "fp32", "classifier": "fp32"}
    assert parse_precisions(["classifier=int8"], defaults) == {"anomaly": "fp32", "classifier": "int8"}
    for bad in ("classifier", "classifier=bf16", "segmenter=fp16"):
        with pytest.raises(ValueError, match="MODEL=PRECISION"):
            parse_precisions([bad], defaults)


# --- the whole path on tiny models whose INT8 classifier is broken on purpose -------------------------------------


def flip_last_weights(path: Path) -> None:
    """Break a quantized graph on purpose: negate the dequantisation scale of its last weight-bearing node (for the
    classifier, the head), so its class scores come out reversed while the file stays a valid Q/DQ model."""
    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Conv") and n.input[1] in producers]
    dequant = producers[weighted[-1].input[1]]
    assert dequant.op_type == "DequantizeLinear" and dequant.input[1] in inits, dequant
    scale = inits[dequant.input[1]]
    scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale).astype(np.float32), scale.name))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models through ``tools.quantize``, whose INT8 step writes a classifier with its head reversed."""
    out = export_tiny(tmp_path_factory.mktemp("models"))
    (out / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.001, "reject_band": 0.002}))
    real = quantize.quantize_int8

    def quantize_then_break(src: Path, dst: Path, *args: object) -> None:
        real(src, dst, *args)
        if dst.name.startswith("classifier"):
            flip_last_weights(dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize, "quantize_int8", quantize_then_break)
        assert quantize.main(["--models", str(out), *QUANTIZE_ARGS]) == 0
    return out


def test_the_gate_fails_the_broken_int8_form_on_its_changed_top_class(broken: Path) -> None:
    forms = json.loads((broken / "precision_metrics.json").read_text())["models"]["classifier"]
    assert forms["fp32"]["gate"]["passed"] and forms["fp16"]["gate"]["passed"]
    assert not forms["int8"]["gate"]["passed"]
    assert any(line.startswith("top1_changes 0 ->") for line in forms["int8"]["gate"]["failures"])
    assert forms["int8"]["sha256"] == sha256(broken / "classifier.int8.onnx")


def test_the_cpu_repository_serves_fp16_instead_and_says_so(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert build_repository(["--models", str(broken), "--out", str(repo), "--precision", "classifier=int8"]) == 0
    served = onnx.load(str(repo / "classifier" / "1" / "model.onnx"))
    assert served == with_embedding(onnx.load(str(broken / "classifier.fp16.onnx")))
    config = (repo / "classifier" / "config.pbtxt").read_text()
    assert 'key: "precision", value: { string_value: "fp16" }' in config
    assert 'key: "precision_requested", value: { string_value: "int8" }' in config
    assert 'key: "precision_fallback", value: { string_value: "int8: top1_changes 0 -> ' in config
    assert "classifier: int8 not served, falling back to fp16: int8: top1_changes" in capsys.readouterr().err
    anomaly = (repo / "anomaly" / "config.pbtxt").read_text()
    assert 'key: "precision", value: { string_value: "fp32" }' in anomaly and "precision_fallback" not in anomaly


def test_a_gpu_station_builds_its_engine_from_fp16_instead_and_says_so(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(models=broken, out=tmp_path / "gpu", source=GPU_SOURCE, max_batch=32, version=None,
                              precisions={"anomaly": "fp16", "classifier": "int8"}, profile=(1, 16, 32))  # fmt: skip
    state = model_state("classifier", args, Gpu("10.14.1.48", "NVIDIA H200", "9.0"))
    assert (state.precision, state.onnx) == ("fp16", broken / "classifier.fp16.onnx")
    assert state.current.precision == "fp16" and state.current.onnx_sha256 == sha256(state.onnx)
    assert 'key: "precision_fallback"' in state.config and 'string_value: "fp16"' in state.config
    assert "classifier: int8 not served, falling back to fp16" in capsys.readouterr().err
