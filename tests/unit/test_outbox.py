"""Outbox: one transaction per batch, de-duplication by (tool, frame), replay after reopening."""

from edge.outbox import EventRow, Outbox, ResultRow


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


def test_a_resent_frame_keeps_its_first_result(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.record([ResultRow("T1", "f1", "PASS", None, b"first")], [])
    box.record([ResultRow("T1", "f1", "DEFECT", "e9", b"second")], [])
    assert box.recorded_reply("T1", "f1") == b"first"
    assert box.recorded_reply("T2", "f1") is None
    box.close()
