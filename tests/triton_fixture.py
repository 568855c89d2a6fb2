"""A real `tritonserver` for tests: import `triton_server` (or build one with `triton_server_fixture`) in a conftest.

The served repository is `build/model_repository` (made by `make models`), or the folder named by the
environment variable `EDGE_TEST_MODEL_REPOSITORY`. A missing repository fails the test: it is never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from edge.serving.tritonserver import TritonServer, free_ports, wheel_settings

REPOSITORY_ENV = "EDGE_TEST_MODEL_REPOSITORY"
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "build" / "model_repository"
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunningTriton:
    """Where a test finds the server started by the fixture."""

    grpc_url: str  # "127.0.0.1:PORT", as tritonclient.grpc wants it
    http_port: int
    metrics_port: int
    log_path: Path
    pid: int
    repository: Path


def served_repository() -> Path:
    """The repository the tests serve; `pytest.fail` (not skip) with the fix when it is missing."""
    repository = Path(os.environ.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY).resolve()
    if not any(repository.glob("*/config.pbtxt")):
        pytest.fail(
            f"no Triton model repository at {repository}: run `make models` "
            f"(or point {REPOSITORY_ENV} at an assembled repository)",
            pytrace=False,
        )
    return repository


def make_server(repository: Path, workdir: Path) -> TritonServer:
    """The wheel's server on free ports serving `repository`, logging under `workdir` (not started)."""
    grpc_port, http_port, metrics_port = free_ports(3)
    settings = wheel_settings(repository, grpc_port, http_port, metrics_port, workdir / "backends")
    return TritonServer(settings, workdir / "tritonserver.log", ready_timeout_s=READY_TIMEOUT_S)


def triton_server_fixture(scope: Literal["session", "package", "module"] = "session") -> Any:
    """A fixture (named by the variable it is bound to) that runs one server for `scope`."""

    @pytest.fixture(scope=scope)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
        repository = served_repository()
        with make_server(repository, tmp_path_factory.mktemp("tritonserver")) as server:
            assert server.pid is not None and server.log_path is not None
            yield RunningTriton(
                grpc_url=server.grpc_url,
                http_port=server.settings.http_port,
                metrics_port=server.settings.metrics_port,
                log_path=server.log_path,
                pid=server.pid,
                repository=repository,
            )

    return fixture


triton_server = triton_server_fixture()
