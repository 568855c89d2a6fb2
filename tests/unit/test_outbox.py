"""Outbox: one transaction per batch, de-duplication by (tool, frame), replay after reopening."""

import time

import pytest

from edge.errors import OutboxError
from edge.flow import DieRow, EventRow, ResultRow
from edge.publish.outbox import Outbox


def rows(n, start=0):
    results = [ResultRow("T1", f"f{i}", "DEFECT", f"e{i}", b"reply%d" % i) for i in range(start, start + n)]
    events = [EventRow(f"e{i}", "p/s/events/T1", "DEFECT", f'{{"i": {i}}}') for i in range(start, start + n)]
    return results, events


def test_pending_events_survive_reopening_until_marked_delivered(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    box.record(*rows(5))
    first = box.pending(after_seq=0, limit=2)
    box.mark_delivered([e.seq for e in first])
    box.close()

    box = Outbox(path)
    left = box.pending(after_seq=0, limit=100)
    assert [e.event_id for e in left] == ["e2", "e3", "e4"]  # in insertion order
    assert box.backlog() == 3
    assert box.recorded_reply("T1", "f4") == b"reply4"
    box.close()


def test_marks_taken_back_put_events_in_the_pending_order_again(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.record(*rows(4))
    box.mark_delivered([e.seq for e in box.pending(0, 10)])
    assert box.pending(0, 10) == [] and box.backlog() == 0
    seqs = box._db.execute("SELECT seq FROM events ORDER BY seq").fetchall()
    box.mark_undelivered([seqs[3][0], seqs[1][0]])
    assert [e.event_id for e in box.pending(0, 10)] == ["e1", "e3"] and box.backlog() == 2
    box.close()


def test_a_resent_frame_keeps_its_first_result(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.record([ResultRow("T1", "f1", "PASS", None, b"first")], [])
    box.record([ResultRow("T1", "f1", "DEFECT", "e9", b"second")], [])
    assert box.recorded_reply("T1", "f1") == b"first"
    assert box.recorded_reply("T2", "f1") is None
    box.close()


def test_prune_drops_old_results_and_acknowledged_events_but_never_unacknowledged_ones(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.record(
        [ResultRow("T1", "old", "DEFECT", "e1", b"r")],
        [EventRow("e1", "t", "DEFECT", "{}"), EventRow("e2", "t", "DEFECT", "{}")],
    )
    box.mark_delivered([box.pending(0, 10)[0].seq])  # e1 acknowledged, e2 not
    cutoff = time.time() + 1  # everything so far is "old"
    box.record([ResultRow("T1", "new", "PASS", None, b"n")], [])
    box._db.execute("UPDATE results SET recorded_at = ? WHERE frame_id = 'new'", (cutoff + 10,))
    assert box.prune(cutoff) == {"results": 1, "events": 1, "wafer_dies": 0, "wafer_maps": 0, "wafer_ends": 0}
    assert [p.event_id for p in box.pending(0, 10)] == ["e2"]
    assert box.recorded_reply("T1", "old") is None and box.recorded_reply("T1", "new") == b"n"


def test_used_bytes_grows_with_the_rows_and_space_is_reused_after_pruning(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    empty = box.used_bytes()
    rows = [ResultRow("T1", f"f{i}", "PASS", None, b"x" * 2000) for i in range(500)]
    box.record(rows, [])
    full = box.used_bytes()
    assert full > empty + 500 * 2000
    box.prune(time.time() + 1)
    assert box.used_bytes() < empty + 100_000


def test_open_wafer_dies_survive_reopening_and_leave_with_their_summary(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    w1 = [DieRow("T1", "L1", "W1", x, 0, "R", "PASS", "GOOD") for x in range(3)]
    w2 = [DieRow("T1", "L1", "W2", 0, 0, "R", "DEFECT", "CRACK")]
    box.record(*rows(1), dies=w1)
    box.record(*rows(1, start=1), dies=[*w2, DieRow("T1", "L1", "W1", 2, 0, "R", "DEFECT", "CRACK")])  # re-inspected
    box.close()
    box = Outbox(path)
    assert box.open_dies() == w1[:2] + w2 + [DieRow("T1", "L1", "W1", 2, 0, "R", "DEFECT", "CRACK")]  # oldest first
    summary = EventRow("s1", "p/s/wafers/T1", "WAFER", "{}")
    box.record([], [summary], summarised=[("T1", "L1", "W1")])
    assert box.open_dies() == w2 and [e.event_id for e in box.pending(0, 10)] == ["e0", "e1", "s1"]
    assert box.prune(time.time() - 3600)["wafer_dies"] == 0  # W2 saw a die just now
    assert box.prune(time.time() + 1)["wafer_dies"] == 1  # a wafer silent past the retention is dropped
    assert box.open_dies() == []
    box.close()


def test_a_wafer_end_is_kept_until_its_summary_or_the_retention(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.record(*rows(1), dies=[DieRow("T1", "L1", w, 0, 0, "R", "PASS", "GOOD") for w in ("W1", "W2")])
    box.end_wafers([(("T1", "L1", "W1"), "wafer_end"), (("T1", "L1", "W2"), "lot_end")])
    box.end_wafers([(("T1", "L1", "W1"), "lot_end")])  # the first reason stays
    box.end_wafers([(("T9", "L1", "W7"), "wafer_end")])  # its dies are gone (say, pruned)
    box.close()
    box = Outbox(path)
    assert box.wafer_ends() == [
        (("T1", "L1", "W1"), "wafer_end"),
        (("T1", "L1", "W2"), "lot_end"),
        (("T9", "L1", "W7"), "wafer_end"),
    ]
    box.record([], [EventRow("s1", "p/s/wafers/T1", "WAFER", "{}")], summarised=[("T1", "L1", "W1")])
    assert [key for key, _ in box.wafer_ends()] == [("T1", "L1", "W2"), ("T9", "L1", "W7")]
    assert box.prune(time.time() - 3600)["wafer_ends"] == 0  # recent: kept
    assert box.prune(time.time() + 1) == {"results": 1, "events": 0, "wafer_dies": 1, "wafer_maps": 1, "wafer_ends": 2}
    assert box.wafer_ends() == []  # W7 had no die left; W2's went with its dies, silent past the retention
    box.close()


def test_the_line_watch_state_is_replaced_as_a_whole_and_survives_reopening(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.save_state({"score": {("R", "T1"): b"a", ("R", "T2"): b"b"}, "process": {("R", "T1"): b"c"}})
    box.save_state({"score": {("R", "T1"): b"a2"}})  # T2 re-baselined since: gone
    box.close()
    box = Outbox(path)
    assert box.load_state() == {"score": {("R", "T1"): b"a2"}}
    box.close()


def test_only_the_marks_commit_without_a_sync(tmp_path):
    """Results and events wait for the disk; delivered, released and forgotten marks commit without a sync of their
    own (a start makes each again), and the connection is back to syncing after each, a failed one too."""
    box = Outbox(tmp_path / "o.sqlite")
    statements: list[str] = []
    box._db.set_trace_callback(statements.append)

    def setting_at_commit(run) -> str:
        statements.clear()
        run()
        commits = [i for i, s in enumerate(statements) if s == "COMMIT"]
        assert len(commits) == 1 and box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        pragmas = [s for s in statements[: commits[0]] if s.startswith("PRAGMA synchronous")]
        return pragmas[-1].split("=")[1] if pragmas else "FULL"  # FULL: the connection's own setting

    assert setting_at_commit(lambda: box.record(*rows(2))) == "FULL"
    seqs = [e.seq for e in box.pending(0, 10)]
    assert setting_at_commit(lambda: box.mark_delivered(seqs)) == "NORMAL"
    assert setting_at_commit(lambda: box.release(["e0"])) == "NORMAL"
    assert setting_at_commit(lambda: box.forget_calibration(["b1"])) == "NORMAL"
    assert setting_at_commit(lambda: box.mark_undelivered(seqs[:1])) == "FULL"  # taking a mark back waits for it
    with pytest.raises(OutboxError):
        box.mark_delivered([object()])  # a value SQLite refuses: rolled back
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert [e.event_id for e in box.pending(0, 10)] == ["e0"]
    box.close()
