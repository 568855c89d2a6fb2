"""The daemon's MQTT link over TLS against a real Mosquitto with certificates made per test:
client certificates and passwords are accepted only when right, secrets never reach a log, and
a TLS file that cannot be used stops the link being built, naming its key."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from edge.config import parse_config
from edge.errors import ConfigError, EdgeError
from edge.flow import EventRow, ResultRow
from edge.mqtt_config import MqttConfig
from edge.ops.metrics import Metrics
from edge.publish.mqtt import MqttLink, publish_once, tls_context
from edge.publish.outbox import Outbox
from edge.publish.publisher import Publisher
from tests.waiting import wait_until
from tools.sim.mqtt_peer import Peer
from tools.station.certs import Pki, client_context, issue, make_pki, openssl_binary
from tools.station.mosquitto import Mosquitto, TlsFiles, mosquitto_binary

pytestmark = pytest.mark.integration

MINIMAL = {"tools": [{"id": "AOI-01"}], "recipes": {"R1": {}}}
PASSWORD = "pw-7f3c9a-do-not-log"
WRONG_PASSWORD = "pw-wrong-51e0b2-do-not-log"
REFUSAL_WAIT_S = 2.5  # paho retries within 1 s; a refused link has had two tries by then


@pytest.fixture
def pki(tmp_path) -> Pki:
    if openssl_binary() is None:
        pytest.fail("openssl is not installed (Debian package openssl)", pytrace=False)
    return make_pki(tmp_path / "pki")


def _broker(workdir: Path, **options) -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: run `make deps` (Debian package mosquitto)", pytrace=False)
    broker = Mosquitto(workdir, **options).start()
    yield broker
    broker.stop()


@pytest.fixture
def cert_broker(pki, tmp_path) -> Iterator[Mosquitto]:
    """TLS listener that admits only clients with a certificate from ``pki.ca``."""
    yield from _broker(tmp_path / "cert-broker", tls=TlsFiles(pki.ca.cert, pki.server.cert, pki.server.key))


@pytest.fixture
def password_broker(pki, tmp_path) -> Iterator[Mosquitto]:
    """TLS listener without client certificates; users log in with passwords."""
    yield from _broker(
        tmp_path / "password-broker",
        tls=TlsFiles(pki.ca.cert, pki.server.cert, pki.server.key, require_certificate=False),
        users={"edge-st": PASSWORD, "mes": "mes-password"},
    )


class Station:
    """Outbox, MqttLink and Publisher wired as the daemon wires them."""

    def __init__(self, cfg: MqttConfig, outbox: Outbox) -> None:
        self.outbox = outbox
        self.connected = False
        loop = asyncio.get_running_loop()

        async def run_db(fn, *args):
            return fn(*args)

        def on_state(up: bool) -> None:
            self.connected = up
            self.publisher.wake()

        self.link = MqttLink(
            cfg, "ST", loop, lambda topic, payload: None, lambda mid: self.publisher.on_ack(mid), on_state
        )
        self.publisher = Publisher(outbox, self.link, Metrics(), run_db, cfg.max_inflight)
        self.task = asyncio.create_task(self.publisher.run())
        self.link.start()

    def close(self) -> None:
        self.task.cancel()
        self.link.stop()


def record_event(outbox: Outbox, event_id: str) -> None:
    outbox.record(
        [ResultRow("T1", f"f-{event_id}", "DEFECT", event_id, b"r")],
        [EventRow(event_id, "fab/edge/ST/events/T1", "DEFECT", json.dumps({"event_id": event_id}))],
    )


def link_config(port: int, **tls) -> MqttConfig:
    return parse_config(
        {
            **MINIMAL,
            "mqtt": {
                "port": port,
                "client_id": "edge-tls-test",
                "tls": True,
                **{k: str(v) if isinstance(v, Path) else v for k, v in tls.items()},
            },
        }
    ).mqtt


async def stays_disconnected(cfg: MqttConfig) -> tuple[bool, list[dict]]:
    """Run a link for a while; whether it never came up, and what it logged meanwhile."""
    states: list[bool] = []
    with structlog.testing.capture_logs() as logs:
        link = MqttLink(cfg, "ST", asyncio.get_running_loop(), lambda t, p: None, lambda mid: None, states.append)
        link.start()
        await asyncio.sleep(REFUSAL_WAIT_S)
        never_up = not link.connected and True not in states
        link.stop()
    return never_up, logs


def assert_admits_a_trusted_client(pki: Pki, broker: Mosquitto) -> None:
    """The broker is up and takes a client with the right certificate: a refusal was the certificate's doing."""
    Peer("127.0.0.1", broker.port, "control", tls=client_context(pki.ca.cert, pki.client)).wait_connected(5).close()


