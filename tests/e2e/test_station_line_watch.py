"""The line beside the verdicts, end to end: events carry the joined process context with the parameters
that stand out, every wafer gets a summary on the wafers topic, and a tool whose optics age raises a
drift event while the other tool stays quiet.

The station runs with small windows (drift reference and window of 100 PASS scores, parameter
statistics from 30 wafers a tool) so a few hundred frames show it all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest
import zmq

from tests.triton_fixture import served_repository
from tools.sim.aoi_sim import AoiTools, summarise
from tools.sim.mqtt_peer import Peer
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station
from tools.synth import Fab
from tools.synth_render import Drift

pytestmark = pytest.mark.e2e

CONFIG = """[process]
anomaly_sigma = 4.0
zmq_connect = ["{gateway}"]
min_wafers = 20
[drift]
reference_frames = 100
window_frames = 100
ks_threshold = 0.3
reference_wafers = 8
window_wafers = 8
shift_sigma = 3.0
[wafers]
idle_close_s = 3.0
alert_severity = 30
"""
AGED = TOOLS[0]
POOL = dict(lots=2, wafers_per_lot=2, dies_per_wafer=36, defect_rate=0.25, recipe=RECIPE, excursion_rate=0.3)


def play(st: Station, mes: Peer, pool: Pool, cycles: range) -> dict:
    """Cycle by cycle: lot_start and process logs, the frames, then wafer_end and lot_end."""
    outcomes = []
    for n in cycles:
        cycle = pool.cycle(n)
        for message in cycle.before:
            mes.publish(message.topic, message.body)
        aoi = AoiTools(st.daemon_frames, list(TOOLS), window=16, reply_timeout_s=10, max_tries=50)
        try:
            report = summarise(aoi.run(cycle.frames, rate=0, deadline_s=120))
        finally:
            aoi.close()
        assert report["unanswered"] == []
        outcomes += report["outcomes"]
        for message in cycle.after:
            mes.publish(message.topic, message.body)
    return {"outcomes": outcomes}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    steady = Pool(7, TOOLS, **POOL)
    aged = Pool(7, TOOLS, **POOL, drift={AGED: Drift(aging=1.0)})
    assert any(w.excursion for w in steady.wafers), "the plan needs an excursion wafer"
    gateway = zmq.Context.instance().socket(zmq.PUB)  # an MES gateway on ZeroMQ, beside MQTT
    gateway.setsockopt(zmq.LINGER, 0)
    port = gateway.bind_to_random_port("tcp://127.0.0.1")
    config = CONFIG.replace("{gateway}", f"tcp://127.0.0.1:{port}")
    with Station(tmp_path_factory.mktemp("line"), served_repository(), with_broker=True, config_extra=config) as st:
        consumer = Peer("127.0.0.1", st.mqtt_port, "mes-consumer", ("fab/edge/ST-01/#",)).wait_connected()
        mes = Peer("127.0.0.1", st.mqtt_port, "mes-line").wait_connected()
        warm = Fab(99, recipe_id=RECIPE, tool_ids=TOOLS, excursion_rate=0.0)
        for wafer in warm.plan(60, 1, 1, 0.0):  # the parameter statistics: 30 normal wafers a tool, over ZeroMQ
            gateway.send_multipart(
                [f"fab/mes/process/{wafer.tool_id}".encode(), json.dumps(warm.process_log(wafer, time.time())).encode()]
            )
        gateway.send_multipart([b"fab/mes/process/AOI-01", b"{not json"])
        deadline = time.monotonic() + 10
        while 'edge_mes_messages_total{kind="process_log"} 60.0' not in st.metrics_text():
            assert time.monotonic() < deadline, "the gateway's process logs did not arrive"
            time.sleep(0.1)
        zmq_metrics = st.metrics_text()
        first = play(st, mes, steady, range(0, 6))  # fills the references: about 150 PASS frames a tool
        drift_before = [p for t, p in consumer.messages if "/drift/" in t]
        second = play(st, mes, aged, range(6, 10))  # the aged tool's PASS scores move
        time.sleep(4.0)  # the last wafers close when idle (3 s)
        consumer.wait_for(lambda msgs: sum("/wafers/" in t for t, _ in msgs) >= 40, 20)
        metrics = st.metrics_text()
        stopped = st.stop_daemon(signal.SIGTERM)  # a restart goes on from the saved drift state
        st.start_daemon()
        after_restart = st.metrics_text()
        # the aged tool is serviced: an engineer re-baselines it, and its raised drift clears
        mes.publish("fab/edge/ST-01/rebaseline", {"tool_id": "AOI-99", "by": "ops"})  # refused: unknown tool
        rebaselined = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge",
                "rebaseline",
                "--config",
                str(st.config_path),
                "--tool",
                AGED,
                "--by",
                "j.doe",
                "--reason",
                "optics serviced",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rebaselined.returncode == 0, rebaselined.stderr
        consumer.wait_for(
            lambda msgs: any(json.loads(p).get("detail", {}).get("reset") for t, p in msgs if "/drift/" in t), 20
        )
        for _ in range(2):  # MES's own command, handed over twice: applied once
            mes.publish("fab/edge/ST-01/rebaseline", {"tool_id": AGED, "by": "mes", "command_id": "PM-42"})
        deadline = time.monotonic() + 10
        while (
            'edge_rebaselines_total{result="repeated"}' not in (after_rebaseline := st.metrics_text())
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        mes.close()
        messages = list(consumer.messages)
        consumer.close()
    gateway.close()
    return {
        "outcomes": first["outcomes"] + second["outcomes"],
        "messages": messages,
        "metrics": metrics,
        "zmq_metrics": zmq_metrics,
        "after_rebaseline": after_rebaseline,
        "after_restart": after_restart,
        "stopped": stopped,
        "drift_before": drift_before,
        "pools": (steady, aged),
    }


def bodies(run, kind: str) -> list[dict]:
    return [json.loads(p) for t, p in run["messages"] if f"/{kind}/" in t]


def test_process_logs_arrive_over_a_zeromq_gateway_and_broken_ones_are_counted(run):
    assert 'edge_mes_messages_rejected_total{reason="bad_json"} 1.0' in run["zmq_metrics"]


def test_events_carry_the_joined_process_context_and_the_parameters_that_stand_out(run):
    events = bodies(run, "events")
    assert events and all(e["process"]["present"] for e in events)  # the logs came before the frames
    flagged = [e for e in events if e["process"]["anomalous_parameters"]]
    assert flagged, "no event named an anomalous parameter"
    for event in flagged:
        params = event["process"]["anomalous_parameters"]
        assert all(set(p) == {"name", "value", "z"} and abs(p["z"]) >= 4.0 for p in params)
        assert [abs(p["z"]) for p in params] == sorted((abs(p["z"]) for p in params), reverse=True)
    excursion = {(w.tool_id, w.wafer_id) for w in run["pools"][0].wafers if w.excursion}
    on_excursion = [e for e in events if (e["tool_id"], e["wafer_id"]) in excursion]
    flagged_on_excursion = [e for e in flagged if (e["tool_id"], e["wafer_id"]) in excursion]
    assert len(flagged_on_excursion) >= 0.9 * len(on_excursion)  # its 4-6 sigma parameters are named
    assert len(flagged_on_excursion) >= 0.8 * len(flagged)  # and few normal wafers are flagged
    for event in events:
        anomaly = event["anomaly"]
        x0, y0, x1, y1 = anomaly["bbox"]
        assert 0 <= x0 <= anomaly["peak_xy"][0] <= x1 < 256 and 0 <= y0 <= anomaly["peak_xy"][1] <= y1 < 256


def test_every_wafer_gets_one_summary_that_adds_up(run):
    summaries = bodies(run, "wafers")
    per_wafer = Counter((s["tool_id"], s["lot_id"], s["wafer_id"]) for s in summaries)
    assert len(per_wafer) == 10 * 4 and set(per_wafer.values()) == {1}
    replies = defaultdict(Counter)
    for o in run["outcomes"]:
        lot_wafer = o["frame_id"].rsplit("-", 2)[0]  # LOT-7-0000-c3-W01-0005 -> per wafer
        replies[lot_wafer][o["decision"]] += 1
    for s in summaries:
        assert s["schema"] == "edge.wafer_summary/1" and s["dies_inspected"] == 36
        assert s["ended_by"] in ("wafer_end", "next_wafer", "lot_end", "idle")
        assert sum(s["decisions"].values()) == 36
        assert 0 <= s["severity"] <= 100 and s["signature"]["pattern"] in (
            "none",
            "random",
            "edge_ring",
            "center",
            "scratch_line",
            "cluster",
        )
        defective = s["decisions"].get("DEFECT", 0) + s["decisions"].get("REVIEW", 0)
        assert len(s["defect_map"]) == defective == sum(s["classes"].values())
    assert 'edge_wafers_summarised_total{tool="AOI-01"} 20.0' in run["metrics"]


def test_a_wafer_at_the_alert_severity_raises_one_alert_naming_its_summary(run):
    summaries = {s["summary_id"]: s for s in bodies(run, "wafers")}
    alerts = bodies(run, "alerts")
    assert sorted(a["summary_id"] for a in alerts) == sorted(i for i, s in summaries.items() if s["severity"] >= 30)
    for alert in alerts:
        summary = summaries[alert["summary_id"]]
        assert alert["schema"] == "edge.wafer_alert/1" and alert["severity"] == summary["severity"] >= 30
        assert alert["pattern"] == summary["signature"]["pattern"] and alert["wafer_id"] == summary["wafer_id"]


def test_the_aged_tool_raises_score_drift_and_the_steady_one_does_not(run):
    steady = [json.loads(p) for p in run["drift_before"]]
    assert [d for d in steady if d["kind"] == "score"] == []  # no score drift while both tools were steady
    drift = bodies(run, "drift")
    raised = [d for d in drift if d["state"] == "raised" and d["kind"] == "score"]
    assert {d["tool_id"] for d in raised} == {AGED}
    event = raised[0]
    assert event["schema"] == "edge.drift_event/1" and event["statistic"] >= 0.3 and event["recipe_id"] == RECIPE
    assert f'edge_drift_active{{kind="score",recipe="{RECIPE}",tool="{AGED}"}} 1.0' in run["metrics"]
    events = bodies(run, "events")
    summaries = bodies(run, "wafers")
    print(
        f"\nline watch: events={len(events)} with_anomalous_parameters="
        f"{sum(bool(e['process']['anomalous_parameters']) for e in events)} wafers={len(summaries)} "
        f"patterns={dict(Counter(s['signature']['pattern'] for s in summaries))} "
        f"alerts={len(bodies(run, 'alerts'))} score_drift_ks={event['statistic']} "
        f"drift_events={[(d['tool_id'], d['kind'], d['state']) for d in bodies(run, 'drift')]}"
    )


def test_a_restart_keeps_the_raised_drift_instead_of_taking_the_drifted_tool_as_its_reference(run):
    assert run["stopped"] == 0
    active = f'edge_drift_active{{kind="score",recipe="{RECIPE}",tool="{AGED}"}} 1.0'
    assert active in run["metrics"] and active in run["after_restart"]
    assert f'edge_drift_score_ks{{recipe="{RECIPE}",tool="{AGED}"}}' in run["after_restart"]


def test_a_rebaseline_after_the_service_clears_the_raised_drift_and_says_who(run):
    cleared = [d for d in bodies(run, "drift") if d["state"] == "cleared" and d["detail"].get("reset")]
    assert [(d["tool_id"], d["kind"]) for d in cleared if d["kind"] == "score"] == [(AGED, "score")]
    assert all(d["detail"]["by"] == "j.doe" and d["detail"]["reason"] == "optics serviced" for d in cleared)
    after = run["after_rebaseline"]
    assert f'edge_drift_active{{kind="score",recipe="{RECIPE}",tool="{AGED}"}} 0.0' in after
    assert f'edge_drift_score_ks{{recipe="{RECIPE}",tool="{AGED}"}}' not in after  # until a new reference is full
    assert 'edge_rebaselines_total{result="accepted"} 2.0' in after  # the CLI's and MES's first
    assert 'edge_rebaselines_total{result="repeated"} 1.0' in after
    assert 'edge_rebaselines_total{result="unknown_tool"} 1.0' in after
