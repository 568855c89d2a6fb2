"""The null model repository the ceiling bench serves (``tools.bench.null_repository``): the served repository's
configs with the compute taken out, loaded by the real Triton, answering with the declared tensors, the same for the
same die, about one die in ten defective, the classifier's EMBEDDING included, and the daemon's model watch taking it
as it takes the real one (bands, contract, versions)."""

from __future__ import annotations

import asyncio
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
from tests.triton_fixture import make_server, served_repository
from tools.bench.null_repository import build
from tools.station.station import RECIPE, TOOLS

pytestmark = pytest.mark.integration


async def _serve(url: str, dies: np.ndarray) -> tuple[dict, list[tuple]]:
    client = TritonClient(url, "anomaly", "classifier", timeout_s=10)
    cfg = parse_config({"tools": [{"id": t} for t in TOOLS], "recipes": {RECIPE: {}}})
    health, metrics = Health(broker_required=False), Metrics()
    shared = Shared(cfg, metrics, health, None, RateLimited(10.0), None, None)  # type: ignore[arg-type]
    inspector = Inspector(cfg, client, lambda *_: 0.5, metrics, RateLimited(10.0))
    try:
        assert await ModelWatch(shared, client, inspector).wait_ready(asyncio.Event())
        found = []
        for chunk in np.split(dies, 8):  # batches of 25 (the configs take at most 32)
            grey = chunk.mean(axis=1, keepdims=True).astype(np.uint8)
            n = len(chunk)
            found.append(await asyncio.gather(
                client.anomaly(Images.of(grey)),
                client.classify(Images.of(chunk), np.zeros((n, 48), np.float32), np.zeros((n, 2), np.float32),
                                np.zeros((n, 32), np.int64)),
                client.classify(Images.of(chunk), np.ones((n, 48), np.float32), np.ones((n, 2), np.float32),
                                np.zeros((n, 32), np.int64)),
            ))  # fmt: skip
    finally:
        await client.close()
    return health.report(), found


def test_the_null_repository_serves_the_real_interface_without_the_compute(tmp_path: Path) -> None:
    source = served_repository()
    null = tmp_path / "null"
    assert build(source, null) == ["anomaly", "classifier"]
    assert (null / "classifier" / "config.pbtxt").read_text() == (source / "classifier" / "config.pbtxt").read_text()
    assert not list(null.glob("*/*/*.onnx"))  # the compute is gone
    dies = np.random.default_rng(3).integers(0, 256, (200, 3, 256, 256), dtype=np.uint8)

    with make_server(null, tmp_path) as server:
        report, found = asyncio.run(_serve(server.grpc_url, dies))

    assert set(report["models"]) == {"anomaly", "classifier"}
    for anomaly, classes, again in found:
        assert anomaly.scores.shape == (25,) and anomaly.heatmaps.shape == (25, 32, 32) and (anomaly.scores > 0).all()
        assert classes.probs.shape == (25, 16) and np.allclose(classes.probs.sum(axis=1), 1.0, atol=1e-5)
        assert classes.attention.shape == (25, 64) and classes.embedding is not None and len(classes.embedding) == 25
        assert np.array_equal(classes.probs, again.probs)  # the answer follows the image alone
    defective = sum(int((classes.probs[:, 0] < 0.5).sum()) for _, classes, _ in found)
    assert 5 <= defective <= 40  # about one die in ten
