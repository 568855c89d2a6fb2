"""Publisher bookkeeping against a real outbox: which events go out again after the link to the broker
drops. The link is a recording stand-in (the broker side is covered in tests/integration)."""

from __future__ import annotations

import asyncio
import json

from edge.flow import EventRow, ResultRow
from edge.ops.metrics import Metrics
from edge.publish.outbox import Outbox
from edge.publish.publisher import Publisher


class RecordingLink:
    def __init__(self) -> None:
        self.connected = True
        self.sent: list[str] = []

    def publish(self, topic: str, payload: str, qos: int = 1) -> int | None:
        if not self.connected:
            return None
        self.sent.append(json.loads(payload)["event_id"])
        return len(self.sent)  # the mid


def record(outbox: Outbox, n: int) -> None:
    ids = [f"e{i}" for i in range(n)]
    outbox.record(
        [ResultRow("T1", f"f{i}", "DEFECT", e, b"r") for i, e in enumerate(ids)],
        [EventRow(e, "fab/edge/ST/events/T1", "DEFECT", json.dumps({"event_id": e})) for e in ids],
    )


def pending_ids(outbox: Outbox) -> list[str]:
    return [p.event_id for p in outbox.pending(0, 100)]


def test_acknowledgements_heard_while_a_mark_is_on_its_way_are_still_replayed(tmp_path):
    """Acks 2 and 3 arrive, and then the link drops, while the mark of ack 1 is being written: all three
    were acknowledged within the window, so all three are pending again afterwards."""

    async def scenario() -> None:
        outbox = Outbox(tmp_path / "o.sqlite")
        record(outbox, 3)
        link = RecordingLink()
        gate = asyncio.Event()
        gate.set()

        async def run_db(fn, *args):
            if fn.__name__ == "mark_delivered":
                await gate.wait()
            return fn(*args)

        metrics = Metrics()
        publisher = Publisher(outbox, link, metrics, run_db, max_inflight=10, replay_acked_s=5.0)
        await publisher.step()
        assert link.sent == ["e0", "e1", "e2"]
        publisher.on_ack(1)
        gate.clear()
        marking = asyncio.create_task(publisher.step())  # holds at the mark of e0
        await asyncio.sleep(0.01)
        publisher.on_ack(2)
        publisher.on_ack(3)
        link.connected = False
        publisher.on_link(False)
        gate.set()
        await marking
        link.connected = True
        publisher.on_link(True)
        await publisher.step()
        await publisher.step()
        assert link.sent[3:] == ["e0", "e1", "e2"]  # in the order recorded
        assert pending_ids(outbox) == ["e0", "e1", "e2"]  # not acknowledged since
        assert metrics.events_republished._value.get() == 3
        outbox.close()

    asyncio.run(scenario())


def test_without_a_window_only_what_was_unacknowledged_goes_out_again(tmp_path):
    async def scenario() -> None:
        outbox = Outbox(tmp_path / "o.sqlite")
        record(outbox, 4)
        link = RecordingLink()

        async def run_db(fn, *args):
            return fn(*args)

        publisher = Publisher(outbox, link, Metrics(), run_db, max_inflight=10, replay_acked_s=0.0)
        await publisher.step()
        publisher.on_ack(1)
        publisher.on_ack(2)
        link.connected = False
        publisher.on_link(False)
        await publisher.step()
        link.connected = True
        publisher.on_link(True)
        await publisher.step()
        assert link.sent == ["e0", "e1", "e2", "e3", "e2", "e3"]
        assert pending_ids(outbox) == ["e2", "e3"]
        outbox.close()

    asyncio.run(scenario())
