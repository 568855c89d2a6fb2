"""The daemon as a process before Triton is there: alive, not ready, and stoppable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from edge.serving.tritonserver import free_port
from tools.station.station import station_toml

pytestmark = pytest.mark.e2e


def http_get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_waiting_for_triton_it_is_alive_not_ready_and_sigterm_exits_cleanly(tmp_path):
    http_port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        station_toml(
            station="ST-9",
            frames=f"tcp://127.0.0.1:{free_port()}",
            feed=f"tcp://127.0.0.1:{free_port()}",
            http_port=http_port,
            grpc_url=f"127.0.0.1:{free_port()}",
            mqtt_port=None,
            outbox=tmp_path / "o.sqlite",
        )
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert http_get(http_port, "/healthz") == (200, {"alive": True})
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "no /healthz within 20 s"
                time.sleep(0.1)
        status, body = http_get(http_port, "/readyz")
        assert status == 503 and body["triton_ready"] is False and body["ready"] is False
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_an_invalid_config_stops_the_daemon_with_a_message_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[tools]]\nid = "AOI-01"\n[recipes.R1]\n[ingest]\nbnd = "tcp://127.0.0.1:1"\n')
    result = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "ingest.bnd" in result.stdout and "config_invalid" in result.stdout
