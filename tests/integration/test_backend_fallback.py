"""A GPU station whose GPU is gone: the CPU variant that ``tools.gpu.station_repository`` prepares is served by a real
`tritonserver` (the nvidia-pytriton wheel's) through the served link, answers, and the daemon's model watch reads
from Triton that it is a fallback: ``/readyz``'s ``backend`` and ``edge_model_backend_info`` say so."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from edge.config import parse_config
from edge.inference.inputs import Images
from edge.inference.inspector import Inspector
from edge.inference.model_watch import ModelWatch
from edge.inference.triton_client import TritonClient
from edge.ops.http import Health
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics
from edge.shared import Shared
from tests.triton_fixture import make_server
from tools.gpu import station_repository
from tools.gpu.station_repository import GpuSigns
from tools.tiny_models import tiny_models

pytestmark = pytest.mark.integration


async def _watch(url: str) -> tuple[Health, Metrics, float]:
    """The daemon's model watch on Triton at ``url``: what it reports, and one anomaly score through the client."""
    client = TritonClient(url, "anomaly", "classifier", timeout_s=10)
    cfg = parse_config({"tools": [{"id": "T1"}], "recipes": {"R1": {}}})
    health, metrics = Health(broker_required=False), Metrics()
    shared = Shared(cfg, metrics, health, None, RateLimited(10.0), None, None)  # type: ignore[arg-type]
    inspector = Inspector(cfg, client, lambda *_: 0.5, metrics, RateLimited(10.0))
    try:
        assert await ModelWatch(shared, client, inspector).wait_ready(asyncio.Event())
        scored = await client.anomaly(Images.of(np.zeros((2, 1, 256, 256), np.uint8)))
    finally:
        await client.close()
    return health, metrics, float(scored.scores[0])


def test_the_cpu_variant_serves_when_the_gpu_is_gone_and_the_daemon_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.001, "reject_band": 0.002}))
    tiny_models(models)
    monkeypatch.setattr(station_repository, "look_for_gpu", lambda: GpuSigns(()))
    served = tmp_path / "triton" / "model_repository"
    assert station_repository.main(["--models", str(models), "--out", str(served)]) == 3

    with make_server(served, tmp_path) as server:
        health, metrics, score = asyncio.run(_watch(server.grpc_url))

    reason = "no_gpu: no /dev/nvidia<N> device node (no NVIDIA driver loaded, or no GPU given to this container)"
    assert health.report()["backend"] == {
        "anomaly": {"served": "onnxruntime_cpu", "fallback": reason},
        "classifier": {"served": "onnxruntime_cpu", "fallback": reason},
    }
    for model in ("anomaly", "classifier"):
        labels = {"model": model, "backend": "onnxruntime_cpu", "fallback": "no_gpu"}
        assert metrics.registry.get_sample_value("edge_model_backend_info", labels) == 1
    assert health.ready and np.isfinite(score)
