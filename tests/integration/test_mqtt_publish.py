"""The daemon's MQTT side against a real Mosquitto: status (its last will when the daemon is killed), QoS 1
drain of the outbox marked on PUBACK, and nothing lost across a broker outage."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.flow import EventRow, ResultRow
from edge.mqtt_config import MqttConfig
from edge.ops.metrics import Metrics
from edge.publish.mqtt import MqttLink
from edge.publish.outbox import Outbox
from edge.publish.publisher import Publisher
from tests.waiting import wait_until
from tools.sim.mqtt_peer import Peer
from tools.station.mosquitto import Mosquitto, mosquitto_binary

pytestmark = pytest.mark.integration

EVENTS = "fab/edge/ST/events/#"
REPO = Path(__file__).resolve().parents[2]


def events(start: int, n: int) -> tuple[list[ResultRow], list[EventRow]]:
    ids = [f"e{i:05d}" for i in range(start, start + n)]
    return (
        [ResultRow("T1", f"f{i}", "DEFECT", e, b"r") for i, e in zip(range(start, start + n), ids, strict=True)],
        [EventRow(e, "fab/edge/ST/events/T1", "DEFECT", json.dumps({"event_id": e})) for e in ids],
    )


class Harness:
    """Outbox + MqttLink + Publisher wired as the daemon wires them."""

    def __init__(self, outbox: Outbox, port: int, client_id: str = "edge-test", replay_acked_s: float = 5.0) -> None:
        self.outbox = outbox
        self.db = ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()
        self.connected = False
        cfg = MqttConfig(port=port, client_id=client_id, max_inflight=20, replay_acked_s=replay_acked_s)

        def on_state(up: bool) -> None:
            self.connected = up
            self.publisher.on_link(up)

        self.metrics = Metrics()
        self.link = MqttLink(cfg, "ST", loop, lambda t, p: None, lambda mid: self.publisher.on_ack(mid), on_state)
        self.publisher = Publisher(outbox, self.link, self.metrics, self._run_db, cfg.max_inflight, cfg.replay_acked_s)
        self.task = asyncio.create_task(self.publisher.run())
        self.link.start()

    async def _run_db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def close(self) -> None:
        self.task.cancel()
        self.link.stop()
        self.db.shutdown()


def test_status_is_retained_online_and_a_clean_stop_says_offline(mosquitto, tmp_path):
    async def scenario():
        watcher = Peer("127.0.0.1", mosquitto.port, "watcher", ("fab/edge/ST/status",)).wait_connected()
        h = Harness(Outbox(tmp_path / "o.sqlite"), mosquitto.port)
        assert await wait_until(lambda: h.connected, 10)
        assert await wait_until(lambda: b"online" in [p for _, p in watcher.messages], 10)
        await h.close()  # a clean stop says offline itself
        assert await wait_until(lambda: watcher.messages and watcher.messages[-1][1] == b"offline", 10)
        late = Peer("127.0.0.1", mosquitto.port, "late", ("fab/edge/ST/status",)).wait_connected()
        assert await wait_until(lambda: late.messages == [("fab/edge/ST/status", b"offline")], 10)  # retained
        watcher.close()
        late.close()

    asyncio.run(scenario())


# The daemon's MQTT link alone, in a process of its own: killed, it says nothing; the broker's last will speaks.
LINK_PROCESS = """
import asyncio, sys
from edge.mqtt_config import MqttConfig
from edge.publish.mqtt import MqttLink

