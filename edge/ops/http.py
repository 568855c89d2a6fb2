"""Tiny HTTP endpoint for fab ops: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz``.

Health is state the pipeline sets (``Health``); this server only reports it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class Health:
    triton_ready: bool = False
    models: dict[str, str] = field(default_factory=dict)  # model -> the live version
    serving: dict[str, Any] = field(default_factory=dict)  # the route and each served version's facts
    precision: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> served, requested, fallback
    backend: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> served (its runtime), fallback (why)
    broker_connected: bool = False
    broker_required: bool = True
    draining: bool = False
    outbox_full: bool = False
    stalled: list[str] = field(default_factory=list)  # critical tasks that ended: the daemon is not alive
    mes_silent: list[str] = field(default_factory=list)  # tools whose frames go on without waiting for MES logs

    @property
    def alive(self) -> bool:
        return not self.stalled

    @property
    def ready(self) -> bool:
        return (
            self.alive
            and self.triton_ready
            and (self.broker_connected or not self.broker_required)
            and not self.draining
            and not self.outbox_full
        )

    def report(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "triton_ready": self.triton_ready,
            "models": self.models,
            "serving": self.serving,
            "precision": self.precision,
            "backend": self.backend,
            "broker_connected": self.broker_connected,
            "draining": self.draining,
            "outbox_full": self.outbox_full,
            "stalled": self.stalled,
            "mes_silent": self.mes_silent,
        }


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self._host, self._port = host, port
        self._registry = registry
        self._health = health
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        port: int = self._server.sockets[0].getsockname()[1]  # (host, port, ...) of the bound socket
        return port

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, ctype, body = self._route(method, path.split("?", 1)[0])
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a broken client request gets no answer; the server goes on
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            if self._health.alive:
                return "200 OK", "application/json", b'{"alive": true}\n'
            body = {"alive": False, "stalled": self._health.stalled}
            return "503 Service Unavailable", "application/json", json.dumps(body).encode() + b"\n"
        if path == "/readyz":
            report = self._health.report()
            status = "200 OK" if report["ready"] else "503 Service Unavailable"
            return status, "application/json", json.dumps(report).encode() + b"\n"
        return "404 Not Found", "text/plain", b"not found\n"
