"""The CPU model repository served by a real `tritonserver` (the nvidia-pytriton wheel's binary)."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from edge.inference.model_facts import Precision, precision_from
from edge.inference.triton_client import TritonClient
from edge.models.repository import publish, seal
from tests.triton_fixture import RunningTriton, make_server, served_repository
from tools.build_repository import SOURCE, build_model
from tools.precision_gate import REPORT, onnx_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = {"anomaly": ("SCORE", "HEATMAP"), "classifier": ("PROBS", "ATTENTION")}
CONCURRENT_REQUESTS = 16
EXIT_WAIT_S = 30.0
STATS_SETTLE_S = 0.2


def anomaly_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"IMAGE": rng.integers(0, 256, (batch, 1, 256, 256), dtype=np.uint8)}


def classifier_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "IMAGE": rng.integers(0, 256, (batch, 3, 256, 256), dtype=np.uint8),
        "PROCESS": rng.normal(size=(batch, 48)).astype(np.float32),
        "PRESENT": rng.integers(0, 2, (batch, 2)).astype(np.float32),
        "NOTES": np.zeros((batch, 32), dtype=np.int64),
    }


INPUTS = {"anomaly": anomaly_inputs, "classifier": classifier_inputs}


def request(model: str, arrays: dict[str, np.ndarray]) -> tuple[list, list]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs, [grpcclient.InferRequestedOutput(name) for name in OUTPUTS[model]]


def infer(client: grpcclient.InferenceServerClient, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    inputs, outputs = request(model, arrays)
    result = client.infer(model, inputs, outputs=outputs)
    return {name: result.as_numpy(name) for name in OUTPUTS[model]}


@pytest.fixture(scope="module")
def client(triton_server: RunningTriton) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        yield client


def test_both_models_are_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_ready()
    assert client.is_model_ready("anomaly") and client.is_model_ready("classifier")


@pytest.mark.parametrize("batch", [1, 5])
def test_anomaly_returns_a_score_and_heatmap_per_image(client: grpcclient.InferenceServerClient, batch: int) -> None:
    out = infer(client, "anomaly", anomaly_inputs(batch, np.random.default_rng(batch)))
    assert out["SCORE"].shape == (batch, 1) and out["SCORE"].dtype == np.float32
    assert out["HEATMAP"].shape == (batch, 32, 32) and out["HEATMAP"].dtype == np.float32
    assert np.all(out["SCORE"] >= 0) and np.all(np.isfinite(out["HEATMAP"]))


@pytest.mark.parametrize("batch", [1, 5])
def test_classifier_returns_distributions_per_image(client: grpcclient.InferenceServerClient, batch: int) -> None:
    out = infer(client, "classifier", classifier_inputs(batch, np.random.default_rng(batch)))
    assert out["PROBS"].shape == (batch, 16) and out["PROBS"].dtype == np.float32
    assert out["ATTENTION"].shape == (batch, 64) and out["ATTENTION"].dtype == np.float32
    np.testing.assert_allclose(out["PROBS"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["ATTENTION"].sum(axis=1), 1.0, rtol=1e-5)


def settled_counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inferences, executions) of `model` once two reads agree: Triton records statistics after responding."""
    previous = None
    while True:
        stats = client.get_inference_statistics(model).model_stats[0]
        counts = (stats.inference_count, stats.execution_count)
        if counts == previous:
            return counts
        previous = counts
        time.sleep(STATS_SETTLE_S)


