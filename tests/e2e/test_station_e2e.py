"""End to end: the daemon as a process with real Triton and Mosquitto, fed by the AOI and MES
simulators; a real MQTT subscriber plays the MES consumer."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import numpy as np
import pytest

from edge.capture.store import CaptureStore
from edge.taxonomy import DEFECT_CLASSES
from tests.triton_fixture import served_repository
from tools.sim import aoi_sim, mes_sim
from tools.sim.malformed import MALFORMED_KINDS
from tools.sim.mqtt_peer import Peer
from tools.station.station import RECIPE, TOOLS, Station

pytestmark = pytest.mark.e2e

PLAN = [
    "--seed",
    "23",
    "--recipe",
    RECIPE,
    "--tools",
    *TOOLS,
    "--lots",
    "2",
    "--wafers-per-lot",
    "4",
    "--dies-per-wafer",
    "40",
    "--defect-rate",
    "0.4",
]
EVENT_FIELDS = {
    "schema",
    "event_id",
    "ts",
    "station",
    "tool_id",
    "recipe_id",
    "lot_id",
    "wafer_id",
    "die",
    "frame_id",
    "decision",
    "defect_class",
    "confidence",
    "threshold",
    "calibration",
    "anomaly",
    "top_k",
    "process",
    "models",
    "latency_ms",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One station run: MES logs first, then 320 frames (+ malformed ones) from two tools."""
    workdir = tmp_path_factory.mktemp("station")
    with Station(workdir, served_repository(), with_broker=True) as st:
        mes_consumer = Peer("127.0.0.1", st.mqtt_port, "mes-consumer", ("fab/edge/#",)).wait_connected()
        assert mes_sim.main([*PLAN, "--port", str(st.mqtt_port)]) == 0
        frames = aoi_sim.plan_frames(PLAN, encoding="png", malformed_every=20)
        tools = aoi_sim.AoiTools(st.daemon_frames, list(TOOLS), window=24, reply_timeout_s=20, max_tries=3)
        try:
            tally = tools.run(frames, rate=0, deadline_s=240)
        finally:
            tools.close()
        report = aoi_sim.summarise(tally)
        event_ids = {o["event_id"] for o in report["outcomes"] if o["event_id"]}
        mes_consumer.wait_for(
            lambda msgs: event_ids <= {json.loads(p).get("event_id") for t, p in msgs if "/events/" in t}, 30
        )
        metrics, readyz = st.metrics_text(), st.readyz()
        exit_code = st.stop_daemon(signal.SIGTERM)
        time.sleep(0.5)
        messages = list(mes_consumer.messages)
        mes_consumer.close()
    return {
        "report": report,
        "messages": messages,
        "metrics": metrics,
        "readyz": readyz,
        "exit_code": exit_code,
        "n_frames": len(frames),
        "log": (workdir / "daemon.log").read_text(),
        "captures": workdir / "captures",
    }


def test_readyz_names_the_precision_each_model_serves(run):
    """The CPU repository serves FP32 by default; the precision facts travel in the model configs through Triton."""
    fp32 = {"served": "fp32", "requested": "fp32", "fallback": None}
    assert run["readyz"]["precision"] == {"anomaly": fp32, "classifier": fp32}
    assert "model_precision_fallback" not in run["log"]


def test_every_frame_gets_exactly_one_final_reply(run):
    report = run["report"]
    assert report["unanswered"] == []
    assert report["duplicate_replies"] == 0
    assert sum(report["replies"].values()) - report["replies"].get("busy", 0) == run["n_frames"]
    assert report["replies"].get("not_inspected", 0) == 0


def test_malformed_frames_are_rejected_with_the_right_reason_while_the_stream_goes_on(run):
    report = run["report"]
    assert report["malformed_wrong"] == []
    assert report["malformed_rejected_as_expected"] == 320 // 20
    assert report["replies"]["ok"] == 320
    counted = {k for k in MALFORMED_KINDS if f'edge_frames_rejected_total{{reason="{k}"}}' in run["metrics"]}
    assert len(counted) > 5 and "unknown_tool" in counted


