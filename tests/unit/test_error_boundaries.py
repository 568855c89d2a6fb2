"""Error boundaries: SQLite's errors leave the outbox and the calibration store as the project's own errors, on
reads as on writes; the daemon answers, counts and goes on; and every resource it opened is closed when it stops
short of serving."""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest
from tritonclient.utils import InferenceServerException

from calibration.errors import CalibrationError, RequestRefused, StoreUnavailable, UnknownEvent
from calibration.store import CalibrationStore
from edge.config import parse_config
from edge.daemon import Daemon
from edge.errors import InferenceFailed, OutboxError, TritonUnavailable
from edge.flow import ResultRow
from edge.inference.triton_client import classify
from edge.ingest.admission import Turnaround
from edge.ingest.intake import Intake
from edge.ops.health_loop import health_loop
from edge.ops.housekeeping import Housekeeping
from edge.ops.sdnotify import Notifier
from edge.publish.outbox import Outbox
from edge.publish.publisher import Publisher
from tests.unit.test_outbox import rows
from tests.unit.test_wire import RAW, header

MINIMAL = {"tools": [{"id": "AOI-01"}], "recipes": {"R1": {}}}
OUTBOX_READS = {
    "recorded_reply": ("T1", "f0"),
    "pending": (0, 10),
    "backlog": (),
    "used_bytes": (),
    "open_dies": (),
    "wafer_ends": (),
    "load_state": (),
}
STORE_READS = {
    "profiles": (),
    "version": ("R1", "AOI-01"),
    "states": ("R1", "AOI-01"),
    "data_version": (),
    "escape_estimate": ("R1", "AOI-01", "CRACK"),
    "history": ("R1", "AOI-01"),
}


def broken_outbox(tmp_path) -> Outbox:
    """An outbox whose SQLite connection fails every call (as a vanished or corrupted file would)."""
    box = Outbox(tmp_path / "outbox.sqlite")
    box.record(*rows(2))
    box._db.close()
    return box


@pytest.mark.parametrize("method", sorted(OUTBOX_READS))
def test_outbox_reads_raise_outbox_error_not_sqlite_errors(tmp_path, method):
    box = broken_outbox(tmp_path)
    with pytest.raises(OutboxError, match="cannot"):
        getattr(box, method)(*OUTBOX_READS[method])


