"""TensorRT engines built on this GPU from the ONNX forms: parity with ONNX Runtime, fingerprints, the rebuild rule.

Needs the TensorRT Python bindings, pycuda and a CUDA device (the station image has all three); skips otherwise.
Uses build/models when `make models` has written every ONNX form, else tiny untrained models exported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT Python bindings not installed", exc_type=ImportError)
cuda = pytest.importorskip("pycuda.driver", reason="pycuda (or the CUDA driver library) missing", exc_type=ImportError)

from tools.build_repository import served_precision  # noqa: E402
from tools.gpu.build_engines import (  # noqa: E402 - after the skips: nothing below runs without TensorRT
    DEFAULT_PRECISION,
    MODELS,
    SOURCE,
    TOLERANCES,
    compare_outputs,
    declared_tensors,
    main,
    onnx_path,
    plan_path,
    profile_for,
    reference_outputs,
    sample_inputs,
    verify_plan,
)
from tools.gpu.engine_fingerprint import fingerprint_path, onnx_sha256, read_fingerprint  # noqa: E402
from tools.gpu.tensorrt_engine import EngineBuildError, build_plan, cuda_context, probe_gpu, run_plan  # noqa: E402
from tools.precision_gate import PRECISIONS  # noqa: E402


def _device_count() -> int:
    try:
        cuda.init()
        return cuda.Device.count()
    except cuda.Error as exc:
        pytest.skip(f"no usable CUDA driver: {exc}", allow_module_level=True)
    return 0


if _device_count() == 0:
    pytest.skip("no CUDA device visible", allow_module_level=True)

BUILT = Path(__file__).resolve().parents[2] / "build" / "models"
PROFILE = profile_for(8)  # small profile for the per-precision builds: parity does not depend on the max batch


def _tensors(name: str) -> dict:
    return declared_tensors((SOURCE / name / "config.pbtxt").read_text())


def _complete(folder: Path) -> bool:
    forms = [onnx_path(folder, name, precision) for name in MODELS for precision in PRECISIONS]
    return (folder / "anomaly_metrics.json").is_file() and all(path.is_file() for path in forms)


def _tiny_models(out: Path) -> Path:
    """Untrained models with the serving interface, exported and quantized like the real ones."""
    pytest.importorskip("torch", reason="build/models is incomplete (`make models`) and torch is missing")
    from tools.tiny_models import tiny_models

    (out / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.001, "reject_band": 0.002}))
    return tiny_models(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BUILT if _complete(BUILT) else _tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def repository(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GPU repository as `python -m tools.gpu.build_engines` writes it (default precisions, max batch 32)."""
    out = tmp_path_factory.mktemp("repository")
    assert main(["--models", str(models), "--out", str(out)]) == 0
    return out


def test_build_installs_plans_with_fingerprints_of_this_gpu_and_configs(repository: Path, models: Path) -> None:
    gpu = probe_gpu()
    for name in MODELS:
        precision = served_precision(name, models, DEFAULT_PRECISION[name]).served  # the default, unless it failed
        recorded = read_fingerprint(plan_path(repository, name))
        assert plan_path(repository, name).stat().st_size > 0
        assert (recorded.tensorrt_version, recorded.gpu_name) == (trt.__version__, gpu.name)
        assert recorded.compute_capability == gpu.compute_capability
        assert recorded.onnx_sha256 == onnx_sha256(onnx_path(models, name, precision))
        assert (recorded.precision, recorded.profile_batch_sizes) == (precision, (1, 16, 32))
        config = (repository / name / "config.pbtxt").read_text()
        assert 'platform: "tensorrt_plan"' in config
        assert f'key: "precision", value: {{ string_value: "{precision}" }}' in config
    bands = json.loads((models / "anomaly_metrics.json").read_text())
    config = (repository / "anomaly" / "config.pbtxt").read_text()
    assert f'string_value: "{float(bands["pass_band"])!r}"' in config


def test_a_second_run_rebuilds_nothing(repository: Path, models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {name: plan_path(repository, name).stat().st_mtime_ns for name in MODELS}
    assert main(["--models", str(models), "--out", str(repository)]) == 0
    assert {name: plan_path(repository, name).stat().st_mtime_ns for name in MODELS} == before
    assert main(["--models", str(models), "--out", str(repository), "--check"]) == 0
    assert capsys.readouterr().out.count("up to date") == 2 * len(MODELS)


def test_a_changed_fingerprint_is_reported_then_rebuilt(
    repository: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = fingerprint_path(plan_path(repository, "classifier"))
    data = json.loads(recorded.read_text())
    recorded.write_text(json.dumps({**data, "tensorrt_version": "0.0.0.0"}))
    capsys.readouterr()
    assert main(["--models", str(models), "--out", str(repository), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"classifier: stale: TensorRT version: 0.0.0.0 -> {trt.__version__}" in out
    assert "anomaly: up to date" in out
    assert main(["--models", str(models), "--out", str(repository)]) == 0
    assert json.loads(recorded.read_text()) == data


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_onnxruntime_at_every_precision(models: Path, name: str, precision: str) -> None:
    with cuda_context():
        plan = build_plan(onnx_path(models, name, precision), PROFILE)
        parity = verify_plan(name, plan, models, precision, _tensors(name), PROFILE)
    assert parity.ok, parity.problems
    assert set(parity.relative_error) == {spec.name for spec in _tensors(name)["output"]}


def test_parity_check_tells_a_wrong_answer_from_a_right_one(models: Path) -> None:
    tensors, outputs = _tensors("anomaly"), ["SCORE", "HEATMAP"]
    right, wrong = sample_inputs("anomaly", n=8), sample_inputs("anomaly", n=8, seed=1)
    reference = reference_outputs(onnx_path(models, "anomaly", "fp32"), right, outputs)
    with cuda_context():
        plan = build_plan(onnx_path(models, "anomaly", "fp32"), PROFILE)
        on_right, on_wrong = run_plan(plan, [right, wrong], tensors)
    assert compare_outputs(on_right, reference, TOLERANCES["fp32"]).ok
    assert not compare_outputs(on_wrong, reference, TOLERANCES["fp32"]).ok
    assert np.isfinite(on_right["HEATMAP"]).all()


def test_engine_with_another_interface_is_refused(models: Path) -> None:
    with cuda_context():
        plan = build_plan(onnx_path(models, "anomaly", "fp32"), PROFILE)
        with pytest.raises(EngineBuildError, match="are not the config's"):
            run_plan(plan, [sample_inputs("classifier", n=1)], _tensors("classifier"))
