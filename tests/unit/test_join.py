"""Joining frames with MES context: immediate when the log is known, released when it arrives,
going on without it when the window runs out."""

import json

import numpy as np

from edge.flow import Frame, FrameHeader, Tensors
from edge.inference.inputs import batch_inputs
from edge.mes.context import ContextCache, parse_process_log
from edge.mes.join import Joiner
from edge.process_params import DEFAULT_PARAMETERS

TENSORS = Tensors(np.zeros((3, 256, 256), np.uint8), np.zeros((1, 256, 256), np.uint8))


def frame(frame_id: str, wafer: str = "W1", notes: str | None = None) -> Frame:
    header = FrameHeader(frame_id, "T1", "R1", "L1", wafer, (0, 0), 0.0, "raw", (256, 256, 3), notes, None)
    return Frame(b"id", header, TENSORS, 0.0, 1.0, 0.0)


def log(wafer: str = "W1"):
    body = {
        "lot_id": "L1",
        "wafer_id": wafer,
        "recipe_id": "R1",
        "tool_id": "T1",
        "ts": 0,
        "params": {DEFAULT_PARAMETERS[0]: 30.0},
        "notes": "anneal alarm",
    }
    return parse_process_log(json.dumps(body).encode())


def test_known_context_joins_at_once():
    j = Joiner(ContextCache(10, 100))
    j.on_log(log(), now=0.0)
    f = frame("f1")
    assert j.admit(f, now=1.0, wait=True) and f.context is not None and len(j) == 0


def test_waiting_frames_are_released_by_their_log_only():
    j = Joiner(ContextCache(10, 100))
    a, b = frame("a"), frame("b", wafer="W2")
    assert not j.admit(a, 0.0, wait=True) and not j.admit(b, 0.0, wait=True) and len(j) == 2
    released = j.on_log(log("W1"), 0.01)
    assert released == [a] and a.context is not None and len(j) == 1
    assert j.expire(b) and b.context is None and len(j) == 0
    assert not j.expire(a)  # already released: its timer finds nothing to do


def test_without_a_window_frames_never_wait():
    j = Joiner(ContextCache(10, 100))
    assert j.admit(frame("a"), 0.0, wait=False) and len(j) == 0


def test_batch_inputs_mark_missing_modalities_and_use_the_note_from_the_log():
    with_ctx, without = frame("a"), frame("b", notes=None)
    with_ctx.context = log()
    inputs = batch_inputs([with_ctx, without], {"R1": DEFAULT_PARAMETERS})
    assert inputs.present.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert inputs.process[0, 0] == 30.0 and not inputs.process[1].any()
    assert inputs.notes[0].any() and not inputs.notes[1].any()
    assert inputs.rgb.shape == (2, 3, 256, 256) and inputs.grey.shape == (2, 1, 256, 256)