@pytest.mark.parametrize("model", ["anomaly", "classifier"])
def test_concurrent_requests_are_batched_and_answered_per_request(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    """Requests in flight together run as fewer model executions, yet each gets its own single-request result."""
    rng = np.random.default_rng(7)
    payloads = [INPUTS[model](1, rng) for _ in range(CONCURRENT_REQUESTS)]
    alone = [infer(client, model, arrays) for arrays in payloads]
    inferences_before, executions_before = settled_counts(client, model)

    answers: queue.Queue[tuple[int, object, object]] = queue.Queue()
    for index, arrays in enumerate(payloads):
        inputs, outputs = request(model, arrays)
        client.async_infer(
            model,
            inputs,
            outputs=outputs,
            callback=lambda result, error, index=index: answers.put((index, result, error)),
        )
    together: dict[int, dict[str, np.ndarray]] = {}
    for _ in payloads:
        index, result, error = answers.get(timeout=60)
        assert error is None, error
        together[index] = {name: result.as_numpy(name) for name in OUTPUTS[model]}  # type: ignore[attr-defined]

    inferences_after, executions_after = settled_counts(client, model)
    assert inferences_after - inferences_before == CONCURRENT_REQUESTS
    assert executions_after - executions_before < CONCURRENT_REQUESTS
    for index, expected in enumerate(alone):
        for name in OUTPUTS[model]:
            np.testing.assert_allclose(together[index][name], expected[name], rtol=1e-4, atol=1e-6)


def test_anomaly_config_carries_the_decision_bands(client: grpcclient.InferenceServerClient) -> None:
    parameters = client.get_model_config("anomaly", as_json=True)["config"]["parameters"]
    pass_band = float(parameters["pass_band"]["string_value"])
    reject_band = float(parameters["reject_band"]["string_value"])
    assert 0 <= pass_band < reject_band


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group `pgid` that are not zombies."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_until_gone(pgid: int, timeout_s: float = EXIT_WAIT_S) -> list[int]:
    """Wait for group `pgid` to have no live member; return what is left at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (left := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    """The server and its Python-backend stubs are all gone once `stop` returns."""
    with make_server(served_repository(), tmp_path) as server:
        assert server.pid is not None
        pgid = server.pid
        assert len(live_group_members(pgid)) >= 3  # the server and one stub per model
    assert live_group_members(pgid) == []


HELPER = """
import sys, time
from pathlib import Path
from tests.triton_fixture import make_server
server = make_server(Path(sys.argv[1]), Path(sys.argv[2]))
server.start()
server.wait_ready()
print(server.pid, flush=True)
time.sleep(600)
"""


def test_server_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no cleanup code runs) still takes tritonserver and its stubs down."""
    parent = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(served_repository()), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), f"helper did not start a server: {line!r}"
        pgid = int(line)
        assert live_group_members(pgid)
    finally:
        parent.kill()
        parent.wait()
    assert wait_until_gone(pgid) == []


def test_a_precision_fallback_travels_through_triton_to_the_daemon_client(tmp_path: Path) -> None:
    """A classifier asked for in INT8 whose INT8 form missed the gate is served in FP16, and the daemon's client reads
    the served precision, what was asked and why from Triton (quotes and backslashes in the reason included)."""
    source = ROOT / "build" / "models"
    if not (source / REPORT).is_file():
        pytest.fail(f"{source / REPORT} is missing: run `make models`", pytrace=False)
    models = tmp_path / "models"
    models.mkdir()
    for form in ("fp32", "fp16", "int8"):
        (models / onnx_path(source, "classifier", form).name).symlink_to(onnx_path(source, "classifier", form))
    report = json.loads((source / REPORT).read_text())
    report["models"]["classifier"]["int8"]["gate"] = {
        "passed": False,
        "failures": ['escape_rate 0.01 -> 0.03 (allowed +0.005) on "held-out" dies \\ seed 1'],
    }
    (models / REPORT).write_text(json.dumps(report))
    partial, choice = build_model("classifier", SOURCE, models, tmp_path / "repo", 1, "int8")
    seal(partial, 1)
    publish(tmp_path / "repo", ["classifier"])
    assert choice.served == "fp16"

    async def read(url: str) -> dict[str, str]:
        client = TritonClient(url, "anomaly", "classifier", timeout_s=10)
        try:
            return await client.config_parameters("classifier")
        finally:
            await client.close()

    with make_server(tmp_path / "repo", tmp_path) as server:
        parameters = asyncio.run(read(server.grpc_url))
    assert precision_from(parameters) == Precision("fp16", "int8", choice.fallback)
    assert '"held-out" dies \\ seed 1' in parameters["precision_fallback"]