def test_outbox_writes_still_raise_outbox_error_and_roll_back(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite")
    box.record(*rows(2))
    results, events = rows(2, start=2)
    unbindable = ResultRow("T1", "f9", "DEFECT", None, ["not", "bytes"])  # type: ignore[arg-type]
    with pytest.raises(OutboxError, match="record batch"):
        box.record([*results, unbindable], events)
    assert box.backlog() == 2 and box.recorded_reply("T1", "f2") is None  # nothing of the batch was kept
    box.close()


@pytest.mark.parametrize("method", sorted(STORE_READS))
def test_calibration_store_reads_raise_store_unavailable(tmp_path, method):
    store = CalibrationStore(tmp_path / "calibration.sqlite")
    store.ensure_profile("R1", "AOI-01", ["GOOD", "CRACK"])
    store._db.close()
    with pytest.raises(StoreUnavailable, match="cannot"):
        getattr(store, method)(*STORE_READS[method])


def test_calibration_store_writes_raise_store_unavailable(tmp_path):
    store = CalibrationStore(tmp_path / "calibration.sqlite")
    store._db.close()
    with pytest.raises(StoreUnavailable, match="write"):
        store.ensure_profile("R1", "AOI-01", ["GOOD"])


def test_an_unreadable_store_file_is_refused_as_store_unavailable(tmp_path):
    path = tmp_path / "calibration.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailable, match="open the calibration store"):
        CalibrationStore(path)


def test_refusals_are_calibration_errors_and_not_value_errors(tmp_path):
    """A caller that catches ValueError around its own parsing must not swallow a refusal by accident."""
    store = CalibrationStore(tmp_path / "calibration.sqlite")
    store.ensure_profile("R1", "AOI-01", ["GOOD", "CRACK"])
    with pytest.raises(UnknownEvent) as refused:
        store.review("no-such-event", "real", "alice")
    assert isinstance(refused.value, RequestRefused) and isinstance(refused.value, CalibrationError)
    assert not isinstance(refused.value, ValueError)
    with pytest.raises(RequestRefused, match="who"):
        store.review("no-such-event", "real", "")
    store.close()


class OneFrameSocket:
    """The intake's socket: one frame from one tool, then silence; what the daemon answers is kept."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts: list[bytes] | None = parts
        self.replies: list[dict] = []
        self.answered = asyncio.Event()

    async def recv(self):
        if self._parts is None:
            await asyncio.Event().wait()
        parts, self._parts = self._parts, None
        return b"tool-identity", parts, None

    async def send(self, identity: bytes, reply: bytes) -> None:
        self.replies.append(msgpack.unpackb(reply))
        self.answered.set()


def internal_errors(daemon: Daemon, stage: str) -> float:
    return daemon.metrics.registry.get_sample_value("edge_internal_errors_total", {"stage": stage}) or 0.0


def test_a_failed_outbox_read_answers_outbox_unavailable(tmp_path):
    asyncio.run(_a_failed_outbox_read_answers_outbox_unavailable(tmp_path))


async def _a_failed_outbox_read_answers_outbox_unavailable(tmp_path):
    daemon = Daemon(parse_config(MINIMAL))
    outbox = broken_outbox(tmp_path)
    sock = OneFrameSocket([msgpack.packb(header(recipe_id="R1")), RAW])
    intake = Intake(
        daemon.shared, sock, Turnaround(), lambda tool, frame_id: daemon.db(outbox.recorded_reply, tool, frame_id),
        daemon.inflight.add,
    )  # fmt: skip
    receiving = asyncio.create_task(intake.run())
    await asyncio.wait_for(sock.answered.wait(), 5)
    assert not receiving.done()  # the intake goes on to the next frame
    receiving.cancel()
    assert sock.replies == [
        {
            "frame_id": None,
            "status": "busy",
            "reason": "outbox_unavailable",
            "retry_after_ms": daemon.cfg.ingest.busy_retry_after_ms,
        }
    ]
    assert internal_errors(daemon, "outbox") == 1


def test_the_health_loop_survives_a_failing_outbox(tmp_path):
    asyncio.run(_the_health_loop_survives_a_failing_outbox(tmp_path))


async def _the_health_loop_survives_a_failing_outbox(tmp_path):
    daemon = Daemon(parse_config(MINIMAL))
    outbox = broken_outbox(tmp_path)
    publisher = Publisher(outbox, None, daemon.metrics, daemon.db, 8, 1.0)
    no_store = None  # the outbox's reads fail first: the calibration store is not reached
    housekeeping = Housekeeping(daemon.shared, outbox, no_store, publisher)  # type: ignore[arg-type]
    loop = asyncio.create_task(health_loop(0.01, Notifier(), daemon.health, [housekeeping.check_outbox]))
    for _ in range(500):
        await asyncio.sleep(0.01)
        if internal_errors(daemon, "outbox") >= 3:
            break
    assert not loop.done()  # before: the first failed read ended the loop for good
    loop.cancel()
    assert internal_errors(daemon, "outbox") >= 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_resource_is_closed_when_triton_is_not_ready_in_time(tmp_path):
    asyncio.run(_every_resource_is_closed_when_triton_is_not_ready_in_time(tmp_path))


async def _every_resource_is_closed_when_triton_is_not_ready_in_time(tmp_path):
    http_port = free_port()
    cfg = parse_config(
        {
            **MINIMAL,
            "mqtt": {"enabled": False},
            "triton": {"url": f"127.0.0.1:{free_port()}", "ready_timeout_s": 0.5},
            "http": {"host": "127.0.0.1", "port": http_port},
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "calibration": {"path": str(tmp_path / "calibration.sqlite")},
        }
    )
    daemon = Daemon(cfg)
    with pytest.raises(TritonUnavailable):
        await daemon.run(asyncio.Event())
    with pytest.raises(OSError):  # the HTTP server no longer listens
        socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
    with pytest.raises(OutboxError):
        daemon.outbox.backlog()
    with pytest.raises(StoreUnavailable):
        daemon.calibration.store.profiles()
    with pytest.raises(RuntimeError):  # the database thread was shut down
        await daemon.db(print)
    await daemon.triton.close()  # closing again is harmless


class CountingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.pets = 0

    def watchdog(self) -> None:
        self.pets += 1


def test_the_watchdog_is_not_petted_once_a_critical_task_died(tmp_path):
    asyncio.run(_the_watchdog_is_not_petted_once_a_critical_task_died(tmp_path))


async def _the_watchdog_is_not_petted_once_a_critical_task_died(tmp_path):
    daemon = Daemon(parse_config(MINIMAL))
    notifier = CountingNotifier()
    health = daemon.tasks.critical("health_loop", health_loop(0.01, notifier, daemon.health, []))
    crash = asyncio.Event()

    async def intake() -> None:
        await crash.wait()
        raise RuntimeError("a defect in the intake")

    daemon.tasks.critical("intake", intake())
    best_effort = daemon.tasks.spawn(asyncio.sleep(0))  # ends on its own: not a reason to stop
    await asyncio.sleep(0.1)
    assert notifier.pets > 0 and best_effort.done() and not daemon._stop.is_set()
    crash.set()
    await asyncio.sleep(0.05)
    pets = notifier.pets
    await asyncio.sleep(0.1)
    assert notifier.pets == pets  # systemd's watchdog now restarts the daemon if the stop does not end it
    assert daemon._stop.is_set() and daemon.health.stalled == ["intake"] and not daemon.health.alive
    assert not health.done()
    await daemon.tasks.stop()


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", TritonUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", TritonUnavailable),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'classifier' is not found", TritonUnavailable),
        ("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size", TritonUnavailable),
        # the wording says "unavailable", the code says the request itself was bad: not retried
        ("StatusCode.INVALID_ARGUMENT", "input 'IMAGE' unavailable in the expected shape", InferenceFailed),
        ("StatusCode.INTERNAL", "model not ready to run: backend error", InferenceFailed),
        (None, "could not serialise the request", InferenceFailed),
    ],
)
def test_triton_errors_are_classified_by_their_grpc_status_code(status, message, expected):
    error = classify(InferenceServerException(msg=message, status=status), "classifier")
    assert type(error) is expected and str(error).startswith("classifier: ")
