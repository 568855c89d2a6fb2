"""The intake with fakes for its socket and its outbox: a frame resent while in work is answered once, on its
newest connection; one resent after it was recorded gets the recorded reply; an outbox that fails answers
``busy outbox_unavailable``; a full tool share, a draining station and bad input are turned away with their
reasons; a defect in handling one frame does not stop the intake; and frames handled at once (decoded side by side)
keep those guarantees: a copy resent while the first is decoded is answered once, on the newest connection, and
the frames in hand when the intake stops are finished. With decode worker processes, a frame whose worker died is
answered ``busy decoder_restarting`` and one whose image kills a worker again is refused."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import msgpack
import pytest

from edge.config import parse_config
from edge.errors import OutboxError
from edge.flow import Frame
from edge.ingest import imaging
from edge.ingest import intake as intake_module
from edge.ingest.admission import Inflight, Turnaround
from edge.ingest.intake import Intake
from edge.ingest.wire import encode_reply
from edge.ops.http import Health
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics
from edge.shared import Shared
from tests.unit.test_decoders import KILL, deadly_decode
from tests.unit.test_wire import _DROP, RAW, header

CONFIG = {
    "tools": [{"id": "AOI-01"}, {"id": "AOI-02"}],
    "recipes": {"R1": {}},
    "ingest": {"max_inflight_per_tool": 2, "busy_retry_after_ms": 50, "busy_retry_max_ms": 2000},
}


class FakeSocket:
    """Hands the intake queued messages; keeps every reply, decoded, with the identity it went to."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[tuple[bytes, list[bytes], frozenset[str] | None]] = asyncio.Queue()
        self.replies: list[tuple[bytes, dict]] = []

    async def recv(self) -> tuple[bytes, list[bytes], frozenset[str] | None]:
        return await self.incoming.get()

    async def send(self, identity: bytes, reply: bytes) -> None:
        self.replies.append((identity, msgpack.unpackb(reply)))


class Station:
    """An intake wired to fakes: ``recorded`` stands for the outbox's results, ``submitted`` for the batching."""

    def __init__(self, fail_outbox: bool = False, fail_submit: bool = False, **ingest: int) -> None:
        self.cfg = parse_config({**CONFIG, "ingest": {**CONFIG["ingest"], **ingest}})
        self.socket = FakeSocket()
        self.inflight: Inflight[Frame] = Inflight()
        self.recorded: dict[tuple[str, str], bytes] = {}
        self.submitted: list[Frame] = []
        self.health = Health(broker_required=False)
        self.metrics = Metrics()
        self.fail_outbox, self.fail_submit = fail_outbox, fail_submit
        no_db = no_tasks = None  # the intake reaches the outbox through recorded_reply only, and spawns nothing
        shared = Shared(self.cfg, self.metrics, self.health, no_db, RateLimited(10.0), self.inflight, no_tasks)  # type: ignore[arg-type]
        self.intake = Intake(shared, self.socket, Turnaround(), self._recorded_reply, self._submit)

    async def _recorded_reply(self, tool: str, frame_id: str) -> bytes | None:
        if self.fail_outbox:
            raise OutboxError("database disk image is malformed")
        return self.recorded.get((tool, frame_id))

    def _submit(self, frame: Frame) -> None:
        if self.fail_submit:
            raise RuntimeError("a defect downstream")
        self.submitted.append(frame)

    async def send(
        self,
        identity: bytes,
        parts: list[bytes] | None = None,
        tools: frozenset[str] | None = None,
        **overrides: object,
    ) -> None:
        await self.intake.handle(identity, parts or [msgpack.packb(header(**overrides)), RAW], tools)

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def run(coro):
    return asyncio.run(coro)


def test_a_frame_resent_while_in_work_is_answered_once_on_the_newest_connection():
    async def scenario() -> Station:
        st = Station()
        await st.send(b"first")
        await st.send(b"second")  # the tool reconnected and resent before its answer came
        return st

    st = run(scenario())
    assert len(st.submitted) == 1 and st.socket.replies == []
    assert st.inflight.get(("AOI-01", "f-1")).identity == b"second"
    assert st.count("edge_frames_duplicate_total", tool="AOI-01") == 1


def test_a_frame_resent_after_it_was_recorded_gets_the_recorded_reply():
    async def scenario() -> Station:
        st = Station()
        st.recorded[("AOI-01", "f-1")] = encode_reply({"frame_id": "f-1", "status": "ok", "decision": "PASS"})
        await st.send(b"again")
        return st

    st = run(scenario())
    assert st.submitted == [] and len(st.inflight) == 0
    assert st.socket.replies == [(b"again", {"frame_id": "f-1", "status": "ok", "decision": "PASS"})]
    assert st.count("edge_frames_duplicate_total", tool="AOI-01") == 1


