"""A station whose MES says nothing: frames stop waiting for logs that are not coming (after a wafer's window ran
out, and for the whole tool after two such wafers), counted and shown on /readyz; when the logs come back, the
later wafers' frames wait for and get them again."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.triton_fixture import served_repository
from tools.sim import aoi_sim
from tools.sim.mes_sim import mes_log
from tools.sim.mqtt_peer import Peer
from tools.station.station import RECIPE, TOOLS, Station
from tools.synth import Fab

pytestmark = pytest.mark.e2e
PLAN = ["--seed", "29", "--recipe", RECIPE, "--tools", *TOOLS, "--lots", "4", "--wafers-per-lot", "3",
        "--dies-per-wafer", "10", "--defect-rate", "0.3"]  # fmt: skip
SILENT_LOTS = ("LOT-29-0000", "LOT-29-0001")  # one per tool; the MES speaks for the two lots after them


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _send(st: Station, frames: list) -> dict:
    tools = aoi_sim.AoiTools(st.daemon_frames, list(TOOLS), window=8, reply_timeout_s=20, max_tries=3)
    try:
        return aoi_sim.summarise(tools.run(frames, rate=0, deadline_s=120))
    finally:
        tools.close()


def test_frames_stop_waiting_for_a_silent_mes_and_wait_again_once_it_speaks(tmp_path) -> None:
    frames = aoi_sim.plan_frames(PLAN, encoding="png")
    silent = [f for f in frames if f[1].frame_id.rsplit("-", 2)[0] in SILENT_LOTS]
    heard = [f for f in frames if f not in silent]
    assert len(silent) == len(heard) == 60
    with Station(tmp_path, served_repository(), with_broker=True) as st:
        first = _send(st, silent)
        assert first["replies"] == {"ok": 60} and first["unanswered"] == []
        metrics, ready = st.metrics_text(), st.readyz()
        assert ready["mes_silent"] == sorted(TOOLS)
        for tool in TOOLS:
            assert _counter(metrics, "edge_mes_silent", tool=tool) == 1.0
            assert _counter(metrics, "edge_join_skipped_total", tool=tool, why="wafer_expired") > 0
            assert _counter(metrics, "edge_join_skipped_total", tool=tool, why="tool_silent") >= 1, "third wafer"
            assert _counter(metrics, "edge_context_missing_total", tool=tool) == 30
        missing_before = _counter(metrics, "edge_context_missing_total")

        fab = Fab(29, recipe_id=RECIPE, tool_ids=tuple(TOOLS))
        wafers = [w for w in fab.plan(4, 3, 10, 0.3) if w.lot_id not in SILENT_LOTS]
        mes = Peer("127.0.0.1", st.mqtt_port, "mes-back").wait_connected()
        for wafer in wafers:
            mes.publish(f"fab/mes/process/{wafer.tool_id}", mes_log(fab, wafer, time.time()))
        mes.close()
        deadline = time.monotonic() + 20
        while st.readyz()["mes_silent"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert st.readyz()["mes_silent"] == [], "a log of each tool: heard again"
        second = _send(st, heard)
        assert second["replies"] == {"ok": 60} and second["unanswered"] == []
        metrics = st.metrics_text()
        assert _counter(metrics, "edge_context_missing_total") == missing_before, "every later frame got its log"
        assert all(_counter(metrics, "edge_mes_silent", tool=t) == 0.0 for t in TOOLS)
        assert re.search(r'edge_mes_messages_total\{kind="process_log"\} 6\.0', metrics), json.dumps(st.readyz())
