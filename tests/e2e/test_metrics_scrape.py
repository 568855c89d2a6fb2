"""End to end: what a station's /metrics serves after real traffic passes `promtool check metrics` (exposition
format and Prometheus naming lint), and carries the series the alert rules and the dashboard are built on.

promtool comes from Debian's `prometheus` package (`make deps`); without it the test fails, never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.triton_fixture import served_repository
from tools.sim import aoi_sim, mes_sim
from tools.station.station import RECIPE, TOOLS, Station

pytestmark = pytest.mark.e2e

# a small plan: 2 tools x 1 lot x 2 wafers x 12 dies, a malformed frame every 10
PLAN = [
    "--seed",
    "31",
    "--recipe",
    RECIPE,
    "--tools",
    *TOOLS,
    "--lots",
    "1",
    "--wafers-per-lot",
    "2",
    "--dies-per-wafer",
    "12",
    "--defect-rate",
    "0.4",
]
# series the alert rules and the dashboard's first rows read, as this traffic must have produced them
EXPECTED = (
    "edge_frames_received_total{tool=",
    "edge_frames_rejected_total{reason=",
    "edge_decisions_total{",
    'edge_e2e_latency_seconds_bucket{le="0.2"}',
    'edge_stage_latency_seconds_bucket{le="0.2",stage="inference"}',
    "edge_batch_size_count ",
    "edge_triton_ready 1.0",
    "edge_mqtt_connected 1.0",
    "edge_outbox_backlog_events ",
    "edge_outbox_bytes ",
    "edge_outbox_quota_bytes ",
    "edge_events_published_total{decision=",
    "edge_mes_messages_total{kind=",
)


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make deps` (Debian package prometheus)", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def scrape(tmp_path_factory, promtool) -> str:
    """The /metrics text of a station that took MES logs and a few dozen frames (a few malformed)."""
    with Station(tmp_path_factory.mktemp("station"), served_repository(), with_broker=True) as st:
        assert st.mqtt_port, "the station needs Mosquitto: run `make deps`"
        assert mes_sim.main([*PLAN, "--port", str(st.mqtt_port)]) == 0
        frames = aoi_sim.plan_frames(PLAN, encoding="png", malformed_every=10)
        tools = aoi_sim.AoiTools(st.daemon_frames, list(TOOLS), window=16, reply_timeout_s=20, max_tries=3)
        try:
            tally = tools.run(frames, rate=0, deadline_s=60)
        finally:
            tools.close()
        assert tally.unanswered == [], tally.unanswered
        deadline = time.monotonic() + 10  # events reach the broker and the outbox gauges catch up
        text = st.metrics_text()
        while "edge_events_published_total{" not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            text = st.metrics_text()
        return text


def test_metrics_pass_promtool_check_metrics(scrape, promtool) -> None:
    result = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool check metrics (exit {result.returncode}):\n{result.stdout}{result.stderr}"


def test_the_series_the_rules_and_dashboard_read_are_served(scrape) -> None:
    missing = [series for series in EXPECTED if series not in scrape]
    assert missing == [], missing
