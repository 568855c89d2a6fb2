"""Line watching: excursions named in the process log, drift rows when a state flips, wafer summaries
with alerts at the configured severity, and metrics that follow."""

import json

import numpy as np

from edge.config import parse_config
from edge.flow import Frame, FrameHeader, LotEvent, Outcome, ProcessLog, Verdict
from edge.ops.metrics import Metrics
from edge.process_params import DEFAULT_PARAMETERS
from edge.publish.events import EventIds
from edge.watch.line_watch import LineWatch, Summaries, die_row
from edge.watch.rebaseline import Rebaseline

CFG = parse_config(
    {
        "tools": [{"id": "T1"}, {"id": "T2"}],
        "recipes": {"R": {}},
        "process": {"min_wafers": 5, "anomaly_sigma": 3.0},
        "drift": {
            "reference_frames": 20,
            "window_frames": 20,
            "ks_threshold": 0.5,
            "reference_wafers": 5,
            "window_wafers": 5,
            "shift_sigma": 3.0,
        },
        "wafers": {"alert_severity": 50.0, "end_grace_s": 0.5},
    }
)


def outcome(tool, wafer, die, decision="PASS", cls="GOOD", score=0.01):
    header = FrameHeader(f"{wafer}-{die}", tool, "R", "L1", wafer, die, 0.0, "raw", None, None, None)
    frame = Frame(b"id", header, None, 0.0, 1.0, 0.0)
    verdict = Verdict(decision, cls, 0.9, None, "PASS", False, False, ((cls, 0.9),))
    return Outcome(frame, verdict, score)


def log(tool, rng, shift=0.0):
    params = {name: float(rng.normal()) for name in DEFAULT_PARAMETERS}
    params[DEFAULT_PARAMETERS[3]] += shift
    return ProcessLog("L1", f"W{rng.integers(1e6)}", "R", tool, 0.0, params)


def watch():
    metrics = Metrics()
    return LineWatch(CFG, metrics, EventIds(), clock=lambda: 1000.0), metrics


def test_an_excursion_is_named_on_its_log_once_the_statistics_are_warm():
    w, metrics = watch()
    rng = np.random.default_rng(1)
    for _ in range(5):  # min_wafers: nothing is judged before
        checked, rows = w.process_log(log("T1", rng))
        assert checked.anomalous == () and rows == []
    checked, _ = w.process_log(log("T1", rng, shift=12.0))
    assert checked.anomalous[0]["name"] == DEFAULT_PARAMETERS[3]
    assert metrics.registry.get_sample_value("edge_process_excursions_total", {"tool": "T1"}) == 1
    unknown = ProcessLog("L1", "W", "R", "T9", 0.0, {})
    assert w.process_log(unknown) == (unknown, [])  # a tool not configured: passed through untouched


def test_score_drift_raises_once_for_the_moved_tool_and_sets_its_metrics():
    w, metrics = watch()
    rows = []
    for i in range(20):
        rows += w.results(
            [
                outcome("T1", "W1", (i, 0), score=0.01 + 0.001 * (i % 5)),
                outcome("T2", "W1", (i, 0), score=0.01 + 0.001 * (i % 5)),
            ],
            now=float(i),
        )
    for i in range(30):
        rows += w.results(
            [
                outcome("T1", "W1", (i, 1), score=0.05 + 0.001 * (i % 5)),
                outcome("T2", "W1", (i, 1), score=0.01 + 0.001 * (i % 5)),
            ],
            now=20.0 + i,
        )
    [row] = rows
    body = json.loads(row.payload)
    assert row.topic == "fab/edge/ST-01/drift/T1" and row.decision == "DRIFT"
    assert body["kind"] == "score" and body["state"] == "raised" and body["statistic"] >= 0.5
    labels = {"recipe": "R", "tool": "T1", "kind": "score"}
    assert metrics.registry.get_sample_value("edge_drift_active", labels) == 1
    assert metrics.registry.get_sample_value("edge_drift_score_ks", {"recipe": "R", "tool": "T2"}) < 0.5


