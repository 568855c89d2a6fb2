"""The inspector against a fake Triton: retries with a doubling back-off while Triton cannot take the batch,
no retry of an error answer, the frames' deadline cuts the retries short, and every frame ends with an outcome."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import numpy.typing as npt
import pytest

from calibration.table import Bands, BandTable
from edge.config import parse_config
from edge.errors import EdgeError, InferenceFailed, TritonUnavailable
from edge.flow import Frame, FrameHeader, Tensors
from edge.inference.inspector import Inspector
from edge.inference.triton_client import AnomalyOut, ClassifierOut
from edge.models.served import Pair, Serving
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics

N_CLASSES = 16
DEFECT_CLASS = 5


class FlakyTriton:
    """Fails its first ``failures`` anomaly calls with ``error``, then answers: frame 0 GOOD, frame 1 a defect."""

    def __init__(self, failures: int, error: type[EdgeError] = TritonUnavailable) -> None:
        self.failures, self.error = failures, error
        self.calls: list[float] = []

    async def anomaly(self, grey: npt.NDArray[np.uint8], version: str = "") -> AnomalyOut:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.error("not now")
        n = len(grey)
        return AnomalyOut(np.full(n, 0.01, np.float32), np.zeros((n, 32, 32), np.float32))

    async def classify(
        self,
        rgb: npt.NDArray[np.uint8],
        process: npt.NDArray[np.float32],
        present: npt.NDArray[np.float32],
        notes: npt.NDArray[np.int64],
        version: str = "",
    ) -> ClassifierOut:
        probs = np.zeros((len(rgb), N_CLASSES), np.float32)
        probs[0, 0] = 1.0
        probs[1:, DEFECT_CLASS] = 1.0
        return ClassifierOut(probs, np.zeros((len(rgb), 64), np.float32))


def frames(deadline_s: float, n: int = 2) -> list[Frame]:
    now = time.monotonic()
    tensors = Tensors(np.zeros((3, 256, 256), np.uint8), np.zeros((1, 256, 256), np.uint8))
    return [
        Frame(
            b"id",
            FrameHeader(f"f{i}", "T1", "R", "L1", "W1", (i, 0), 0.0, "raw", None, None, None),
            tensors,
            now,
            now + deadline_s,
            0.0,
        )
        for i in range(n)
    ]


def inspector(triton: FlakyTriton, retries: int = 3) -> tuple[Inspector, Metrics]:
    cfg = parse_config(
        {"tools": [{"id": "T1"}], "recipes": {"R": {}}, "triton": {"retries": retries, "retry_backoff_ms": 20}}
    )
    metrics = Metrics()
    inspect = Inspector(cfg, triton, lambda recipe, tool, cls: 0.6, metrics, RateLimited(10.0))
    inspect.serving = Serving.single(Pair("1", {}, BandTable(Bands(0.1, 0.2))))
    return inspect, metrics


def counted(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_two_failures_are_retried_with_a_doubling_back_off() -> None:
    triton = FlakyTriton(failures=2)
    inspect, metrics = inspector(triton)
    outcomes = asyncio.run(inspect.inspect(frames(deadline_s=5.0)))
    assert [o.decision for o in outcomes] == ["PASS", "DEFECT"] and all(o.reason is None for o in outcomes)
    assert outcomes[1].verdict is not None and outcomes[1].verdict.defect_class == inspect.cfg.decision.classes[5]
    gaps = np.diff(triton.calls)
    assert len(triton.calls) == 3 and gaps[0] >= 0.02 and gaps[1] >= 0.04  # 20 ms, then 40 ms
    assert counted(metrics, "edge_inference_retries_total") == 2
    assert counted(metrics, "edge_inference_errors_total", {"reason": "triton_unavailable"}) == 2


def test_the_deadline_cuts_the_retries_short() -> None:
    triton = FlakyTriton(failures=100)
    inspect, _ = inspector(triton, retries=10)
    outcomes = asyncio.run(inspect.inspect(frames(deadline_s=0.05)))
    # tries at 0 and 20 ms; the next back-off (40 ms) would end past the 50 ms deadline
    assert len(triton.calls) == 2
    assert [(o.decision, o.reason) for o in outcomes] == [("NOT_INSPECTED", "triton_unavailable")] * 2


def test_retries_are_bounded_and_an_error_answer_is_not_retried() -> None:
    bounded = FlakyTriton(failures=100)
    inspect, _ = inspector(bounded, retries=2)
    assert {o.reason for o in asyncio.run(inspect.inspect(frames(deadline_s=5.0)))} == {"triton_unavailable"}
    assert len(bounded.calls) == 3
    refused = FlakyTriton(failures=1, error=InferenceFailed)
    inspect, metrics = inspector(refused)
    outcomes = asyncio.run(inspect.inspect(frames(deadline_s=5.0)))
    assert len(refused.calls) == 1 and {o.reason for o in outcomes} == {"inference_failed"}
    assert counted(metrics, "edge_inference_retries_total") == 0


@pytest.mark.parametrize("n", [1, 3])
def test_every_frame_gets_one_outcome_in_order(n: int) -> None:
    inspect, metrics = inspector(FlakyTriton(failures=0))
    batch = frames(deadline_s=5.0, n=n)
    outcomes = asyncio.run(inspect.inspect(batch))
    assert [o.frame for o in outcomes] == batch and all("infer" in f.timings for f in batch)
    assert counted(metrics, "edge_batch_size_count") == 1