def test_an_outbox_that_fails_answers_outbox_unavailable_and_the_intake_goes_on():
    async def scenario() -> tuple[Station, bool]:
        st = Station(fail_outbox=True)
        receiving = asyncio.create_task(st.intake.run())
        await st.socket.incoming.put((b"tool", [msgpack.packb(header()), RAW], None))
        await st.socket.incoming.put((b"tool", [msgpack.packb(header(frame_id="f-2")), RAW], None))
        for _ in range(200):
            if len(st.socket.replies) == 2:
                break
            await asyncio.sleep(0.005)
        alive = not receiving.done()
        receiving.cancel()
        return st, alive

    st, alive = run(scenario())
    assert alive and st.submitted == [] and len(st.inflight) == 0
    assert [reply for _, reply in st.socket.replies] == [
        {"frame_id": None, "status": "busy", "reason": "outbox_unavailable", "retry_after_ms": 50}
    ] * 2
    assert st.count("edge_internal_errors_total", stage="outbox") == 2


def test_a_tool_over_its_share_is_told_to_wait_while_another_tool_is_accepted():
    async def scenario() -> Station:
        st = Station()
        for i in range(3):
            await st.send(b"busy-tool", frame_id=f"f-{i}")
        await st.send(b"quiet-tool", tool_id="AOI-02", frame_id="q-1")
        return st

    st = run(scenario())
    assert [f.header.frame_id for f in st.submitted] == ["f-0", "f-1", "q-1"]
    [(identity, reply)] = st.socket.replies
    assert identity == b"busy-tool" and reply["status"] == "busy" and reply["reason"] == "tool_share_full"
    assert 50 <= reply["retry_after_ms"] <= 2000
    assert st.count("edge_frames_busy_total", tool="AOI-01", reason="tool_share_full") == 1


def test_a_draining_station_accepts_no_new_frame():
    async def scenario() -> Station:
        st = Station()
        st.health.draining = True
        await st.send(b"tool")
        return st

    st = run(scenario())
    assert st.submitted == [] and st.socket.replies[0][1]["reason"] == "shutting_down"


