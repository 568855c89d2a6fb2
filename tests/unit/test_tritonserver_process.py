"""Process supervision of `TritonServer`, with tiny shell scripts standing in for tritonserver."""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import pytest

from edge.errors import TritonServerError, TritonServerExited, TritonServerTimeout
from edge.serving.tritonserver import TritonServer, TritonServerSettings, free_ports, serve_forever


def fake_server(tmp_path: Path, script: str) -> TritonServerSettings:
    binary = tmp_path / "fake-tritonserver"
    binary.write_text("#!/bin/sh\n" + script + "\n")
    binary.chmod(0o755)
    grpc_port, http_port, metrics_port = free_ports(3)
    return TritonServerSettings(tmp_path, grpc_port, http_port, metrics_port, backend_dir=tmp_path, binary=binary)


def test_a_server_that_exits_is_fatal_and_the_error_shows_its_log(tmp_path: Path) -> None:
    server = TritonServer(fake_server(tmp_path, 'echo "error: model failed to load"; exit 3'), tmp_path / "log")
    server.start()
    with pytest.raises(TritonServerExited, match=r"code 3(.|\n)*model failed to load"):
        server.wait_ready(timeout_s=30)


def test_a_running_server_that_never_answers_times_out(tmp_path: Path) -> None:
    server = TritonServer(fake_server(tmp_path, "exec sleep 30"), tmp_path / "log")
    server.start()
    try:
        with pytest.raises(TritonServerTimeout):
            server.wait_ready(timeout_s=0.5)
    finally:
        assert server.stop() == -signal.SIGTERM


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    server = TritonServer(
        fake_server(tmp_path, "trap '' TERM; echo started; while :; do sleep 0.1; done"), tmp_path / "log"
    )
    server.start()
    deadline = time.monotonic() + 10
    while "started" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGTERM must arrive after the trap is set
    assert server.stop(timeout_s=0.5) == -signal.SIGKILL


def test_start_with_a_missing_binary_raises_a_project_error(tmp_path: Path) -> None:
    settings = dataclasses.replace(fake_server(tmp_path, ""), binary=tmp_path / "missing")
    server = TritonServer(settings, None)
    with pytest.raises(TritonServerError, match="cannot start"):
        server.start()


def test_serve_forever_returns_the_exit_code_of_the_server(tmp_path: Path) -> None:
    assert serve_forever(fake_server(tmp_path, "exit 7"), tmp_path / "log") == 7
