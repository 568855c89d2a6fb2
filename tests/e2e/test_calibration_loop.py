"""The calibration loop through the daemon as a process: frames of a lot, dispositions over real MQTT, lot end
from MES, and the thresholds move in the store, in the metrics and in the next events."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from calibration.store import CalibrationStore
from edge.cli import main as cli_main
from tests.triton_fixture import served_repository
from tools.sim import aoi_sim
from tools.sim.mqtt_peer import Peer
from tools.station.station import RECIPE, Station

pytestmark = pytest.mark.e2e

TOOL = "AOI-01"
PLAN = [
    "--seed",
    "31",
    "--recipe",
    RECIPE,
    "--tools",
    TOOL,
    "--lots",
    "2",
    "--wafers-per-lot",
    "2",
    "--dies-per-wafer",
    "30",
    "--defect-rate",
    "0.6",
]


def _send(st: Station, frames: list) -> dict:
    tools = aoi_sim.AoiTools(st.daemon_frames, [TOOL], window=16, reply_timeout_s=20, max_tries=3)
    try:
        return aoi_sim.summarise(tools.run(frames, rate=0, deadline_s=120))
    finally:
        tools.close()


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(predicate, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _two_lots(tmp_path, controller: str) -> tuple[dict, dict, str, set, list]:
    """Lot 1 at the start value, lot 2 with every DEFECT event reviewed false over MQTT, both ended by the MES:
    the thresholds before and after lot 2, the metrics, the classes flagged and their events."""
    store_path = tmp_path / "calibration.sqlite"
    extra = (f'[calibration]\npath = "{store_path}"\ninitial_lots = 1\nrefresh_s = 0.2\n'
             f'controller = "{controller}"\n')  # fmt: skip
    frames = aoi_sim.plan_frames(PLAN, encoding="png")
    lots = sorted({f.frame_id.rsplit("-", 2)[0] for _, f in frames})
    assert len(lots) == 2
    with Station(tmp_path / "station", served_repository(), with_broker=True, config_extra=extra) as st:
        peer = Peer("127.0.0.1", st.mqtt_port, "engineer", ("fab/edge/#",)).wait_connected()
        first, second = ([fr for fr in frames if fr[1].frame_id.startswith(lot)] for lot in lots)

        def lot_end(lot: str, n: int) -> None:
            peer.publish(f"fab/mes/lot/{TOOL}", {"event": "lot_end", "lot_id": lot, "recipe_id": RECIPE,
                                                 "tool_id": TOOL})  # fmt: skip
            assert _wait(lambda: _metric(st.metrics_text(), "edge_lots_closed_total", tool=TOOL) >= n)

        # lot 1: the initial calibration lot at the escape-averse start value
        assert not _send(st, first)["unanswered"]
        lot_end(lots[0], 1)
        before = CalibrationStore(store_path).thresholds(RECIPE, TOOL)
        assert set(before.values()) == {0.6}

        # lot 2: every DEFECT event is reviewed as a false positive, over MQTT
        report = _send(st, second)
        defects = {o["event_id"] for o in report["outcomes"] if o.get("decision") == "DEFECT"}
        assert len(defects) >= 5
        assert peer.wait_for(lambda m: defects <= {json.loads(p)["event_id"] for t, p in m if "/events/" in t}, 30)
        events = [e for e in peer.json_messages("fab/edge/ST-01/events/") if e["event_id"] in defects]
        for event_id in defects:
            peer.publish("fab/edge/ST-01/reviews", {"event_id": event_id, "disposition": "false", "reviewer": "eng1"})
        peer.publish("fab/edge/ST-01/reviews", {"event_id": "nope", "disposition": "false", "reviewer": "eng1"})
        peer.publish("fab/edge/ST-01/reviews", b"{not json")
        assert _wait(lambda: _metric(st.metrics_text(), "edge_reviews_total", result="accepted") == len(defects))
        lot_end(lots[1], 2)

        after = CalibrationStore(store_path).thresholds(RECIPE, TOOL)
        metrics = st.metrics_text()
        peer.close()
        outbox = sqlite3.connect(st.workdir / "outbox.sqlite")
        try:  # every batch's calibration rows reached the store and left the outbox
            assert _wait(lambda: outbox.execute("SELECT COUNT(*) FROM calibration_rows").fetchone() == (0,))
        finally:
            outbox.close()
    return before, after, metrics, {e["defect_class"] for e in events}, events


def test_reviews_and_lot_end_move_the_thresholds(tmp_path, capsys):
    store_path = tmp_path / "calibration.sqlite"
    before, after, metrics, flagged_classes, events = _two_lots(tmp_path, "seed")
    assert {c for c, t in after.items() if t != before[c]} == flagged_classes
    assert all(after[c] == pytest.approx(0.62) for c in flagged_classes)
    for name in flagged_classes:
        assert _metric(metrics, "edge_calibration_threshold", tool=TOOL, **{"class": name}) == pytest.approx(0.62)
    assert _metric(metrics, "edge_reviews_total", result="unknown_event") == 1
    assert _metric(metrics, "edge_reviews_total", result="bad_json") == 1
    assert all(e["calibration"]["status"] == "adjusting" for e in events)  # lot 1 ended the initial calibration
    assert cli_main(["calib", "--store", str(store_path), "show", "--recipe", RECIPE, "--tool", TOOL]) == 0
    shown = capsys.readouterr().out
    for name in flagged_classes:
        assert re.search(rf"^{re.escape(name)} threshold=0\.62 fpr_3lot=\d+\.\d+% status=adjusting$", shown, re.M)


def test_the_statistical_controller_runs_in_the_daemon_through_reviews_and_lot_ends(tmp_path, capsys):
    store_path = tmp_path / "calibration.sqlite"
    before, after, metrics, flagged_classes, _ = _two_lots(tmp_path, "statistical")
    store = CalibrationStore(store_path)
    states = store.states(RECIPE, TOOL)
    step = next(iter(states.values())).stat.max_step
    for name in flagged_classes:  # confirmed false positives far over budget: up by one rate-limited step
        assert after[name] == pytest.approx(before[name] + step)
        assert _metric(metrics, "edge_calibration_threshold", tool=TOOL, **{"class": name}) == pytest.approx(
            after[name]
        )
        assert _metric(metrics, "edge_calibration_fpr_3lot_ratio", tool=TOOL, **{"class": name}) > 0.001
        bound = _metric(metrics, "edge_calibration_certified_fpr_ratio", tool=TOOL, **{"class": name})
        assert bound == pytest.approx(states[name].fpr_upper(after[name])) and bound > 0.001
    assert all(abs(after[c] - before[c]) <= step + 1e-9 for c in after)  # no class jumps
    store.close()
    assert cli_main(["calib", "--store", str(store_path), "show", "--recipe", RECIPE, "--tool", TOOL]) == 0
    shown = capsys.readouterr().out
    for name in flagged_classes:
        assert re.search(rf"^{re.escape(name)} threshold=\d\.\d+ fpr_3lot=\d+\.\d+% certified=\d+\.\d+% "
                         rf"status=\w+$", shown, re.M)  # fmt: skip
