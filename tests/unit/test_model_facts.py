"""What a served model says about itself in its Triton config parameters (bands, precision, backend), and the daemon
reporting it: /readyz, the backend info metric, a warning for a model on a fallback."""

import asyncio
import json

import pytest

from calibration.table import Bands
from edge.config import parse_config
from edge.inference import model_watch
from edge.inference.inspector import Inspector
from edge.inference.model_facts import (
    ENGINE_BUILD_FAILED,
    FALLBACK_DETAIL_CHARS,
    PARITY_FAILED,
    Backend,
    Precision,
    backend_from,
    bands_from,
    fallback_reason,
    precision_from,
)
from edge.inference.model_watch import ModelWatch
from edge.ops.http import Health, HttpServer
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics
from edge.process_params import DEFAULT_PARAMETERS
from edge.shared import Shared
from edge.taxonomy import DEFAULT_CLASSES
from tests.unit.test_http import get
from tools.build_repository import contract_parameters


def test_bands_are_read_when_both_are_numbers():
    assert bands_from({"pass_band": "0.01", "reject_band": "0.02"}) == Bands(0.01, 0.02)
    assert bands_from({"pass_band": "0.01"}) is None
    assert bands_from({"pass_band": "x", "reject_band": "0.02"}) is None


def test_precision_with_a_fallback_names_what_was_asked_and_why():
    params = {
        "precision": "fp16",
        "precision_requested": "int8",
        "precision_fallback": "int8: escape_rate 0.01 -> 0.02 (allowed +0.005)",
    }
    assert precision_from(params) == Precision("fp16", "int8", "int8: escape_rate 0.01 -> 0.02 (allowed +0.005)")
    assert precision_from({"precision": "fp32"}) == Precision("fp32", "fp32", None)
    assert precision_from({"pass_band": "0.1"}) is None  # a repository built before models declared it


def readyz(health: Health) -> tuple[int, dict]:
    """``/readyz`` over real HTTP for ``health``."""

    async def scenario():
        server = HttpServer("127.0.0.1", 0, Metrics().registry, health)
        port = await server.start()
        status, body = await get(port, "/readyz")
        await server.close()
        return status, json.loads(body)

    return asyncio.run(scenario())


def test_readyz_reports_the_served_precision_and_its_fallback():
    health = Health(triton_ready=True, broker_required=False)
    health.precision = {"classifier": Precision("fp16", "int8", "int8: top1_changes 0 -> 0.3").report()}
    status, body = readyz(health)
    assert status == 200
    assert body["precision"] == {
        "classifier": {"served": "fp16", "requested": "int8", "fallback": "int8: top1_changes 0 -> 0.3"}
    }


def test_readyz_reports_each_models_backend_and_its_fallback():
    health = Health(triton_ready=True, broker_required=False)
    health.backend = {"anomaly": Backend("onnxruntime_cpu", "no_gpu: nvidia-smi failed (exit 9)").report()}
    status, body = readyz(health)
    assert status == 200  # a model on a fallback still serves: reported, not a reason to refuse frames
    fallback = "no_gpu: nvidia-smi failed (exit 9)"
    assert body["backend"] == {"anomaly": {"served": "onnxruntime_cpu", "fallback": fallback}}


def test_backend_names_what_serves_the_model_and_why_it_fell_back():
    reason = fallback_reason(PARITY_FAILED, "the fp16 engine does not match ONNX Runtime on anomaly.onnx:\n SCORE")
    assert reason == "parity_failed: the fp16 engine does not match ONNX Runtime on anomaly.onnx: SCORE"
    backend = backend_from({"backend": "onnxruntime", "backend_fallback": reason})
    assert backend == Backend("onnxruntime", reason) and backend.cause == "parity_failed"
    assert backend.report() == {"served": "onnxruntime", "fallback": reason}
    assert backend_from({"backend": "tensorrt"}) == Backend("tensorrt") and Backend("tensorrt").cause == ""
    assert backend_from({"precision": "fp32"}) is None  # the CPU repository as `make models` builds it says nothing
    assert Backend("onnxruntime", "the dog ate the plan").cause == "other"  # a bounded label, whatever the text