def test_a_wafer_ends_into_a_summary_and_an_alert_at_the_severity_level():
    w, metrics = watch()
    dies = [(x, y) for x in range(8) for y in range(8)]
    for x, y in dies:  # a dense blob of defects: high severity
        bad = 2 <= x <= 5 and 2 <= y <= 5
        w.results([outcome("T1", "W1", (x, y), "DEFECT" if bad else "PASS", "CRACK" if bad else "GOOD")], 0.0)
    w.results([outcome("T1", "W2", (0, 0))], 1.0)  # the next wafer ends W1 ...
    assert w.due(1.0, in_work=lambda key: key == ("T1", "L1", "W1")).rows == []  # ... once none of it is in work
    due = w.due(2.0, in_work=lambda key: False)
    summary_row, alert_row = due.rows
    assert due.wafers == [("T1", "L1", "W1")]  # whose open dies leave the outbox with these rows
    summary, alert = json.loads(summary_row.payload), json.loads(alert_row.payload)
    assert summary_row.topic == "fab/edge/ST-01/wafers/T1" and alert_row.topic == "fab/edge/ST-01/alerts/T1"
    assert summary["ended_by"] == "next_wafer" and summary["dies_inspected"] == 64
    assert summary["classes"] == {"CRACK": 16} and summary["severity"] >= 50
    assert alert["summary_id"] == summary["summary_id"] and alert["severity"] == summary["severity"]
    w.lot_event(LotEvent("wafer_end", "L1", "R", "T1", "W2"))
    [quiet] = w.due(3.0, in_work=lambda key: False).rows  # one clean die: no alert
    assert json.loads(quiet.payload)["ended_by"] == "wafer_end" and json.loads(quiet.payload)["severity"] < 50
    assert metrics.registry.get_sample_value("edge_wafers_summarised_total", {"tool": "T1"}) == 2
    assert w.close_ended() == Summaries([], [])


def test_open_wafers_are_reopened_from_their_recorded_dies_and_summarised_once_whole():
    before, _ = watch()
    outcomes = [
        outcome("T1", "W1", (x, 0), "DEFECT" if x < 3 else "PASS", "CRACK" if x < 3 else "GOOD") for x in range(6)
    ] + [outcome("T1", "W2", (0, 0)), outcome("T2", "W9", (1, 1))]
    before.results(outcomes[:5], 0.0)  # the daemon dies with W1 (ended by W2), W2 and W9 unsummarised
    dies = [die_row(o) for o in outcomes]
    after, _ = watch()
    assert after.restore(dies, now=100.0) == 3
    due = after.due(100.0 + CFG.wafers.end_grace_s, in_work=lambda key: False)
    assert due.wafers == [("T1", "L1", "W1")]  # ended by the tool's next wafer, as before the restart
    summary = json.loads(due.rows[0].payload)
    assert summary["dies_inspected"] == 6 and summary["classes"] == {"CRACK": 3}
    assert after.lot_event(LotEvent("wafer_end", "L1", "R", "T1", "W2")) == [(("T1", "L1", "W2"), "wafer_end")]
    assert after.close_ended().wafers == [("T1", "L1", "W2")]  # at a stop: W9 is still open and stays so


def test_an_end_the_mes_announced_before_a_restart_still_ends_the_reopened_wafer():
    before, _ = watch()
    outcomes = [outcome("T1", "W1", (x, 0)) for x in range(4)] + [outcome("T2", "W9", (1, 1))]
    before.results(outcomes, 0.0)
    ended = before.lot_event(LotEvent("lot_end", "L1", "R", "T1", None))
    assert ended == [(("T1", "L1", "W1"), "lot_end")]  # what the daemon keeps beside the dies
    assert before.lot_event(LotEvent("lot_start", "L2", "R", "T1", None)) == []
    after, _ = watch()  # the daemon was killed before the wafer's grace ran out
    assert after.restore([die_row(o) for o in outcomes], now=100.0, ends=ended) == 2
    due = after.due(100.0 + CFG.wafers.end_grace_s, in_work=lambda key: False)  # no idle wait, no next wafer
    assert due.wafers == [("T1", "L1", "W1")] and json.loads(due.rows[0].payload)["ended_by"] == "lot_end"


def test_a_rebaseline_clears_raised_drift_and_the_moved_level_becomes_the_reference():
    w, metrics = watch()
    for i in range(20):
        w.results([outcome("T1", "W1", (i, 0), score=0.01 + 0.001 * (i % 5))], now=float(i))
    raised = []
    for i in range(30):
        raised += w.results([outcome("T1", "W1", (i, 1), score=0.05 + 0.001 * (i % 5))], now=20.0 + i)
    assert [json.loads(r.payload)["state"] for r in raised] == ["raised"]
    [row] = w.rebaseline(Rebaseline("T1", ("R",), "j.doe", "PM: lamp replaced"))
    body = json.loads(row.payload)
    assert row.topic == "fab/edge/ST-01/drift/T1" and body["kind"] == "score" and body["state"] == "cleared"
    assert body["detail"] == {"reset": True, "by": "j.doe", "reason": "PM: lamp replaced"}
    assert metrics.registry.get_sample_value("edge_drift_active", {"recipe": "R", "tool": "T1", "kind": "score"}) == 0
    assert metrics.registry.get_sample_value("edge_drift_score_ks", {"recipe": "R", "tool": "T1"}) is None
    after = []
    for i in range(60):  # the serviced tool stays at its new level: that is now the reference, no drift
        after += w.results([outcome("T1", "W2", (i, 0), score=0.05 + 0.001 * (i % 5))], now=50.0 + i)
    assert after == [] and metrics.registry.get_sample_value("edge_drift_score_ks", {"recipe": "R", "tool": "T1"}) == 0
    assert w.rebaseline(Rebaseline("T1", ("R",), "j.doe", "")) == []  # nothing raised: nothing to clear