@pytest.mark.parametrize(
    ("parts", "overrides", "tools", "reason"),
    [
        ([b"not msgpack"], {}, None, "bad_multipart"),
        (None, {"tool_id": "AOI-99"}, None, "unknown_tool"),
        (None, {}, frozenset({"AOI-02"}), "tool_key_mismatch"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(parts, overrides, tools, reason):
    async def scenario() -> Station:
        st = Station()
        await st.send(b"tool", parts, tools, **overrides)
        return st

    st = run(scenario())
    [(_, reply)] = st.socket.replies
    assert st.submitted == [] and reply["status"] == "rejected" and reply["reason"].startswith(reason + ":")
    assert st.count("edge_frames_rejected_total", reason=reason) == 1


def test_a_defect_downstream_costs_the_frame_a_busy_answer_not_the_intake():
    async def scenario() -> Station:
        st = Station(fail_submit=True)
        await st.send(b"tool")
        st.fail_submit = False
        await st.send(b"tool", frame_id="f-2")
        return st

    st = run(scenario())
    assert st.socket.replies[0][1]["reason"] == "internal_error"
    assert [f.header.frame_id for f in st.submitted] == ["f-2"]
    assert st.count("edge_internal_errors_total", stage="intake") == 1


# --- frames in hand at once: decoded side by side, the same guarantees -------------------------------------------


async def _until(check, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the intake did not get there in time")


def test_two_frames_are_decoded_side_by_side(monkeypatch):
    both = threading.Barrier(2, timeout=5)  # broken (an error) unless two decodes are under way at once

    def decode_beside_another(*args):
        both.wait()
        return imaging.decode(*args)

    monkeypatch.setattr(intake_module, "decode", decode_beside_another)

    async def scenario() -> Station:
        st = Station()
        receiving = asyncio.create_task(st.intake.run())
        await st.socket.incoming.put((b"a", [msgpack.packb(header()), RAW], None))
        await st.socket.incoming.put((b"b", [msgpack.packb(header(tool_id="AOI-02", frame_id="g-1")), RAW], None))
        await _until(lambda: len(st.submitted) == 2)
        receiving.cancel()
        return st

    st = run(scenario())
    assert sorted(f.header.frame_id for f in st.submitted) == ["f-1", "g-1"] and st.socket.replies == []


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Decoding waits until this is set (at most 5 s): frames stay in hand meanwhile."""
    gate = threading.Event()

    def held_decode(*args):
        gate.wait(5)
        return imaging.decode(*args)

    monkeypatch.setattr(intake_module, "decode", held_decode)
    return gate


def test_the_intake_holds_at_most_frames_in_hand_and_leaves_the_rest_queued(release: threading.Event):
    async def scenario() -> tuple[Station, int, int]:
        st = Station(frames_in_hand=3, max_inflight_per_tool=8)
        receiving = asyncio.create_task(st.intake.run())
        for i in range(5):
            await st.socket.incoming.put((b"tool", [msgpack.packb(header(frame_id=f"f-{i}")), RAW], None))
        await _until(lambda: st.count("edge_frames_received_total", tool="AOI-01") == 3)
        await asyncio.sleep(0.05)  # the decodes are held: nothing more is taken
        taken, queued = int(st.count("edge_frames_received_total", tool="AOI-01")), st.socket.incoming.qsize()
        release.set()
        await _until(lambda: len(st.submitted) == 5)
        receiving.cancel()
        return st, taken, queued

    st, taken, queued = run(scenario())
    assert (taken, queued) == (3, 2) and st.socket.replies == []
    assert sorted(f.header.frame_id for f in st.submitted) == [f"f-{i}" for i in range(5)]


def test_a_frame_resent_while_it_is_decoded_is_answered_once_on_the_newest_connection(release: threading.Event):
    async def scenario() -> Station:
        st = Station()
        receiving = asyncio.create_task(st.intake.run())
        await st.socket.incoming.put((b"first", [msgpack.packb(header()), RAW], None))
        await _until(lambda: st.count("edge_frames_received_total", tool="AOI-01") == 1)
        await st.socket.incoming.put((b"second", [msgpack.packb(header()), RAW], None))  # the tool reconnected
        await _until(lambda: st.count("edge_frames_duplicate_total", tool="AOI-01") == 1)
        release.set()
        await _until(lambda: len(st.submitted) == 1)
        await asyncio.sleep(0.05)  # nothing more comes of the copy
        receiving.cancel()
        return st

    st = run(scenario())
    [frame] = st.submitted
    assert frame.identity == b"second" and st.socket.replies == []


def test_a_copy_of_a_frame_refused_in_hand_hears_the_refusal_on_the_newest_connection(release: threading.Event):
    async def scenario() -> Station:
        st = Station()
        receiving = asyncio.create_task(st.intake.run())
        garbage = [msgpack.packb(header(encoding="png", shape=_DROP)), b"\x89PNG not really"]
        await st.socket.incoming.put((b"first", garbage, None))
        await _until(lambda: st.count("edge_frames_received_total", tool="AOI-01") == 1)
        await st.socket.incoming.put((b"second", garbage, None))
        await _until(lambda: st.count("edge_frames_duplicate_total", tool="AOI-01") == 1)
        release.set()
        await _until(lambda: len(st.socket.replies) == 1)
        receiving.cancel()
        return st

    st = run(scenario())
    [(identity, reply)] = st.socket.replies
    assert identity == b"second" and reply["status"] == "rejected" and reply["reason"].startswith("undecodable")


def test_stopping_the_intake_finishes_the_frames_in_hand(release: threading.Event):
    async def scenario() -> tuple[Station, bool]:
        st = Station()
        receiving = asyncio.create_task(st.intake.run())
        await st.socket.incoming.put((b"tool", [msgpack.packb(header()), RAW], None))
        await _until(lambda: st.count("edge_frames_received_total", tool="AOI-01") == 1)
        receiving.cancel()  # the drain stops the intake while the frame is decoded
        asyncio.get_running_loop().call_later(0.05, release.set)
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        return st, receiving.cancelled()

    st, cancelled = run(scenario())
    assert cancelled and [f.header.frame_id for f in st.submitted] == ["f-1"]  # accepted, so it will be answered


def test_a_decode_worker_s_death_answers_busy_and_an_image_that_kills_twice_is_refused(monkeypatch):
    monkeypatch.setattr(intake_module, "decode", deadly_decode)
    poison = KILL + RAW[len(KILL) :]

    async def scenario() -> Station:
        st = Station(decode_processes=1)
        try:
            for _ in range(2):  # the tool resends after busy
                await st.send(b"tool", [msgpack.packb(header(frame_id="p-1")), poison])
            await st.send(b"tool", [msgpack.packb(header(frame_id="f-2")), RAW])  # the pool works again
        finally:
            st.intake._decoder.close()
        return st

    st = run(scenario())
    busy, refused = (reply for _, reply in st.socket.replies)
    assert (busy["status"], busy["reason"], busy["frame_id"]) == ("busy", "decoder_restarting", "p-1")
    assert refused["status"] == "rejected" and refused["reason"].startswith("undecodable: the decoder's process died")
    assert [f.header.frame_id for f in st.submitted] == [f.header.frame_id for f in st.inflight] == ["f-2"]
    assert st.count("edge_frames_busy_total", tool="AOI-01", reason="decoder_restarting") == 1
    assert st.count("edge_frames_rejected_total", reason="undecodable") == 1