def test_link_publishes_over_tls_with_a_client_certificate(pki, cert_broker, tmp_path):
    mes_pair = issue(pki.ca, tmp_path / "pki", "mes")

    async def scenario():
        mes = Peer(
            "127.0.0.1", cert_broker.port, "mes", ("fab/edge/ST/#",), tls=client_context(pki.ca.cert, mes_pair)
        ).wait_connected()
        cfg = link_config(cert_broker.port, ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
        station = Station(cfg, Outbox(tmp_path / "o.sqlite"))
        assert await wait_until(lambda: station.connected, 10)
        record_event(station.outbox, "e-tls-1")
        station.publisher.wake()
        assert await wait_until(
            lambda: [m.get("event_id") for m in mes.json_messages("fab/edge/ST/events")] == ["e-tls-1"], 10
        )
        assert await wait_until(lambda: station.outbox.backlog() == 0, 10)  # marked on PUBACK
        assert ("fab/edge/ST/status", b"online") in mes.messages
        station.close()
        mes.close()

    asyncio.run(scenario())
    assert "edge-ST" in cert_broker.log_path.read_text()  # the broker saw the certificate's identity


@pytest.mark.parametrize("who", ["no certificate", "certificate from an untrusted authority"])
def test_a_client_without_a_trusted_certificate_is_refused(pki, cert_broker, who):
    files = {} if who == "no certificate" else {"cert_file": pki.rogue_client.cert, "key_file": pki.rogue_client.key}
    never_up, logs = asyncio.run(stays_disconnected(link_config(cert_broker.port, ca_file=pki.ca.cert, **files)))
    assert never_up
    assert any(e["event"] == "mqtt_connect_failed" for e in logs), logs
    assert_admits_a_trusted_client(pki, cert_broker)


def test_the_link_refuses_a_broker_signed_by_an_authority_it_does_not_trust(pki, cert_broker):
    cfg = link_config(cert_broker.port, ca_file=pki.rogue_ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
    never_up, logs = asyncio.run(stays_disconnected(cfg))
    assert never_up
    assert any(e["event"] == "mqtt_connect_failed" for e in logs), logs
    assert_admits_a_trusted_client(pki, cert_broker)


def test_an_encrypted_client_key_is_unlocked_with_the_passphrase_from_the_environment(
    pki, cert_broker, tmp_path, monkeypatch
):
    pair = issue(pki.ca, tmp_path / "pki", "edge-locked", passphrase="key-phrase-do-not-log")
    monkeypatch.setenv("EDGE_TEST_KEY_PASSPHRASE", "key-phrase-do-not-log")
    cfg = link_config(
        cert_broker.port,
        ca_file=pki.ca.cert,
        cert_file=pki.client.cert,
        key_file=pair.key,
        key_password_env="EDGE_TEST_KEY_PASSPHRASE",
    )
    with pytest.raises(ConfigError, match="not the private key"):  # the key of another certificate
        tls_context(cfg)
    cfg = cfg.model_copy(update={"cert_file": pair.cert})

    async def scenario() -> bool:
        states: list[bool] = []
        link = MqttLink(cfg, "ST", asyncio.get_running_loop(), lambda t, p: None, lambda mid: None, states.append)
        link.start()
        up = await wait_until(lambda: link.connected, 10)
        link.stop()
        return up

    assert asyncio.run(scenario())
    monkeypatch.setenv("EDGE_TEST_KEY_PASSPHRASE", "not-the-phrase")
    with pytest.raises(ConfigError, match=r"mqtt\.key_file: cannot decrypt") as refused:
        tls_context(cfg)
    assert "not-the-phrase" not in str(refused.value)
    monkeypatch.delenv("EDGE_TEST_KEY_PASSPHRASE")
    with pytest.raises(ConfigError, match=r"mqtt\.key_file: .* is encrypted; set key_password_env"):
        tls_context(cfg)


def test_password_over_tls_from_the_environment_and_never_logged(pki, password_broker, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("EDGE_TEST_MQTT_PASSWORD", PASSWORD)
    cfg = link_config(
        password_broker.port, ca_file=pki.ca.cert, username="edge-st", password_env="EDGE_TEST_MQTT_PASSWORD"
    )

    async def scenario() -> tuple[list[dict], list[dict]]:
        mes = Peer(
            "127.0.0.1",
            password_broker.port,
            "mes",
            ("fab/edge/ST/#",),
            tls=client_context(pki.ca.cert),
            username="mes",
            password="mes-password",
        ).wait_connected()
        with structlog.testing.capture_logs() as good_logs:
            station = Station(cfg, Outbox(tmp_path / "o.sqlite"))
            assert await wait_until(lambda: station.connected, 10)
            record_event(station.outbox, "e-pw-1")
            station.publisher.wake()
            assert await wait_until(lambda: len(mes.json_messages("fab/edge/ST/events")) == 1, 10)
            station.close()
        mes.close()
        monkeypatch.setenv("EDGE_TEST_MQTT_PASSWORD", WRONG_PASSWORD)
        never_up, bad_logs = await stays_disconnected(cfg)
        assert never_up, "a wrong password was accepted"
        return good_logs, bad_logs

    good_logs, bad_logs = asyncio.run(scenario())
    assert any(e["event"] == "mqtt_refused" for e in bad_logs), bad_logs  # the refusal is reported...
    logged = [repr(good_logs), repr(bad_logs), caplog.text, password_broker.log_path.read_text()]
    for secret in (PASSWORD, WRONG_PASSWORD):  # ...without the password, right or wrong
        assert not any(secret in text for text in logged)
        assert secret not in repr(cfg) and secret not in str(cfg)
        assert secret not in repr(parse_config({**MINIMAL, "mqtt": cfg.model_dump(mode="json")}))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ca_file": "server.key"}, r"mqtt\.ca_file: cannot load"),
        ({"cert_file": "ca.key", "key_file": "edge-ST.key"}, r"mqtt\.cert_file: .* holds no readable PEM certificate"),
        ({"cert_file": "edge-ST.crt", "key_file": "edge-ST.crt"}, r"mqtt\.key_file: .* holds no PEM private key"),
        ({"cert_file": "edge-ST.crt", "key_file": "broker.key"}, r"mqtt\.key_file: .* is not the private key"),
    ],
)
def test_a_tls_file_that_cannot_be_used_stops_the_link_being_built(pki, files, message):
    names = {
        "server.key": pki.server.key,
        "ca.key": pki.ca.key,
        "edge-ST.key": pki.client.key,
        "edge-ST.crt": pki.client.cert,
        "broker.key": pki.server.key,
    }
    cfg = link_config(1883, **{"ca_file": pki.ca.cert, **{key: names[name] for key, name in files.items()}})

    async def build() -> None:
        MqttLink(cfg, "ST", asyncio.get_running_loop(), lambda t, p: None, lambda mid: None, lambda up: None)

    with pytest.raises(ConfigError, match=message) as refused:
        asyncio.run(build())
    assert "PRIVATE KEY" not in str(refused.value) and "BEGIN" not in str(refused.value)


def test_tls_insecure_skips_only_the_host_name_check(pki):
    strict = tls_context(link_config(1883, ca_file=pki.ca.cert))
    relaxed = tls_context(link_config(1883, ca_file=pki.ca.cert, tls_insecure=True))
    assert strict.check_hostname and strict.verify_mode == relaxed.verify_mode
    assert not relaxed.check_hostname
    assert relaxed.verify_mode.name == "CERT_REQUIRED"


def test_a_one_shot_publish_logs_in_over_tls_and_a_refusal_says_why_without_the_password(
    pki, password_broker, monkeypatch
):
    cfg = link_config(
        password_broker.port, ca_file=pki.ca.cert, username="edge-st", password_env="EDGE_TEST_MQTT_PASSWORD"
    )
    mes = Peer(
        "127.0.0.1",
        password_broker.port,
        "mes",
        ("fab/edge/ST/#",),
        tls=client_context(pki.ca.cert),
        username="mes",
        password="mes-password",
    ).wait_connected()
    monkeypatch.setenv("EDGE_TEST_MQTT_PASSWORD", PASSWORD)
    publish_once(cfg, "engineer-cli", "fab/edge/ST/rebaseline", '{"tool_id":"AOI-01"}', timeout_s=5)
    assert mes.wait_for(lambda messages: len(messages) == 1, 10)
    mes.close()
    monkeypatch.setenv("EDGE_TEST_MQTT_PASSWORD", WRONG_PASSWORD)
    with pytest.raises(EdgeError, match="refused the session") as refused:
        publish_once(cfg, "engineer-cli", "fab/edge/ST/rebaseline", "{}", timeout_s=5)
    assert PASSWORD not in str(refused.value) and WRONG_PASSWORD not in str(refused.value)
