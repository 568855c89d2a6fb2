"""Health endpoint: /readyz reports the state the pipeline sets; /metrics is Prometheus text."""

import asyncio
import json

from edge.ops.http import Health, HttpServer
from edge.ops.metrics import Metrics


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_readyz_follows_health_and_metrics_are_served():
    async def scenario():
        metrics, health = Metrics(), Health(broker_required=True)
        server = HttpServer("127.0.0.1", 0, metrics.registry, health)
        port = await server.start()
        status, body = await get(port, "/readyz")
        assert status == 503 and json.loads(body)["triton_ready"] is False
        health.triton_ready = health.broker_connected = True
        status, body = await get(port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        metrics.frames_rejected.labels("bad_msgpack").inc()
        status, body = await get(port, "/metrics")
        assert status == 200 and b'edge_frames_rejected_total{reason="bad_msgpack"} 1.0' in body
        assert (await get(port, "/healthz"))[0] == 200
        assert (await get(port, "/nope"))[0] == 404
        health.draining = True
        assert (await get(port, "/readyz"))[0] == 503
        await server.close()

    asyncio.run(scenario())


def test_healthz_fails_once_a_critical_task_has_ended():
    async def scenario():
        metrics, health = Metrics(), Health(broker_required=False)
        health.triton_ready = True
        server = HttpServer("127.0.0.1", 0, metrics.registry, health)
        port = await server.start()
        assert (await get(port, "/readyz"))[0] == 200
        health.stalled.append("intake")
        status, body = await get(port, "/healthz")
        assert status == 503 and json.loads(body) == {"alive": False, "stalled": ["intake"]}
        status, body = await get(port, "/readyz")
        assert status == 503 and json.loads(body)["stalled"] == ["intake"]
        await server.close()

    asyncio.run(scenario())
