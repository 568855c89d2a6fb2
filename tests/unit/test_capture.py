"""The capture store and its keeper: which dies are kept, what is kept, the quota and the retention with their
tombstones, and the held events that go out only once their capture is written (real SQLite, real files)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import cli
from edge.capture import keeper as keeper_module
from edge.capture import overlay
from edge.capture.keeper import Keeper
from edge.capture.record import BORDERLINE, Capture, capture_of, capture_reason
from edge.capture.store import CaptureStore
from edge.config import parse_config
from edge.errors import CaptureError
from edge.flow import EventRow, Frame, FrameHeader, Outcome, ProcessLog, Tensors, Verdict
from edge.ops.async_db import AsyncDb
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics
from edge.publish.outbox import Outbox
from edge.publish.records import Stamp, records
from edge.shared import Shared

DAY = 86400.0


def _outcome(decision: str = "DEFECT", top: tuple[tuple[str, float], ...] = (("CRACK", 0.9), ("GOOD", 0.1)),
             audit: bool = False, frame_id: str = "f1", seed: int = 0) -> Outcome:  # fmt: skip
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (3, 64, 48), dtype=np.uint8)
    header = FrameHeader(frame_id, "AOI-01", "R1", "L1", "W1", (3, 4), 0.0, "png", None, "fab note", None)
    context = ProcessLog("L1", "W1", "R1", "AOI-01", 0.0, {"dose": 1.0},
                         anomalous=({"name": "dose", "value": 9.0, "z": 6.1},))  # fmt: skip
    frame = Frame(b"id", header, Tensors(rgb, rgb[:1]), 0.0, 1.0, 0.0, context)
    cls = top[0][0] if decision in ("DEFECT", "PASS") else "UNCLASSIFIED"
    verdict = Verdict(decision, cls, top[0][1], 0.8, "MARGINAL", decision == "PASS" and cls != "GOOD", audit, top)
    heatmap = rng.random((32, 32), dtype=np.float32)
    attention = rng.random(64, dtype=np.float32)
    return Outcome(frame, verdict, 0.0123, None, None, heatmap, attention)


def _capture(capture_id: str, ts: float, seed: int = 0, reason: str = "DEFECT") -> Capture:
    return capture_of(_outcome(seed=seed), capture_id, reason, {"classifier": "2"}, ts)


def _store(tmp_path: Path, max_bytes: int = 10**9, retention_s: float = 30 * DAY) -> CaptureStore:
    return CaptureStore(tmp_path / "captures", max_bytes, retention_s, 90 * DAY)


# --- which dies -------------------------------------------------------------------------------------------------


def test_flagged_dies_are_kept_for_their_event_and_borderline_passes_within_the_margin() -> None:
    def threshold(_: str) -> float:
        return 0.8

    assert capture_reason(_outcome("DEFECT"), threshold, 0.05) == "DEFECT"
    assert capture_reason(_outcome("REVIEW", (("GOOD", 0.9),)), threshold, 0.05) == "REVIEW"
    assert capture_reason(_outcome("PASS", (("CRACK", 0.7),), audit=True), threshold, 0.05) == "AUDIT"
    near = _outcome("PASS", (("GOOD", 0.22), ("CRACK", 0.77)))  # a defect class 0.03 under its threshold
    assert capture_reason(near, threshold, 0.05) == BORDERLINE
    assert capture_reason(near, threshold, 0.0) is None  # margin 0: borderline dies are not kept
    assert capture_reason(_outcome("PASS", (("GOOD", 0.3), ("CRACK", 0.7))), threshold, 0.05) is None
    assert capture_reason(_outcome("PASS", (("GOOD", 0.79),)), threshold, 0.05) is None  # GOOD is never borderline
    not_inspected = Outcome(_outcome().frame, None, reason="deadline_passed")
    assert capture_reason(not_inspected, threshold, 0.05) is None


def test_a_captured_event_names_its_capture_and_is_held() -> None:
    outcome = _outcome()
    stamp = Stamp("ST-01", "fab", {"anomaly": "1", "classifier": "2"}, 1.0, 1000.0)
    _, held = records(outcome, "E1", stamp, captured=True)
    _, plain = records(outcome, "E2", stamp)
    assert held is not None and plain is not None
    assert held.held and json.loads(held.payload)["capture"] == {"id": "E1", "url": "/api/captures/E1"}
    assert not plain.held and "capture" not in json.loads(plain.payload)


# --- what is kept -----------------------------------------------------------------------------------------------


def test_a_capture_keeps_the_die_its_maps_and_its_context(tmp_path: Path) -> None:
    store = _store(tmp_path)
    capture = _capture("E1", 1000.0)
    written = store.write([capture])
    assert written.captures == 1 and written.bytes == store.used_bytes > 32 * 32 * 2 + 64 * 2
    kept = store.get("E1")
    assert kept is not None and kept.gone is None and kept.event_id == "E1"
    png = cv2.imdecode(np.frombuffer(store.image_bytes(kept), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(png[:, :, ::-1].transpose(2, 0, 1), capture.image)  # lossless, RGB
    assert kept.heatmap is not None and np.allclose(kept.heatmap, capture.heatmap, atol=1e-3)
    assert kept.attention is not None and kept.attention.shape == (64,)
    summary = kept.summary()
    assert summary["top_k"][0] == {"class": "CRACK", "p": 0.9} and summary["note"] == "fab note"
    assert summary["process"]["anomalous_parameters"] == [{"name": "dose", "value": 9.0, "z": 6.1}]
    assert summary["models"] == {"classifier": "2"} and summary["die"] == [3, 4]
    assert summary["anomaly"] == {"score": 0.0123, "band": "MARGINAL"}
    assert store.write([capture]).captures == 0 and store.used_bytes == written.bytes  # a second write: no change
    assert store.get("nothing") is None
    store.close()
    reopened = _store(tmp_path)
    assert reopened.used_bytes == written.bytes and reopened.get("E1") is not None


def test_a_die_that_came_as_png_is_kept_in_the_tools_own_file_not_encoded_again(tmp_path: Path) -> None:
    store = _store(tmp_path)
    outcome = _outcome()
    ok, data = cv2.imencode(".png", np.ascontiguousarray(outcome.frame.tensors.rgb.transpose(1, 2, 0)[:, :, ::-1]),
                            [cv2.IMWRITE_PNG_COMPRESSION, 9])  # fmt: skip
    assert ok
    tool_png = data.tobytes()  # the tool's file, at a level the store would not choose
    frame = dataclasses.replace(outcome.frame, tensors=dataclasses.replace(outcome.frame.tensors, png=tool_png))
    capture = capture_of(dataclasses.replace(outcome, frame=frame), "E1", "DEFECT", {"classifier": "2"}, 1000.0)
    store.write([capture, _capture("E2", 1000.0)])
    kept, encoded_here = store.get("E1"), store.get("E2")
    assert kept is not None and encoded_here is not None
    assert store.image_bytes(kept) == tool_png  # as it came
    assert store.image_bytes(encoded_here) != tool_png  # no file of the tool: the store encodes the die
    store.close()


def test_the_quota_evicts_the_oldest_and_leaves_tombstones_that_say_why(tmp_path: Path) -> None:
    one = _store(tmp_path / "probe").write([_capture("P", 1000.0)]).bytes
    store = _store(tmp_path, max_bytes=int(2.5 * one))
    for i in range(4):
        store.write([_capture(f"E{i}", 1000.0 + i, seed=i)])
    assert store.used_bytes <= 2.5 * one
    kept = [c.capture_id for c in store.recent()]
    assert kept == ["E3", "E2"]  # newest first; the two oldest went
    gone = store.get("E0")
    assert gone is not None and gone.gone == "quota" and gone.image is None and gone.heatmap is None
    assert "byte quota" in str(gone.gone_detail) and gone.tool_id == "AOI-01"  # the facts stay
    with pytest.raises(CaptureError, match="gone"):
        store.image_bytes(gone)
    assert len(list((tmp_path / "captures" / "images").rglob("*.png"))) == 2


def test_retention_prunes_old_captures_then_forgets_their_tombstones(tmp_path: Path) -> None:
    store = _store(tmp_path, retention_s=10 * DAY)
    now = 100 * DAY
    store.write([_capture("OLD", now - 11 * DAY), _capture("NEW", now - DAY, seed=1)])
    stray = tmp_path / "captures" / "images" / "1970-01-01" / "orphan.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"left by a crash")
    os.utime(stray, (now - DAY, now - DAY))
    counts = store.prune(now=now + 7200)
    assert counts["retention"] == 1 and counts["quota"] == 0 and counts["orphans"] == 1 and not stray.exists()
    old = store.get("OLD")
    assert old is not None and old.gone == "retention"
    assert store.get("NEW") is not None and store.get("NEW").gone is None  # type: ignore[union-attr]
    assert store.prune(now=now + 91 * DAY)["forgotten"] == 1
    assert store.get("OLD") is None  # a tombstone past its time: unknown (404), no longer gone (410)


# --- held events --------------------------------------------------------------------------------------------------


def test_a_held_event_and_those_after_it_wait_for_its_release(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.record([], [EventRow("A", "t", "DEFECT", "{}"), EventRow("B", "t", "DEFECT", "{}", held=True),
                    EventRow("C", "t", "DEFECT", "{}")])  # fmt: skip
    assert [e.event_id for e in box.pending(0, 10)] == ["A"] and box.held_events() == ["B"]
    assert box.backlog() == 3
    box.release(["B"])
    assert [e.event_id for e in box.pending(0, 10)] == ["A", "B", "C"] and box.held_events() == []
    box.close()


def test_an_outbox_from_before_captures_gains_the_held_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, "
               "topic TEXT NOT NULL, decision TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL, "
               "delivered_at REAL)")  # fmt: skip
    db.execute("INSERT INTO events (event_id, topic, decision, payload, created_at) VALUES ('X', 't', 'D', '{}', 1)")
    db.commit()
    db.close()
    box = Outbox(path)
    assert [e.event_id for e in box.pending(0, 10)] == ["X"] and box.held_events() == []
    box.close()


class _Keeping:
    """A keeper over a real store and a real outbox, on their own threads, as the daemon builds it."""

    def __init__(self, tmp_path: Path, **capture: object) -> None:
        cfg = parse_config({"tools": [{"id": "AOI-01"}], "recipes": {"R1": {}},
                            "capture": {"path": str(tmp_path / "captures"), **capture}})  # fmt: skip
        self.metrics = Metrics()
        self.db, self.thread = AsyncDb(), AsyncDb()
        shared = Shared(cfg, self.metrics, None, self.db, RateLimited(10.0), None, None)  # type: ignore[arg-type]
        self.outbox = Outbox(tmp_path / "outbox.sqlite")
        c = cfg.capture
        self.store = CaptureStore(c.path, c.max_bytes, c.retention_days * DAY, c.tombstone_days * DAY)
        self.keeper = Keeper(shared, self.store, self.thread, self.outbox, lambda r, t, c: 0.8)

    def record_held(self, *event_ids: str) -> None:
        self.outbox.record([], [EventRow(e, "t", "DEFECT", "{}", held=True) for e in event_ids])

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def test_keep_writes_then_releases_and_settle_leaves_a_write_in_progress_alone(tmp_path: Path) -> None:
    k = _Keeping(tmp_path)
    borderline = capture_of(_outcome("PASS", (("GOOD", 0.22), ("CRACK", 0.77))), "B1", BORDERLINE, {}, 1000.0)
    captures = [_capture("E1", 1000.0), borderline]

    async def scenario() -> None:
        k.keeper.expect(captures)
        k.record_held("E1")
        await k.keeper.settle()  # the batch is between its outbox write and its capture write
        assert k.outbox.held_events() == ["E1"] and k.store.get("E1") is None
        await k.keeper.keep(captures)

    asyncio.run(scenario())
    assert k.outbox.held_events() == [] and [e.event_id for e in k.outbox.pending(0, 10)] == ["E1"]
    assert k.store.get("E1") is not None and k.store.get("B1") is not None
    assert k.value("edge_captures_total", reason="DEFECT") == 1 and k.value("edge_captures_total", reason=BORDERLINE)
    assert k.value("edge_capture_bytes") == k.store.used_bytes > 0


def test_queued_batches_are_written_in_order_then_announced_and_a_full_queue_gives_up_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper_module, "QUEUE_BATCHES", 1)
    k = _Keeping(tmp_path)
    announced: list[str] = []

    async def scenario() -> None:
        first, second = [_capture("E1", 1000.0)], [_capture("E2", 1001.0, seed=1)]
        for batch in (first, second):
            k.keeper.expect(batch)
            k.record_held(batch[0].capture_id)
        await k.keeper.submit(first, lambda: announced.append("E1"))
        await k.keeper.submit(second, lambda: announced.append("E2"))  # the queue holds one batch: given up
        assert announced == ["E2"] and k.outbox.held_events() == ["E1"]
        writer = asyncio.create_task(k.keeper.run())
        assert await k.keeper.finish(timeout_s=10)
        writer.cancel()

    asyncio.run(scenario())
    assert announced == ["E2", "E1"] and k.outbox.held_events() == []
    given_up = k.store.get("E2")
    assert given_up is not None and given_up.gone == "queue_full" and given_up.image is None
    assert k.store.get("E1") is not None and k.store.get("E1").gone is None  # type: ignore[union-attr]
    assert k.value("edge_capture_failures_total", reason="queue_full") == 1


def test_settle_releases_what_a_stopped_run_left_held_and_records_it_as_not_written(tmp_path: Path) -> None:
    k = _Keeping(tmp_path)
    k.record_held("LOST")
    asyncio.run(k.keeper.settle())
    assert k.outbox.held_events() == [] and [e.event_id for e in k.outbox.pending(0, 10)] == ["LOST"]
    lost = k.store.get("LOST")
    assert lost is not None and lost.gone == "not_written" and "stopped" in str(lost.gone_detail)


def test_a_failed_capture_write_still_releases_its_event_with_a_tombstone(tmp_path: Path) -> None:
    k = _Keeping(tmp_path)
    broken = capture_of(_outcome(), "E1", "DEFECT", {}, 1000.0)
    object.__setattr__(broken, "image", np.zeros((3, 0, 0), np.uint8))  # nothing OpenCV can encode
    k.keeper.expect([broken])
    k.record_held("E1")
    asyncio.run(k.keeper.keep([broken]))
    assert k.outbox.held_events() == [] and k.value("edge_capture_failures_total", reason="write_failed") == 1
    failed = k.store.get("E1")
    assert failed is not None and failed.gone == "write_failed" and failed.defect_class == "CRACK"
    assert not list((tmp_path / "captures" / "images").rglob("*.png*"))


# --- pictures and the command line --------------------------------------------------------------------------------


def test_the_heatmap_overlay_colours_the_hot_place_and_leaves_clean_areas_alone() -> None:
    rgb = np.full((3, 256, 256), 90, np.uint8)
    heatmap = np.zeros((32, 32), np.float32)
    heatmap[4, 20] = 1.0  # one hot cell: rows 32-40, columns 160-168 of the die
    picture = overlay.heatmap_overlay(rgb, heatmap)
    assert picture.shape == (256, 256, 3)
    changed = np.abs(picture.astype(int) - 90).sum(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 24 and ys.max() <= 48 and xs.min() >= 152 and xs.max() <= 176  # near the cell only
    assert picture[36, 164, 2] > picture[36, 164, 0]  # red over blue at the peak (TURBO's hot end)
    assert np.array_equal(overlay.heatmap_overlay(rgb, np.zeros((32, 32), np.float32)), overlay.die_bgr(rgb))


def test_the_attention_overlay_marks_the_heaviest_patch() -> None:
    rgb = np.full((3, 64, 64), 128, np.uint8)
    attention = np.full(64, 0.01, np.float32)
    attention[9] = 0.5  # patch row 1, column 1: pixels 8-16
    picture = overlay.attention_overlay(rgb, attention)
    hot, cold = picture[12, 12].astype(int), picture[40, 40].astype(int)
    assert hot[2] - hot[0] > 50 and cold[0] > cold[2]  # red where the classifier looked, blue elsewhere
    with pytest.raises(ValueError, match="square grid"):
        overlay.attention_overlay(rgb, np.ones(10, np.float32))


def test_the_command_line_lists_shows_and_draws_captures_and_says_when_one_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'[[tools]]\nid = "AOI-01"\n[recipes.R1]\n[capture]\npath = "{tmp_path / "captures"}"\n')
    assert cli.main(["captures", "list", "--config", str(config)]) == 1
    assert "no capture store" in capsys.readouterr().err
    store = _store(tmp_path)
    store.write([_capture("E1", time.time()), _capture("E2", time.time() + 1, seed=1)])
    store.mark_gone(["E0"], "not_written")
    store.close()
    assert cli.main(["captures", "list", "--config", str(config), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["capture_id"] for c in listed] == ["E2", "E1"] and listed[0]["top_k"][0]["class"] == "CRACK"
    assert cli.main(["captures", "show", "--config", str(config), "E1", "--out", str(tmp_path / "pics")]) == 0
    assert json.loads(capsys.readouterr().out)["capture_id"] == "E1"
    pictures = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert pictures == ["E1.attention.png", "E1.heatmap.png", "E1.png"]
    assert cv2.imread(str(tmp_path / "pics" / "E1.heatmap.png")).shape == (64, 48, 3)
    assert cli.main(["captures", "show", "--config", str(config), "E0"]) == 3
    assert "gone (not_written): the daemon stopped before the capture was written" in capsys.readouterr().err
    assert cli.main(["captures", "show", "--config", str(config), "NOPE"]) == 4


def test_a_queue_lists_kept_event_captures_oldest_first_by_filter_and_reads_facts_for_a_page(tmp_path: Path) -> None:
    store = _store(tmp_path)
    borderline = capture_of(_outcome("PASS", (("GOOD", 0.22), ("CRACK", 0.77))), "B1", BORDERLINE, {}, 999.0)
    store.write([_capture("E2", 1002.0), _capture("E1", 1001.0, seed=1), borderline])
    store.mark_gone(["E0"], "not_written")
    listed = store.flagged({})
    assert [c.capture_id for c in listed] == ["E1", "E2"]  # no borderline pass (no event), no tombstone
    assert listed[0] == ("E1", "E1", "AOI-01", "DEFECT", "CRACK")
    assert store.flagged({"tool_id": "AOI-02"}) == [] and len(store.flagged({"defect_class": "CRACK"})) == 2
    with pytest.raises(ValueError, match="no capture filter"):
        store.flagged({"colour": "red"})
    page = store.facts(["E2", "missing", "E1"])
    assert [c.capture_id for c in page] == ["E2", "E1"] and page[0].heatmap is None and page[0].facts["top_k"]
