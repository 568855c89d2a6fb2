"""Joining frames with MES context: immediate when the log is known, released when it arrives,
going on without it when the window runs out."""

import json

import numpy as np

from edge.flow import Frame, FrameHeader, Tensors
from edge.inference.inputs import batch_inputs
from edge.mes.context import ContextCache, parse_process_log
from edge.mes.join import TOOL_SILENT, WAFER_EXPIRED, Joiner
from edge.process_params import DEFAULT_PARAMETERS

TENSORS = Tensors(np.zeros((3, 256, 256), np.uint8), np.zeros((1, 256, 256), np.uint8))


def frame(frame_id: str, wafer: str = "W1", notes: str | None = None, tool: str = "T1") -> Frame:
    header = FrameHeader(frame_id, tool, "R1", "L1", wafer, (0, 0), 0.0, "raw", (256, 256, 3), notes, None)
    return Frame(b"id", header, TENSORS, 0.0, 1.0, 0.0)


def log(wafer: str = "W1", tool: str = "T1"):
    body = {
        "lot_id": "L1",
        "wafer_id": wafer,
        "recipe_id": "R1",
        "tool_id": tool,
        "ts": 0,
        "params": {DEFAULT_PARAMETERS[0]: 30.0},
        "notes": "anneal alarm",
    }
    return parse_process_log(json.dumps(body).encode())


def test_known_context_joins_at_once():
    j = Joiner(ContextCache(10, 100))
    j.on_log(log(), now=0.0)
    f = frame("f1")
    assert j.admit(f, now=1.0, wait=True) == "joined" and f.context is not None and len(j) == 0


def test_waiting_frames_are_released_by_their_log_only():
    j = Joiner(ContextCache(10, 100))
    a, b = frame("a"), frame("b", wafer="W2")
    assert j.admit(a, 0.0, wait=True) == j.admit(b, 0.0, wait=True) == "waiting" and len(j) == 2
    released = j.on_log(log("W1"), 0.01)
    assert released == [a] and a.context is not None and len(j) == 1
    assert j.expire(b) == [b] and b.context is None and len(j) == 0
    assert j.expire(a) == []  # already released: its timer finds nothing to do


def test_without_a_window_frames_never_wait():
    j = Joiner(ContextCache(10, 100))
    assert j.admit(frame("a"), 0.0, wait=False) == "no_wait" and len(j) == 0


def test_a_wafer_whose_window_ran_out_does_not_make_its_other_frames_wait():
    j = Joiner(ContextCache(10, 100), silent_after=5)
    first, second = frame("a"), frame("b")
    assert j.admit(first, 0.0, True) == j.admit(second, 0.01, True) == "waiting"
    assert j.expire(first) == [first, second], "the others of the wafer go on with the first"
    assert j.expire(second) == [] and len(j) == 0
    assert j.admit(frame("c"), 0.1, True) == WAFER_EXPIRED, "later frames of the wafer: no wait"
    assert j.admit(frame("d", wafer="W2"), 0.1, True) == "waiting", "another wafer still waits for its own log"
    j.on_log(log("W1"), 0.2)  # the log came late after all: later frames get it
    late = frame("e")
    assert j.admit(late, 0.3, True) == "joined" and late.context is not None


def test_a_silent_tool_stops_waiting_until_its_mes_is_heard_again():
    j = Joiner(ContextCache(10, 100), silent_after=2)
    for wafer in ("W1", "W2"):
        f = frame(f"f-{wafer}", wafer=wafer)
        assert j.admit(f, 0.0, True) == "waiting"
        other = frame(f"o-{wafer}", wafer=f"X{wafer}", tool="T2")  # another tool's frame waits on
        assert j.admit(other, 0.0, True) == "waiting"
        held = frame(f"h-{wafer}", wafer="W9")
        if wafer == "W2":
            assert j.admit(held, 0.0, True) == "waiting"
            assert j.expire(f) == [f, held], "the tool goes silent: its waiting frames all go on"
        else:
            assert j.expire(f) == [f] and j.silent == set()
    assert j.silent == {"T1"} and len(j) == 2  # T2's frames still wait for their logs
    assert j.admit(frame("n", wafer="W5"), 1.0, True) == TOOL_SILENT
    j.on_log(log("W6"), 1.1)  # any log of the tool: heard again
    assert j.silent == set() and j.admit(frame("m", wafer="W7"), 1.2, True) == "waiting"


def test_the_wafers_remembered_are_bounded():
    j = Joiner(ContextCache(10, 100), silent_after=10**6, remembered=3)
    for i in range(5):
        f = frame(f"f{i}", wafer=f"W{i}")
        j.admit(f, 0.0, True)
        j.expire(f)
    assert j.admit(frame("x", wafer="W0"), 0.0, True) == "waiting", "the oldest wafer was forgotten"
    assert j.admit(frame("y", wafer="W4"), 0.0, True) == WAFER_EXPIRED


def test_batch_inputs_mark_missing_modalities_and_use_the_note_from_the_log():
    with_ctx, without = frame("a"), frame("b", notes=None)
    with_ctx.context = log()
    inputs = batch_inputs([with_ctx, without], {"R1": DEFAULT_PARAMETERS})
    assert inputs.present.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert inputs.process[0, 0] == 30.0 and not inputs.process[1].any()
    assert inputs.notes[0].any() and not inputs.notes[1].any()
    assert inputs.rgb.shape == (2, 3, 256, 256) and inputs.grey.shape == (2, 1, 256, 256)