def test_a_fallback_reason_is_one_bounded_line_with_a_known_cause():
    long = fallback_reason(ENGINE_BUILD_FAILED, "parser: " + "x" * 1000)
    assert long.startswith("engine_build_failed: parser: x") and long.endswith("...") and "\n" not in long
    assert len(long) == len("engine_build_failed: ") + FALLBACK_DETAIL_CHARS
    with pytest.raises(ValueError, match="unknown fallback cause 'gpu_melted'"):
        fallback_reason("gpu_melted", "")


class Triton:
    """Triton as the model watch sees it, serving version 1 of both models with the given config parameters."""

    anomaly_model, classifier_model = "anomaly", "classifier"

    def __init__(self, params: dict[str, dict[str, str]]) -> None:
        self.params = params

    async def ready(self) -> bool:
        return True

    async def model_versions(self) -> dict[str, list[str]]:
        return {"anomaly": ["1"], "classifier": ["1"]}

    async def config_parameters(self, model: str) -> dict[str, str]:
        return self.params[model]


class Lines:
    """The model watch's logger, recording what it says."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((level, event, fields))


def test_the_daemon_reports_each_models_backend_on_readyz_and_the_info_metric(monkeypatch):
    lines = Lines()
    monkeypatch.setattr(model_watch, "log", lines)
    reason = "engine_build_failed: classifier.int8.onnx: the TensorRT ONNX parser failed"
    served = Triton({
        "anomaly": {"pass_band": "0.01", "reject_band": "0.02", "backend": "tensorrt"},
        "classifier": {**contract_parameters(DEFAULT_CLASSES, DEFAULT_PARAMETERS), "backend": "onnxruntime",
                       "backend_fallback": reason},
    })  # fmt: skip
    cfg = parse_config({"tools": [{"id": "T1"}], "recipes": {"R1": {}}})
    health, metrics = Health(broker_required=False), Metrics()
    shared = Shared(cfg, metrics, health, None, RateLimited(10.0), None, None)  # type: ignore[arg-type]
    inspector = Inspector(cfg, served, lambda *_: 0.5, metrics, RateLimited(10.0))  # type: ignore[arg-type]
    watch = ModelWatch(shared, served, inspector)
    assert asyncio.run(watch.wait_ready(asyncio.Event()))

    assert health.report()["backend"] == {
        "anomaly": {"served": "tensorrt", "fallback": None},
        "classifier": {"served": "onnxruntime", "fallback": reason},
    }
    sample = metrics.registry.get_sample_value
    assert sample("edge_model_backend_info", {"model": "anomaly", "backend": "tensorrt", "fallback": ""}) == 1
    fell_back = {"model": "classifier", "backend": "onnxruntime", "fallback": "engine_build_failed"}
    assert sample("edge_model_backend_info", fell_back) == 1
    assert lines.lines == [
        ("warning", "model_backend_fallback", {"model": "classifier", "backend": "onnxruntime", "reason": reason})
    ]

    # Triton comes back on the CPU variant (the GPU is gone): the report and the metric follow, the old series goes
    served.params = {name: {**params, "backend": "onnxruntime_cpu", "backend_fallback": "no_gpu: nvidia-smi failed"}
                     for name, params in served.params.items()}  # fmt: skip
    health.triton_ready = False
    asyncio.run(watch.check())
    assert {name: b["served"] for name, b in health.report()["backend"].items()} == {
        "anomaly": "onnxruntime_cpu",
        "classifier": "onnxruntime_cpu",
    }
    series = [s.labels for m in metrics.registry.collect() if m.name == "edge_model_backend_info" for s in m.samples]
    assert sorted(series, key=lambda labels: labels["model"]) == [
        {"model": "anomaly", "backend": "onnxruntime_cpu", "fallback": "no_gpu"},
        {"model": "classifier", "backend": "onnxruntime_cpu", "fallback": "no_gpu"},
    ]