async def main():
    link = MqttLink(MqttConfig(port=int(sys.argv[1]), client_id="edge-killed"), "ST", asyncio.get_running_loop(),
                    lambda topic, payload: None, lambda mid: None, lambda up: print("up" if up else "down", flush=True))
    link.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_killed_daemon_is_reported_offline_by_its_last_will(mosquitto):
    watcher = Peer("127.0.0.1", mosquitto.port, "watcher", ("fab/edge/ST/status",)).wait_connected()
    link = subprocess.Popen(
        [sys.executable, "-c", LINK_PROCESS, str(mosquitto.port)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )

    async def scenario():
        assert link.stdout is not None and link.stdout.readline().strip() == "up"
        assert await wait_until(lambda: [p for _, p in watcher.messages] == [b"online"], 10)
        link.send_signal(signal.SIGKILL)  # no clean disconnect, no "offline" from the daemon itself
        assert await wait_until(lambda: link.poll() is not None, 10)
        assert await wait_until(lambda: [p for _, p in watcher.messages] == [b"online", b"offline"], 10)
        late = Peer("127.0.0.1", mosquitto.port, "late", ("fab/edge/ST/status",)).wait_connected()
        assert await wait_until(lambda: late.messages == [("fab/edge/ST/status", b"offline")], 10)  # retained
        late.close()

    try:
        asyncio.run(scenario())
    finally:
        link.kill()
        watcher.close()


@pytest.fixture
def durable_broker(tmp_path) -> Iterator[Mosquitto]:
    """A broker that keeps sessions on disk but saves them only when it exits cleanly: killed, it loses
    whatever it accepted since, as a station's broker loses what came after its last autosave."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: run `make deps` (Debian package mosquitto)", pytrace=False)
    broker = Mosquitto(tmp_path / "broker", persistent=True, autosave_s=0).start()
    yield broker
    broker.stop()


def durable_subscriber(broker: Mosquitto, client_id: str = "mes") -> Peer:
    """A subscriber to the events with a persistent session the broker has saved."""
    Peer("127.0.0.1", broker.port, client_id, (EVENTS,), clean_session=False).wait_connected().close()
    broker.stop()  # a clean stop saves the session
    broker.start()
    return Peer("127.0.0.1", broker.port, client_id, (EVENTS,), clean_session=False).wait_connected()


def test_every_event_reaches_a_durable_subscriber_across_a_broker_crash_and_is_marked_on_puback(
    durable_broker, tmp_path
):
    async def scenario():
        outbox = Outbox(tmp_path / "o.sqlite")
        mes = durable_subscriber(durable_broker)
        h = Harness(outbox, durable_broker.port)
        assert await wait_until(lambda: h.connected, 10)
        outbox.record(*events(0, 300))
        h.publisher.wake()
        await asyncio.sleep(0.05)
        durable_broker.kill()  # abrupt outage mid-stream: what it had not handed on is gone with it
        assert await wait_until(lambda: not h.connected, 10)
        outbox.record(*events(300, 300))  # results keep arriving while the broker is away
        h.publisher.wake()
        await asyncio.sleep(0.5)
        durable_broker.start()
        assert await wait_until(lambda: h.connected, 15)
        assert await wait_until(lambda: outbox.backlog() == 0, 20), f"backlog {outbox.backlog()}"
        assert outbox.pending(0, 10) == []  # every event acknowledged by the broker
        wanted = {f"e{i:05d}" for i in range(600)}
        await wait_until(lambda: wanted <= {m["event_id"] for m in mes.json_messages()}, 10)
        received = [m["event_id"] for m in mes.json_messages()]
        assert wanted == set(received)
        first = list(dict.fromkeys(received))
        assert first == sorted(first)  # first arrivals in the order recorded
        await h.close()
        mes.close()

    asyncio.run(scenario())


async def crash_after_acknowledgements(
    broker: Mosquitto, outbox_path: Path, batches: list[range], replay_acked_s: float, pause_s: float = 0.0
) -> tuple[float, list[str]]:
    """A durable subscriber that is away; each batch of events acknowledged by the broker (``pause_s`` after
    each); the broker killed before it saves them and started again; the daemon's link back. The events
    republished, and what the subscriber then receives."""
    durable_subscriber(broker).close()
    outbox = Outbox(outbox_path)
    h = Harness(outbox, broker.port, replay_acked_s=replay_acked_s)
    assert await wait_until(lambda: h.connected, 10)
    for batch in batches:
        outbox.record(*events(batch.start, len(batch)))
        h.publisher.wake()
        assert await wait_until(lambda: outbox.backlog() == 0, 10)  # every one acknowledged by the broker
        await asyncio.sleep(pause_s)
    broker.kill()  # held in memory for the subscriber, never saved
    assert await wait_until(lambda: not h.connected, 10)
    broker.start()
    assert await wait_until(lambda: h.connected, 15)
    await asyncio.sleep(0.5)
    assert await wait_until(lambda: outbox.backlog() == 0, 10)
    republished = h.metrics.events_republished._value.get()
    await h.close()
    mes = Peer("127.0.0.1", broker.port, "mes", (EVENTS,), clean_session=False).wait_connected()
    await wait_until(lambda: len(mes.json_messages()) >= len(batches[-1]), 5)
    mes.close()
    return republished, [m["event_id"] for m in mes.json_messages()]


@pytest.mark.parametrize("replay_acked_s", [30.0, 0.0])
def test_what_a_dying_broker_acknowledged_but_lost_is_published_again(durable_broker, tmp_path, replay_acked_s):
    """The broker PUBACKs 40 events and queues them for a durable subscriber that is away, then dies before
    saving them. With a replay window the daemon publishes them again after the restart and the subscriber
    gets every one, in order; without one they are gone."""
    republished, received = asyncio.run(
        crash_after_acknowledgements(durable_broker, tmp_path / "o.sqlite", [range(40)], replay_acked_s)
    )
    assert republished == (40 if replay_acked_s else 0)
    assert received == ([f"e{i:05d}" for i in range(40)] if replay_acked_s else [])


def test_the_replay_window_counts_back_from_the_last_acknowledgement(durable_broker, tmp_path):
    """Window 1 s: 20 events acknowledged 1.5 s before the last 20 are not published again after the crash;
    the last 20 are."""
    republished, received = asyncio.run(
        crash_after_acknowledgements(
            durable_broker, tmp_path / "o.sqlite", [range(20), range(20, 40)], replay_acked_s=1.0, pause_s=1.5
        )
    )
    assert republished == 20
    assert received == [f"e{i:05d}" for i in range(20, 40)]


def test_undelivered_events_are_replayed_by_the_next_run(mosquitto, tmp_path):
    async def scenario():
        path = tmp_path / "o.sqlite"
        first = Outbox(path)
        first.record(*events(0, 50))  # recorded, never published: the daemon died here
        first.close()
        mes = Peer("127.0.0.1", mosquitto.port, "mes", (EVENTS,)).wait_connected()
        h = Harness(Outbox(path), mosquitto.port)
        h.publisher.wake()
        assert await wait_until(lambda: len(mes.json_messages()) >= 50, 15)
        assert [m["event_id"] for m in mes.json_messages()][:50] == [f"e{i:05d}" for i in range(50)]  # in order
        assert await wait_until(lambda: h.outbox.backlog() == 0, 10)
        await h.close()
        mes.close()

    asyncio.run(scenario())


def test_what_arrives_while_the_daemon_is_away_is_handed_over_when_it_connects_again(mosquitto):
    """With a persistent session the broker queues the MES and engineering messages of a stopped daemon;
    with a clean one they are gone."""
    topic = "fab/mes/process/AOI-01"

    async def away_then_back(client_id: str, persistent: bool) -> list[bytes]:
        loop = asyncio.get_running_loop()
        cfg = MqttConfig(port=mosquitto.port, client_id=client_id, persistent_session=persistent)
        received: list[bytes] = []
        up: list[bool] = []

        def link() -> MqttLink:
            return MqttLink(
                cfg, "ST", loop, lambda t, p: received.append(p), lambda mid: None, up.append, ("fab/mes/process/#",)
            )

        first = link()
        first.start()
        assert await wait_until(lambda: up.count(True) == 1, 10)
        first.stop()
        mes = Peer("127.0.0.1", mosquitto.port, f"mes-{client_id}").wait_connected()
        for n in range(3):
            mes.publish(topic, json.dumps({"n": n}))  # PUBACKed by the broker while the daemon is away
        mes.close()
        again = link()
        again.start()
        assert await wait_until(lambda: up.count(True) == 2, 10)
        await wait_until(lambda: len(received) >= 3, 2)
        again.stop()
        return received

    async def scenario():
        assert await away_then_back("edge-durable", True) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
        assert await away_then_back("edge-clean", False) == []

    asyncio.run(scenario())
