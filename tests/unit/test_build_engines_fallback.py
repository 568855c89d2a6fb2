"""A model whose TensorRT plan fails to build, or does not match ONNX Runtime, is served by Triton's ONNX Runtime
backend on the GPU from the same ONNX form, and says why; the next good build puts the plan back
(tools.gpu.build_engines). The TensorRT layer (tools.gpu.tensorrt_engine) is replaced by a fake that fails on
purpose, so this runs without a GPU; the ONNX forms are tiny real models and ONNX Runtime is real."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.errors import ModelRepositoryError
from edge.inference.model_facts import Backend, backend_from
from tools.build_repository import config_parameters
from tools.gpu import build_engines
from tools.gpu.build_engines import (
    FALLBACK_MODEL,
    MODELS,
    SOURCE,
    declared_tensors,
    gpu_config,
    main,
    onnx_path,
    onnxruntime_config,
    plan_path,
    reference_outputs,
    sample_inputs,
)
from tools.gpu.engine_fingerprint import fingerprint_path
from tools.gpu.tensorrt_engine import EngineBuildError, Gpu, TensorSpec
from tools.tiny_models import tiny_models

GPU = Gpu("10.14.1.48", "NVIDIA H100 80GB HBM3", "9.0")
PLAN_PREFIX = b"plan of "


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny untrained models with the serving interface and every precision form (seconds on the CPU)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.001, "reject_band": 0.002}))
    return tiny_models(folder)


class FakeTensorRT:
    """``tools.gpu.tensorrt_engine`` as ``build_engines`` uses it: builds "plans" that run as ONNX Runtime on the FP32
    form (so they match), except where told to fail the build or to answer wrongly."""

    def __init__(self, models: Path) -> None:
        self.models = models
        self.fail_build: dict[str, str] = {}  # model -> the builder's error
        self.wrong: set[str] = set()  # models whose engine answers off by half
        self.built: list[str] = []

    def build_plan(self, onnx_file: Path, profile: tuple[int, int, int]) -> bytes:
        name = onnx_file.name.split(".")[0]
        self.built.append(name)
        if name in self.fail_build:
            raise EngineBuildError(self.fail_build[name])
        return PLAN_PREFIX + name.encode()

    def run_plan(
        self, plan: bytes, batches: Sequence[Mapping[str, np.ndarray]], tensors: Mapping[str, list[TensorSpec]]
    ) -> list[dict[str, np.ndarray]]:
        name = plan.removeprefix(PLAN_PREFIX).decode()
        outputs = [spec.name for spec in tensors["output"]]
        results = [reference_outputs(onnx_path(self.models, name, "fp32"), batch, outputs) for batch in batches]
        if name in self.wrong:
            results = [{k: v * 1.5 + 1.0 for k, v in result.items()} for result in results]
        return results


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch, models: Path) -> FakeTensorRT:
    fake = FakeTensorRT(models)
    monkeypatch.setattr(build_engines, "probe_gpu", lambda device=0: GPU)
    monkeypatch.setattr(build_engines, "cuda_context", lambda device=0: contextlib.nullcontext())
    monkeypatch.setattr(build_engines, "build_plan", fake.build_plan)
    monkeypatch.setattr(build_engines, "run_plan", fake.run_plan)
    monkeypatch.setattr(build_engines, "sample_inputs", lambda name: sample_inputs(name, n=6))  # fewer dies: faster
    return fake


def _build(models: Path, out: Path, *flags: str) -> int:
    return main(["--models", str(models), "--out", str(out), "--max-batch", "4", *flags])


def _config(out: Path, name: str) -> str:
    return (out / name / "config.pbtxt").read_text()


def _outputs(path: Path) -> list[str]:
    return [output.name for output in onnx.load(str(path)).graph.output]


@pytest.fixture
def fallback_repo(trt: FakeTensorRT, models: Path, tmp_path: Path) -> Iterator[Path]:
    """A repository where the classifier's plan failed to build and the anomaly model's built and matched."""
    trt.fail_build["classifier"] = "classifier.int8.onnx: the TensorRT ONNX parser failed: Unsupported operator X"
    out = tmp_path / "repo"
    assert _build(models, out) == build_engines.EXIT_FALLBACK == 3
    yield out


def test_a_plan_that_does_not_build_is_served_by_onnxruntime_on_the_gpu_and_says_why(
    fallback_repo: Path, models: Path
) -> None:
    out = fallback_repo
    plan = plan_path(out, "classifier")
    assert plan.parent == out / "classifier" / "1"  # the version folder Triton loads
    assert not plan.exists() and not fingerprint_path(plan).exists()
    installed = plan.with_name(FALLBACK_MODEL)
    config = _config(out, "classifier")
    params = config_parameters(config)
    assert re.search(r'^platform: "onnxruntime_onnx"$', config, re.M) and "tensorrt_plan" not in config
    assert params["backend"] == "onnxruntime"
    assert params["backend_fallback"] == (
        "engine_build_failed: classifier.int8.onnx: the TensorRT ONNX parser failed: Unsupported operator X"
    )
    assert params["precision"] == "int8"  # the form it would have been built from, served as it is
    assert backend_from(params) == Backend("onnxruntime", params["backend_fallback"])
    # the GPU config's instances, batching, warm-up and tensors stay: only the runtime changed
    assert "instance_group [ { count: 1, kind: KIND_GPU } ]" in config
    assert re.search(r"^max_batch_size: 4$", config, re.M) and "dynamic_batching" in config
    assert re.findall(r"\bbatch_size: (\d+)", config) == ["1", "4"]
    # the served form: the int8 ONNX file with every output the config declares (EMBEDDING added)
    declared = declared_tensors(config)
    assert _outputs(installed) == [t.name for t in declared["output"]] == ["PROBS", "ATTENTION", "EMBEDDING"]
    assert "EMBEDDING" not in _outputs(onnx_path(models, "classifier", "int8"))  # added by the builder's served form
    session = ort.InferenceSession(str(installed), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [t.name for t in declared["input"]]
    results = session.run(None, sample_inputs("classifier", n=2))
    assert [r.shape[0] for r in results] == [2, 2, 2]
    # the other model built and matched: its plan, fingerprint and TensorRT config, no ONNX beside them
    anomaly = plan_path(out, "anomaly")
    assert anomaly.read_bytes() == b"plan of anomaly" and fingerprint_path(anomaly).is_file()
    assert not anomaly.with_name(FALLBACK_MODEL).exists()
    assert config_parameters(_config(out, "anomaly"))["backend"] == "tensorrt"
    assert 'platform: "tensorrt_plan"' in _config(out, "anomaly")


def test_the_build_log_says_the_model_is_not_served_by_tensorrt(
    trt: FakeTensorRT, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trt.fail_build["anomaly"] = "anomaly.fp16.onnx: TensorRT built no engine"
    assert _build(models, tmp_path / "repo") == 3
    err = capsys.readouterr().err
    assert "anomaly: NOT served by TensorRT: engine_build_failed: anomaly.fp16.onnx: TensorRT built no engine" in err
    assert "served by ONNX Runtime on the GPU instead of TensorRT: anomaly (exit 3)" in err


def test_a_plan_that_does_not_match_onnxruntime_is_not_installed_and_onnxruntime_serves(
    trt: FakeTensorRT, models: Path, tmp_path: Path
) -> None:
    trt.wrong.add("anomaly")
    out = tmp_path / "repo"
    assert _build(models, out) == 3
    assert not plan_path(out, "anomaly").exists()
    assert (
        plan_path(out, "anomaly").with_name(FALLBACK_MODEL).read_bytes()
        == onnx_path(models, "anomaly", "fp16").read_bytes()
    )
    params = config_parameters(_config(out, "anomaly"))
    assert params["backend"] == "onnxruntime"
    assert params["backend_fallback"].startswith("parity_failed: the fp16 engine does not match ONNX Runtime")
    assert "SCORE: relative error" in params["backend_fallback"]
    assert params["pass_band"] == "0.001"  # the bands travel with the fallback too
    assert backend_from(params).cause == "parity_failed"  # type: ignore[union-attr]
    assert plan_path(out, "classifier").is_file()


def test_an_engine_that_fails_on_the_verification_dies_is_a_parity_failure(
    trt: FakeTensorRT, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(plan: bytes, batches: object, tensors: object) -> list:
        raise EngineBuildError("engine tensors ['X'] are not the config's ['IMAGE', 'SCORE', 'HEATMAP']")

    monkeypatch.setattr(build_engines, "run_plan", broken)
    out = tmp_path / "repo"
    assert _build(models, out) == 3
    for name in MODELS:
        reason = config_parameters(_config(out, name))["backend_fallback"]
        assert reason.startswith("parity_failed: ") and "are not the config's" in reason


def test_a_fallback_is_stale_for_check_and_the_next_good_build_replaces_it(
    fallback_repo: Path, models: Path, trt: FakeTensorRT, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fallback_repo
    capsys.readouterr()
    assert _build(models, out, "--check") == 1
    report = capsys.readouterr().out
    [line] = [line for line in report.splitlines() if line.startswith("classifier:")]
    assert line.startswith("classifier: stale: plan file missing")
    assert "; served by ONNX Runtime, not a plan (engine_build_failed: classifier.int8.onnx: the TensorRT" in line
    assert "anomaly: up to date" in report
    trt.fail_build.clear()  # e.g. a TensorRT that parses the operator now
    trt.built.clear()
    assert _build(models, out) == 0
    assert trt.built == ["classifier"]  # retried; the current anomaly plan was left alone
    assert plan_path(out, "classifier").read_bytes() == b"plan of classifier"
    assert not plan_path(out, "classifier").with_name(FALLBACK_MODEL).exists()
    params = config_parameters(_config(out, "classifier"))
    assert params["backend"] == "tensorrt" and "backend_fallback" not in params
    assert 'platform: "tensorrt_plan"' in _config(out, "classifier")
    capsys.readouterr()
    assert _build(models, out, "--check") == 0
    assert capsys.readouterr().out.count("up to date") == len(MODELS)


def test_a_forced_rebuild_that_fails_keeps_the_current_plan_and_exits_1(
    trt: FakeTensorRT, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    assert _build(models, out) == 0
    trt.wrong.add("classifier")
    assert _build(models, out, "--force") == 1
    assert plan_path(out, "classifier").read_bytes() == b"plan of classifier"
    assert config_parameters(_config(out, "classifier"))["backend"] == "tensorrt"
    assert "the forced rebuild was not installed (parity_failed:" in capsys.readouterr().err


def test_the_onnxruntime_config_changes_the_platform_and_says_why_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.001, "reject_band": 0.002}))
    config = gpu_config("anomaly", SOURCE, tmp_path)
    fallback = onnxruntime_config(config, "parity_failed: SCORE: relative error 0.4 > 0.02")
    body = [line for line in fallback.splitlines() if not line.startswith("#")]
    original = [line for line in config.splitlines() if not line.startswith("#")]
    changed = [(a, b) for a, b in zip(original, body, strict=False) if a != b]
    assert changed == [('platform: "tensorrt_plan"', 'platform: "onnxruntime_onnx"')]
    assert body[len(original) :] == [
        'parameters { key: "backend", value: { string_value: "onnxruntime" } }',
        'parameters { key: "backend_fallback", value: { string_value: "parity_failed: SCORE: relative error 0.4 > 0.02"'
        " } }",
    ]
    with pytest.raises(ModelRepositoryError, match="tensorrt_plan"):
        onnxruntime_config(fallback, "again")


def test_a_long_builder_error_is_cut_in_the_config_and_kept_whole_in_the_log(
    trt: FakeTensorRT, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = "; ".join(f"node {i}: unsupported" for i in range(60))
    error = f"anomaly.fp16.onnx: the TensorRT ONNX parser failed: {nodes}"
    trt.fail_build["anomaly"] = error
    out = tmp_path / "repo"
    assert _build(models, out) == 3
    reason = config_parameters(_config(out, "anomaly"))["backend_fallback"]
    assert reason.startswith("engine_build_failed: anomaly.fp16.onnx: the TensorRT") and reason.endswith("...")
    assert len(reason) < len(error)
    assert f"anomaly: engine_build_failed: {error}" in capsys.readouterr().err
