"""``edge-inspect rebaseline`` against a real Mosquitto: the command reaches the station's topic once the
broker acknowledges it; a command the daemon would refuse is refused before sending; a broker that
cannot be reached is a failure that says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.serving.tritonserver import free_port
from tools.sim.mqtt_peer import Peer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOPIC = "fab/edge/ST-07/rebaseline"


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(f'station = "ST-07"\n[[tools]]\nid = "AOI-01"\n[recipes.M1]\n[recipes.M2]\n[mqtt]\nport = {port}\n')
    return path


def rebaseline(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", "rebaseline", "--config", str(cfg), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_reaches_the_station_topic(mosquitto, tmp_path):
    engineers = Peer("127.0.0.1", mosquitto.port, "listener", (TOPIC,)).wait_connected()
    done = rebaseline(
        config(tmp_path, mosquitto.port),
        "--tool",
        "AOI-01",
        "--recipe",
        "M2",
        "--by",
        "j.doe",
        "--reason",
        "PM: lamp replaced",
    )
    assert done.returncode == 0, done.stderr
    assert engineers.wait_for(lambda messages: len(messages) == 1, 10)
    [body] = engineers.json_messages(TOPIC)
    engineers.close()
    assert body["schema"] == "edge.rebaseline/1" and body["tool_id"] == "AOI-01" and body["recipe_id"] == "M2"
    assert body["by"] == "j.doe" and body["reason"] == "PM: lamp replaced"
    assert "AOI-01 x M2 re-baselined by j.doe" in done.stdout


def test_a_command_the_daemon_would_refuse_is_not_sent(mosquitto, tmp_path):
    engineers = Peer("127.0.0.1", mosquitto.port, "listener", (TOPIC,)).wait_connected()
    cfg = config(tmp_path, mosquitto.port)
    for args, reason in (
        (("--tool", "AOI-09"), "unknown_tool"),
        (("--tool", "AOI-01", "--recipe", "M9"), "unknown_recipe"),
    ):
        done = rebaseline(cfg, *args, "--by", "ops")
        assert done.returncode == 2 and f"refused: {reason}" in done.stderr
    assert not engineers.wait_for(lambda messages: len(messages) > 0, 1.0)
    engineers.close()


def test_a_broker_that_cannot_be_reached_is_a_failure_that_says_so(tmp_path):
    port = free_port()  # nothing listens there
    done = rebaseline(config(tmp_path, port), "--tool", "AOI-01", "--by", "ops", "--timeout", "3")
    assert done.returncode == 1 and f"cannot reach the broker at 127.0.0.1:{port}" in done.stderr, done.stderr