def test_a_rebaseline_relearns_the_parameters_so_a_lasting_step_is_no_longer_an_excursion():
    w, _ = watch()
    rng = np.random.default_rng(2)
    for _ in range(5):
        w.process_log(log("T1", rng))
    stepped = [w.process_log(log("T1", rng, shift=12.0))[0].anomalous for _ in range(3)]
    assert all(a and a[0]["name"] == DEFAULT_PARAMETERS[3] for a in stepped)  # flagged wafer after wafer
    w.rebaseline(Rebaseline("T1", ("R",), "ops", "recipe change"))
    stepped_name = DEFAULT_PARAMETERS[3]
    checked = [w.process_log(log("T1", rng, shift=12.0))[0].anomalous for _ in range(8)]
    assert checked[:5] == [()] * 5  # relearning: nothing judged before min_wafers
    assert all(stepped_name not in {p["name"] for p in a} for a in checked[5:])  # the new level is normal now


def test_a_restart_goes_on_from_the_saved_drift_and_statistics_instead_of_rebaselining():
    w, _ = watch()
    for i in range(20):
        w.results([outcome("T1", "W1", (i, 0), score=0.01 + 0.001 * (i % 5))], now=float(i))
    for i in range(30):
        w.results([outcome("T1", "W1", (i, 1), score=0.05 + 0.001 * (i % 5))], now=20.0 + i)
    rng = np.random.default_rng(4)
    for _ in range(6):
        w.process_log(log("T1", rng))
    saved = w.export_state()
    saved["score"][("R", "T9")] = saved["score"][("R", "T1")]  # a tool no longer configured: dropped
    restarted, metrics = watch()
    assert restarted.restore_state(saved) == {"score": [], "process": [], "parameters": [], "rebaselined": []}
    assert metrics.registry.get_sample_value("edge_drift_active", {"recipe": "R", "tool": "T1", "kind": "score"}) == 1
    assert metrics.registry.get_sample_value("edge_drift_score_ks", {"recipe": "R", "tool": "T1"}) >= 0.5
    assert restarted.export_state()["score"].keys() == {("R", "T1")}
    checked, _ = restarted.process_log(log("T1", rng, shift=12.0))  # statistics kept: judged at once
    assert checked.anomalous[0]["name"] == DEFAULT_PARAMETERS[3]
    [row] = restarted.rebaseline(Rebaseline("T1", ("R",), "ops", "PM"))  # the restored raise clears on request
    assert json.loads(row.payload)["state"] == "cleared"


def test_a_command_handed_over_again_is_known_as_repeated_also_after_a_restart():
    w, _ = watch()
    first = Rebaseline("T1", ("R",), "ops", "PM", "cmd-1")
    assert not w.repeated(first)
    w.rebaseline(first)
    assert w.repeated(first)
    assert not w.repeated(Rebaseline("T1", ("R",), "ops", "PM", "cmd-2"))  # another command
    assert not w.repeated(Rebaseline("T2", ("R",), "ops", "PM", "cmd-1"))  # another tool
    assert not w.repeated(Rebaseline("T1", ("R",), "ops", "PM"))  # no id: never taken for a repeat
    saved = w.export_state()
    saved["rebaselined"][("R", "T2")] = b"not msgpack"
    restarted, _ = watch()
    assert restarted.restore_state(saved)["rebaselined"] == [("R", "T2")]  # unreadable: forgotten, named
    assert restarted.repeated(first)
    for n in range(40):  # only the newest are remembered
        restarted.rebaseline(Rebaseline("T1", ("R",), "ops", "", f"later-{n}"))
    assert not restarted.repeated(first) and restarted.repeated(Rebaseline("T1", ("R",), "ops", "", "later-39"))
