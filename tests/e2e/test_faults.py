"""Fault tests with real processes: the broker, Triton and the daemon itself are killed (SIGKILL) in the
middle of frame streams from simulated AOI tools, and a flooding tool competes with a quiet one.

One station serves the module; each test streams its own cycles of the pool (fresh frame ids) and
leaves every process running for the next. The figures each test measures are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest
import zmq

from edge.ingest.wire import decode_reply
from tests.triton_fixture import served_repository
from tools.sim.aoi_sim import AoiTools, latency_percentiles, summarise
from tools.sim.mqtt_peer import Peer
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station

pytestmark = pytest.mark.e2e

EVENTS = "fab/edge/ST-01/events/#"
WAFERS = "fab/edge/ST-01/wafers/#"


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    # wafers close 3 s after their last die, so a stream's last wafers are summarised within the test
    with Station(
        tmp_path_factory.mktemp("faults"),
        served_repository(),
        with_broker=True,
        persistent_broker=True,
        config_extra="[wafers]\nidle_close_s = 3.0\n",
    ) as st:
        yield st


@pytest.fixture(scope="module")
def pool():
    # 120 frames a cycle: 2 lots (one per tool) x 2 wafers x 30 dies, raw images as a tool sends them
    return Pool(31, TOOLS, lots=2, wafers_per_lot=2, dies_per_wafer=30, defect_rate=0.4, recipe=RECIPE)


def stream(
    st: Station,
    pool: Pool,
    cycles: range,
    *,
    rate: float,
    fault: Callable[[float], None] | None = None,
    tools: tuple[str, ...] = TOOLS,
    window: int = 32,
    reply_timeout_s: float = 5.0,
) -> dict:
    """MES process logs of the cycles first, then their frames from a sender thread while ``fault(start)``
    runs on this one."""
    cycles_ = [pool.cycle(n) for n in cycles]
    mes = Peer("127.0.0.1", st.mqtt_port, f"mes-{cycles.start}").wait_connected()
    for cycle in cycles_:
        for message in cycle.before:
            if "/process/" in message.topic:
                mes.publish(message.topic, message.body)
    mes.close()
    frames = [(tool, frame) for c in cycles_ for tool, frame in c.frames if tool in tools]
    result: dict = {}

    def send() -> None:
        aoi = AoiTools(st.daemon_frames, list(tools), window=window, reply_timeout_s=reply_timeout_s, max_tries=1000)
        try:
            result.update(summarise(aoi.run(frames, rate=rate, deadline_s=240)))
        finally:
            aoi.close()

    # The fault runs on this thread: a process restarted from a thread that ends would die with it
    # (the children are tied to their starting thread, PR_SET_PDEATHSIG).
    start = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    if fault:
        fault(start)
    sender.join(300)
    report = result
    report["n_frames"] = len(frames)
    report["start"] = start
    return report


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def replied_events(report: dict) -> dict[str, dict]:
    return {o["event_id"]: o for o in report["outcomes"] if o["event_id"]}


def wait_delivered(st: Station, consumer: Peer, wanted: set[str], timeout_s: float = 60) -> set[str]:
    consumer.wait_for(lambda msgs: wanted <= {json.loads(p)["event_id"] for _, p in msgs}, timeout_s)
    return {m["event_id"] for m in consumer.json_messages()}


def test_broker_killed_three_times_mid_stream_loses_no_event(station, pool):
    """2400 frames; the broker is SIGKILLed three times for 2 s. The MES consumer holds a persistent
    session (the broker saves sessions every second), so what it must receive is everything: what the
    broker acknowledged but lost with its process the daemon publishes again (mqtt.replay_acked_s)."""
    consumer = Peer("127.0.0.1", station.mqtt_port, "mes-durable", (EVENTS,), clean_session=False).wait_connected()
    time.sleep(1.5)  # the broker's autosave has the durable subscription on disk before the first kill
    outages = []

    def kill_broker(start: float) -> None:
        for at in (3.0, 9.0, 15.0):
            sleep_until(start + at)
            station.broker.kill()
            time.sleep(2.0)
            station.broker.start()
            outages.append(at)

    report = stream(station, pool, range(100, 120), rate=0, fault=kill_broker)
    assert outages == [3.0, 9.0, 15.0] and report["inspected"] > 0
    assert report["unanswered"] == [] and report["replies"].get("not_inspected", 0) == 0
    assert report["replies"]["ok"] == report["n_frames"] == 2400
    replied = replied_events(report)
    received = wait_delivered(station, consumer, set(replied))
    messages = [(t, p) for t, p in consumer.messages if "/events/" in t]
    consumer.close()

    lost = set(replied) - received
    assert not lost, f"{len(lost)} of {len(replied)} events never reached the subscriber"
    assert received <= set(replied)  # nothing the tools were not told about
    first: dict[str, bytes] = {}
    for _, payload in messages:  # a duplicate is the same event, byte for byte
        event_id = json.loads(payload)["event_id"]
        assert first.setdefault(event_id, payload) == payload
    by_tool: dict[str, list[str]] = defaultdict(list)
    for event_id, payload in first.items():  # dict order: first arrival
        by_tool[json.loads(payload)["tool_id"]].append(event_id)
    for tool, ids in by_tool.items():  # event ids sort by creation: first arrivals keep each tool's order
        assert ids == sorted(ids), f"{tool}: events arrived out of order"
    republished = next(
        line.split()[-1]
        for line in station.metrics_text().splitlines()
        if line.startswith("edge_events_republished_total ")
    )
    print(
        f"\nbroker x3: frames={report['n_frames']} events={len(replied)} lost=0 "
        f"duplicates={len(messages) - len(first)} republished={float(republished):.0f} "
        f"elapsed_s={report['elapsed_s']}"
    )


def test_triton_killed_and_restarted_mid_stream_answers_every_frame_and_recovers(station, pool):
    times: dict[str, float] = {}

    def kill_triton(start: float) -> None:
        sleep_until(start + 3.0)
        os.killpg(station.triton.pid, signal.SIGKILL)
        station.triton.stop()  # reaps it
        times["killed"] = time.monotonic()
        station.triton.start()
        station.triton.wait_ready()
        times["ready"] = time.monotonic()

    report = stream(station, pool, range(200, 215), rate=30, fault=kill_triton)
    assert report["unanswered"] == [] and set(times) == {"killed", "ready"}
    outcomes = sorted(report["outcomes"], key=lambda o: o["replied_at"])
    during = [o for o in outcomes if times["killed"] < o["replied_at"] < times["ready"]]
    assert during and all(o["status"] == "not_inspected" for o in during if o["status"] != "ok")
    assert Counter(o["status"] for o in during)["not_inspected"] > 0
    assert {o["reason"] for o in during if o["status"] == "not_inspected"} <= {"triton_unavailable", "deadline_passed"}
    first_ok = next(o["replied_at"] for o in outcomes if o["replied_at"] > times["ready"] and o["status"] == "ok")
    recovery_s = first_ok - times["ready"]
    assert recovery_s < 10.0
    settled = [o for o in outcomes if o["replied_at"] > first_ok + 2.0]
    assert settled and all(o["status"] == "ok" for o in settled)
    assert station.readyz().get("triton_ready") is True
    print(
        f"\ntriton kill: outage_s={times['ready'] - times['killed']:.1f} "
        f"recovery_after_ready_s={recovery_s:.2f} not_inspected={report['replies'].get('not_inspected', 0)} "
        f"ok={report['replies'].get('ok', 0)} busy={report['replies'].get('busy', 0)}"
    )


def test_daemon_sigkilled_mid_stream_keeps_every_acknowledged_result_and_processes_resends_once(station, pool):
    consumer = Peer("127.0.0.1", station.mqtt_port, "mes-after-crash", (EVENTS,)).wait_connected()
    wafer_watch = Peer("127.0.0.1", station.mqtt_port, "wafers-after-crash", (WAFERS,)).wait_connected()
    restarted: list[float] = []

    def kill_daemon(start: float) -> None:
        sleep_until(start + 3.0)
        station.stop_daemon(signal.SIGKILL)
        station.start_daemon()
        restarted.append(time.monotonic() - start)

    report = stream(station, pool, range(300, 306), rate=0, fault=kill_daemon, reply_timeout_s=3.0)
    assert restarted and report["unanswered"] == []
    assert report["replies"]["ok"] == report["n_frames"] == 720
    ok = {o["frame_id"]: o for o in report["outcomes"] if o["status"] == "ok"}
    with sqlite3.connect(f"file:{station.workdir / 'outbox.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT frame_id, decision, event_id FROM results WHERE frame_id LIKE '%-c30_'").fetchall()
        defect_events = db.execute("SELECT payload FROM events WHERE topic LIKE '%/events/%'")  # not wafers, drift
        events = [json.loads(p)["frame_id"] for (p,) in defect_events]
    recorded = {frame_id: (decision, event_id) for frame_id, decision, event_id in rows}
    assert set(recorded) == set(ok)  # one result per frame, whatever was resent
    for frame_id, outcome in ok.items():  # what each tool was told is what is on record
        assert recorded[frame_id] == (outcome["decision"], outcome["event_id"])
    mine = Counter(f for f in events if f in ok)
    assert all(n == 1 for n in mine.values())  # no frame inspected into two events
    replied = replied_events(report)
    assert set(mine) == {o["frame_id"] for o in replied.values()}
    received = wait_delivered(station, consumer, set(replied))
    consumer.close()
    assert set(replied) <= received  # the restarted daemon published what the killed one had not
    lots = {f"-c{n}" for n in range(300, 306)}

    def summaries() -> dict[tuple, set[str]]:
        out: dict[tuple, set[str]] = defaultdict(set)
        for body in wafer_watch.json_messages():
            if body["lot_id"][-5:] in lots:
                out[(body["tool_id"], body["lot_id"], body["wafer_id"])].add(json.dumps(body, sort_keys=True))
        return out

    wafer_watch.wait_for(lambda _: len(summaries()) == 24, 30)  # 6 cycles x 4 wafers
    wafer_watch.close()
    per_wafer = summaries()
    assert len(per_wafer) == 24 and all(len(bodies) == 1 for bodies in per_wafer.values())  # resent: same body
    dies = [json.loads(next(iter(bodies)))["dies_inspected"] for bodies in per_wafer.values()]
    assert dies == [30] * 24  # the wafer in progress at the kill is whole: its dies before the kill were kept
    print(
        f"\ndaemon kill: restart_at_s={restarted[0]:.1f} frames={len(ok)} resent={report['resent']} "
        f"events={len(replied)} wafers={len(per_wafer)} dies_per_summary={sorted(set(dies))} "
        f"elapsed_s={report['elapsed_s']}"
    )


def test_a_flooding_tool_does_not_starve_a_quiet_one(station, pool):
    flood: dict = {}

    def flood_with_first_tool(start: float) -> None:
        flood.update(
            stream(station, pool, range(400, 410), rate=0, tools=(TOOLS[0],), window=250, reply_timeout_s=30.0)
        )

    quiet = stream(station, pool, range(410, 412), rate=8, tools=(TOOLS[1],), window=4, fault=flood_with_first_tool)
    assert quiet["unanswered"] == [] and quiet["replies"] == {"ok": quiet["n_frames"]}
    assert flood["unanswered"] == [] and flood["replies"].get("busy", 0) > 0  # it was held to its share
    assert quiet["latency_ms"]["p95"] < 0.5 * flood["latency_ms"]["p50"]
    metrics = station.metrics_text()
    assert f'edge_frames_busy_total{{reason="tool_share_full",tool="{TOOLS[0]}"}}' in metrics
    print(
        f"\nfairness: quiet p95_ms={quiet['latency_ms']['p95']} flood p50_ms={flood['latency_ms']['p50']} "
        f"flood busy={flood['replies'].get('busy', 0)} "
        f"quiet_all={latency_percentiles([o['latency_ms'] for o in quiet['outcomes']])}"
    )


def test_wafer_ends_the_mes_announced_before_a_kill_still_end_the_wafers_after_the_restart(station, pool):
    """Wafers end by the MES only (a tool's next wafer ends its previous one; idle would take 10 minutes);
    the daemon is SIGKILLed after the ends arrived and before the wafers' grace ran out."""
    default = station.config_extra
    station.config_extra = "[wafers]\nidle_close_s = 600.0\nend_grace_s = 10.0\n"
    station.stop_daemon()
    station.start_daemon()
    wafer_watch = Peer("127.0.0.1", station.mqtt_port, "wafers-ended", (WAFERS,)).wait_connected()
    try:
        report = stream(station, pool, range(600, 601), rate=0)
        assert report["replies"] == {"ok": 120}
        mes = Peer("127.0.0.1", station.mqtt_port, "mes-ends").wait_connected()
        for message in pool.cycle(600).after:  # wafer_end per wafer, lot_end
            mes.publish(message.topic, message.body)
        mes.close()
        outbox = f"file:{station.workdir / 'outbox.sqlite'}?mode=ro"
        deadline = time.monotonic() + 10
        ends = 0
        while ends < len(TOOLS) and time.monotonic() < deadline:  # each tool's last wafer ended by the MES
            time.sleep(0.1)
            with sqlite3.connect(outbox, uri=True) as db:
                ends = db.execute("SELECT COUNT(*) FROM wafer_ends WHERE lot_id LIKE '%-c600'").fetchone()[0]
        assert ends == len(TOOLS)
        station.stop_daemon(signal.SIGKILL)
        station.start_daemon()

        def summaries() -> dict[tuple[str, str], dict]:  # at least once: one replayed is the same summary
            return {
                (b["tool_id"], b["wafer_id"]): b for b in wafer_watch.json_messages() if b["lot_id"].endswith("-c600")
            }

        assert wafer_watch.wait_for(lambda _: len(summaries()) == 4, 30), summaries()
        bodies = summaries().values()
        assert sorted(b["ended_by"] for b in bodies) == ["next_wafer", "next_wafer", "wafer_end", "wafer_end"]
        assert [b["dies_inspected"] for b in bodies] == [30] * 4
    finally:
        wafer_watch.close()
        station.config_extra = default
        station.stop_daemon()
        station.start_daemon()
    print(f"\nwafer ends across a kill: ends_kept={ends} summaries=4 elapsed_s={report['elapsed_s']}")


def ask(st: Station, parts: list[bytes], timeout_s: float = 10.0) -> dict:
    """One frame from a fresh DEALER; its reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(st.daemon_frames)
    try:
        sock.send_multipart(parts)
        assert sock.poll(int(timeout_s * 1000)), "no reply"
        return decode_reply(sock.recv())
    finally:
        sock.close()


def test_at_its_disk_quota_the_outbox_turns_frames_away_busy_until_there_is_room(station, pool):
    tool, frame = pool.cycle(500).frames[0]
    outbox = station.workdir / "outbox.sqlite"
    station.config_extra = f'[outbox]\npath = "{outbox}"\nmax_bytes = 4096\n'  # under even an empty outbox
    station.stop_daemon()
    try:
        station.start_daemon(ready=False)
        deadline = time.monotonic() + 15
        while not station.readyz().get("outbox_full") and time.monotonic() < deadline:
            time.sleep(0.2)
        health = station.readyz()
        assert health["outbox_full"] is True and health["ready"] is False and health["triton_ready"] is True
        reply = ask(station, frame.parts)
        assert (reply["status"], reply["reason"], reply["frame_id"]) == ("busy", "outbox_full", frame.frame_id)
        assert reply["retry_after_ms"] > 0
        metrics = station.metrics_text()
        assert f'edge_frames_busy_total{{reason="outbox_full",tool="{tool}"}} 1.0' in metrics
        assert "edge_outbox_quota_bytes 4096.0" in metrics
    finally:
        station.config_extra = ""
        station.stop_daemon()
        station.start_daemon()
    reply = ask(station, frame.parts)  # the tool's resend, once there is room: inspected, nothing lost
    assert reply["status"] == "ok" and reply["frame_id"] == frame.frame_id