def test_every_replied_event_reaches_the_mqtt_subscriber_with_the_full_schema(run):
    events = {}
    for topic, payload in run["messages"]:
        if "/events/" in topic:
            body = json.loads(payload)
            assert topic == f"fab/edge/ST-01/events/{body['tool_id']}"
            events[body["event_id"]] = body
    replied = {o["event_id"]: o for o in run["report"]["outcomes"] if o["event_id"]}
    assert replied and set(replied) <= set(events)
    for event_id, outcome in replied.items():
        body = events[event_id]
        assert set(body) >= EVENT_FIELDS
        assert body["schema"] == "edge.defect_event/1" and body["frame_id"] == outcome["frame_id"]
        assert body["decision"] in ("DEFECT", "REVIEW", "AUDIT")
        assert body["models"] == {"anomaly": "1", "classifier": "1"}
        assert body["process"]["present"] is True  # the MES logs arrived before the frames
        assert body["process"]["chamber_id"] in (f"{body['tool_id']}-CH1", f"{body['tool_id']}-CH2")


def test_defect_events_name_the_injected_defect_for_a_large_majority(run):
    events = {json.loads(p)["event_id"]: json.loads(p) for t, p in run["messages"] if "/events/" in t}
    defects = [o for o in run["report"]["outcomes"] if o["label"] in DEFECT_CLASSES]
    goods = [o for o in run["report"]["outcomes"] if o["label"] == "GOOD"]
    assert len(defects) > 60 and len(goods) > 60
    flagged = [o for o in defects if o["decision"] in ("DEFECT", "REVIEW")]
    assert len(flagged) / len(defects) >= 0.8, Counter(o["decision"] for o in defects)
    named = [o for o in flagged if o["decision"] == "DEFECT"]
    right = [o for o in named if events[o["event_id"]]["defect_class"] == o["label"]]
    assert len(right) / len(named) >= 0.75
    passed = [o for o in goods if o["decision"] == "PASS"]
    assert len(passed) / len(goods) >= 0.8, Counter(o["decision"] for o in goods)


def test_sigterm_drains_and_leaves_the_status_offline(run):
    assert run["exit_code"] == 0
    statuses = [p for t, p in run["messages"] if t.endswith("/status")]
    assert statuses[0] == b"online" and statuses[-1] == b"offline"
    assert '"event": "stopped"' in run["log"] and '"all_events_acknowledged": true' in run["log"]


def test_every_flagged_die_is_captured_before_its_event_goes_out(run):
    """The event names its capture, and the store (read after the run, as the review service reads it) holds the
    die, its heatmap and attention and the event's facts."""
    events = [json.loads(p) for t, p in run["messages"] if "/events/" in t]
    store = CaptureStore(run["captures"], 10**10, 10**9, 10**9)
    try:
        assert events
        for body in events:
            assert body["capture"] == {"id": body["event_id"], "url": f"/api/captures/{body['event_id']}"}
            kept = store.get(body["event_id"])
            assert kept is not None and kept.gone is None, body["event_id"]
            assert (kept.decision, kept.frame_id, kept.tool_id) == (body["decision"], body["frame_id"], body["tool_id"])
            assert kept.defect_class == body["defect_class"] and kept.facts["top_k"] == body["top_k"]
            assert kept.heatmap is not None and kept.heatmap.shape == (32, 32) and kept.attention is not None
            assert len(store.image_bytes(kept)) > 1000
            embedded = store.embedding(body["event_id"])  # the classifier's EMBEDDING, by the version that decided
            assert embedded is not None and embedded[0] == body["model_digests"]["classifier"]
            assert embedded[1].shape == (128,) and np.isfinite(embedded[1]).all() and np.any(embedded[1])
        kept_reasons = Counter(c.reason for c in store.recent(limit=10_000))
    finally:
        store.close()
    flagged = kept_reasons["DEFECT"] + kept_reasons["REVIEW"] + kept_reasons["AUDIT"]
    assert flagged == len({e["event_id"] for e in events})
    captured = [line for line in run["metrics"].splitlines() if line.startswith("edge_captures_total{")]
    assert 0 < sum(float(line.split()[-1]) for line in captured) <= sum(kept_reasons.values())
    assert "edge_capture_bytes " in run["metrics"]
