"""Wafer tracking: which wafers end, why, and only once none of their frames is in work."""

from edge.watch.wafer_map import DieResult
from edge.watch.wafers import WaferTracker

A1, A2, B1 = ("AOI-01", "L1", "W01"), ("AOI-01", "L1", "W02"), ("AOI-02", "L9", "W01")


def die(x, y, decision="PASS", cls=None):
    return DieResult(x, y, decision, cls)


def idle(_key):
    return False


def test_the_next_wafer_of_a_tool_ends_the_previous_one_and_other_tools_are_untouched():
    t = WaferTracker()
    t.add(A1, "R", die(0, 0), now=0.0)
    t.add(B1, "R", die(0, 0), now=0.0)
    t.add(A1, "R", die(1, 0, "DEFECT", "CRACK"), now=1.0)
    assert t.due(2.0, idle_s=60, grace_s=0.0, in_work=idle) == []
    t.add(A2, "R", die(0, 0), now=2.0)
    [ended] = t.due(2.0, idle_s=60, grace_s=0.0, in_work=idle)
    assert ended.key == A1 and ended.ended_by == "next_wafer" and ended.recipe_id == "R"
    assert sorted(ended.dies) == [(0, 0), (1, 0)] and ended.dies[(1, 0)].defect_class == "CRACK"
    assert len(t) == 2


def test_an_ended_wafer_waits_for_its_frames_in_work():
    t = WaferTracker()
    t.add(A1, "R", die(0, 0), now=0.0)
    t.end_wafer(A1)
    assert t.due(1.0, idle_s=60, grace_s=0.0, in_work=lambda key: key == A1) == []
    t.add(A1, "R", die(1, 0), now=1.5)  # the straggler lands in the same wafer
    [ended] = t.due(2.0, idle_s=60, grace_s=0.0, in_work=idle)
    assert ended.ended_by == "wafer_end" and len(ended.dies) == 2


def test_lot_end_idle_and_a_stop_end_wafers_and_a_die_seen_twice_counts_once():
    t = WaferTracker()
    t.add(A1, "R", die(0, 0, "DEFECT", "CRACK"), now=0.0)
    t.add(A1, "R", die(0, 0, "PASS"), now=0.5)  # re-inspected: the last result counts
    t.add(B1, "R", die(3, 3), now=0.0)
    assert t.end_lot("AOI-01", "L1") == [A1]  # the wafers that ended now
    assert t.end_lot("AOI-02", "L1") == []  # another tool's lot of the same name: nothing of B1
    assert t.end_wafer(A1) == []  # ended already: the first reason stays
    [ended] = t.due(1.0, idle_s=60, grace_s=0.0, in_work=idle)
    assert ended.key == A1 and ended.ended_by == "lot_end" and list(ended.dies.values()) == [die(0, 0, "PASS")]
    assert t.due(59.0, idle_s=60, grace_s=0.0, in_work=idle) == []
    [idle_one] = t.due(60.0, idle_s=60, grace_s=0.0, in_work=idle)
    assert idle_one.key == B1 and idle_one.ended_by == "idle"
    t.add(A2, "R", die(0, 0), now=61.0)
    t.add((*B1[:2], "W02"), "R", die(0, 0), now=61.0)
    t.end_wafer(A2)
    [last] = t.close_ended()  # stopping: the ended wafer is summarised at once, grace or not ...
    assert last.key == A2 and last.ended_by == "wafer_end" and len(t) == 1  # ... the open one goes on


def test_a_straggler_of_the_previous_wafer_does_not_end_the_one_in_progress():
    t = WaferTracker()
    t.add(A1, "R", die(0, 0), now=0.0)
    t.add(A2, "R", die(0, 0), now=1.0)  # A2 starts: A1 ends
    t.add(A1, "R", die(1, 0), now=1.5)  # A1's die resent after busy lands in A1 ...
    t.add(A2, "R", die(1, 0), now=2.0)
    [ended] = t.due(2.0 + 5, idle_s=60, grace_s=5.0, in_work=idle)
    assert ended.key == A1 and len(ended.dies) == 2  # ... and A2 goes on, not ended by it
    assert t.end_wafer(A2) == [A2]


def test_an_end_for_a_wafer_never_seen_is_ignored():
    t = WaferTracker()
    assert t.end_wafer(A1) == []
    t.add(A1, "R", die(0, 0), now=0.0)  # its dies come after the MES message: still summarised later
    assert t.due(1.0, idle_s=60, grace_s=0.0, in_work=idle) == []


def test_an_ended_wafer_waits_out_the_grace_and_late_dies_never_make_a_second_summary():
    t = WaferTracker()
    t.add(A1, "R", die(0, 0), now=0.0)
    t.end_wafer(A1)  # the MES overtook the tool's last frames
    assert t.add(A1, "R", die(1, 0), now=1.0)
    assert t.due(2.5, idle_s=60, grace_s=2.0, in_work=idle) == []  # a die came 1.5 s ago
    [ended] = t.due(3.0, idle_s=60, grace_s=2.0, in_work=idle)
    assert len(ended.dies) == 2
    assert t.add(A1, "R", die(2, 0), now=4.0) is False  # summarised already: left out, reported
    assert len(t) == 0 and t.close_ended() == []
