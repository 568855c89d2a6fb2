"""The image tensors through system shared memory against a real `tritonserver`: the same answers as plain gRPC,
regions registered only while the client is open, and a Triton that lost them (unregistered behind the client's
back, or restarted) costs a retry over gRPC and a registration, never a result."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry

from edge.inference.inputs import Images
from edge.inference.shared_memory import ImagePlan
from edge.inference.triton_client import AnomalyOut, ClassifierOut, TritonClient
from edge.ops.metrics import Metrics
from tests.triton_fixture import RunningTriton, make_server, served_repository
from tools.synth import Dataset, grey, make_dataset

pytestmark = pytest.mark.integration

BATCH = 32
SHM = Path("/dev/shm")
PLAN = ImagePlan.for_batches(BATCH, 2, 256, 256, {"anomaly": 1, "classifier": 3})


@pytest.fixture(scope="module")
def dies() -> Dataset:
    return make_dataset(seed=19, n=BATCH)


async def both(client: TritonClient, data: Dataset) -> tuple[AnomalyOut, ClassifierOut]:
    rgb = np.ascontiguousarray(data.images.transpose(0, 3, 1, 2))
    anomaly = await client.anomaly(Images(list(grey(data.images))))  # a frame's tensor each, as the daemon holds them
    classes = await client.classify(Images(list(rgb)), data.process, data.present, data.notes)
    return anomaly, classes


def assert_same(got: tuple[AnomalyOut, ClassifierOut], want: tuple[AnomalyOut, ClassifierOut]) -> None:
    np.testing.assert_array_equal(got[0].scores, want[0].scores)
    np.testing.assert_array_equal(got[0].heatmaps, want[0].heatmaps)
    np.testing.assert_array_equal(got[1].probs, want[1].probs)
    np.testing.assert_array_equal(got[1].attention, want[1].attention)


def registered(url: str, prefix: str) -> list[str]:
    """The regions of ours Triton holds, as another client sees them."""
    with grpcclient.InferenceServerClient(url) as other:
        status = other.get_system_shared_memory_status(as_json=True)
    return sorted(name for name in status.get("regions", {}) if name.startswith(prefix))


def shm_files(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM.glob(f"{prefix}-*"))


def requests(metrics: Metrics, transport: str) -> float:
    value = metrics.registry.get_sample_value("edge_triton_requests_total", {"transport": transport})
    return value or 0.0


def shm_client(url: str) -> tuple[TritonClient, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return TritonClient(url, "anomaly", "classifier", 10.0, plan=PLAN, metrics=metrics), metrics


def test_shared_memory_answers_exactly_as_grpc_and_its_regions_live_as_long_as_the_client(
    triton_server: RunningTriton, dies: Dataset
) -> None:
    url = triton_server.grpc_url

    async def run() -> None:
        plain = TritonClient(url, "anomaly", "classifier", 10.0)
        want = await both(plain, dies)
        await plain.close()
        client, metrics = shm_client(url)
        assert client.images is not None
        prefix = client.images.prefix
        got = await both(client, dies)
        assert_same(got, want)
        assert requests(metrics, "shared_memory") == 2 and requests(metrics, "grpc") == 0
        assert metrics.registry.get_sample_value("edge_triton_shared_memory") == 1
        assert metrics.registry.get_sample_value("edge_stage_cpu_seconds_total", {"stage": "infer"}) > 0
        assert registered(url, prefix) == sorted(client.images.names)
        assert shm_files(prefix) == sorted(client.images.names)
        await client.close()
        assert registered(url, prefix) == []
        assert shm_files(prefix) == []
        assert metrics.registry.get_sample_value("edge_triton_shared_memory") == 0

    asyncio.run(run())


def test_regions_unregistered_behind_the_clients_back_cost_one_grpc_retry_and_are_registered_again(
    triton_server: RunningTriton, dies: Dataset
) -> None:
    url = triton_server.grpc_url

    async def run() -> None:
        client, metrics = shm_client(url)
        assert client.images is not None
        want = await both(client, dies)
        with grpcclient.InferenceServerClient(url) as other:
            for name in client.images.names:
                other.unregister_system_shared_memory(name)
        assert registered(url, client.images.prefix) == []
        assert_same(await both(client, dies), want)  # the anomaly request found its region gone: retried on gRPC
        assert requests(metrics, "grpc") == 1
        assert registered(url, client.images.prefix) == sorted(client.images.names)
        assert_same(await both(client, dies), want)
        assert requests(metrics, "shared_memory") == 6 and requests(metrics, "grpc") == 1  # the lost try counted too
        await client.close()

    asyncio.run(run())


def test_a_restarted_triton_gets_the_regions_again_and_no_request_fails(tmp_path: Path, dies: Dataset) -> None:
    server = make_server(served_repository(), tmp_path)
    with server:
        url = server.grpc_url

        async def run() -> None:
            client, metrics = shm_client(url)
            assert client.images is not None
            want = await both(client, dies)
            server.stop()
            server.start()
            server.wait_ready()
            for _ in range(50):  # the channel reconnects within its back-off
                if await client.ready():
                    break
                await asyncio.sleep(0.2)
            assert registered(url, client.images.prefix) == []  # a fresh server knows none of them
            assert_same(await both(client, dies), want)
            assert requests(metrics, "grpc") == 1
            assert registered(url, client.images.prefix) == sorted(client.images.names)
            assert_same(await both(client, dies), want)
            assert requests(metrics, "shared_memory") == 6
            await client.close()
            assert shm_files(client.images.prefix) == []

        asyncio.run(run())
