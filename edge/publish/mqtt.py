"""MQTT link (paho): the only module that imports paho. Status topic with last will, QoS 1
publishing with PUBACK notification, subscriptions for MES messages. Paho runs its own network
thread; every callback is handed to the asyncio loop.

With ``mqtt.tls`` the link speaks MQTT over TLS (1.2 or later), verifying the broker's chain and
host name, and optionally presents a client certificate. The TLS files are loaded when the link
is built, so a wrong file is a ``ConfigError`` naming its key at start-up, not a failure later
in paho's thread. Neither the password nor anything read from the key file is ever logged or
put into an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import ConfigError, EdgeError
from edge.mqtt_config import MqttConfig
from edge.ops.logs import RateLimited, get

log = get("edge.publish.mqtt")


def topic_matches(subscription: str, topic: str) -> bool:
    return paho.topic_matches_sub(subscription, topic)


def status_topic(prefix: str, station: str) -> str:
    return f"{prefix}/{station}/status"


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The client TLS context ``cfg`` asks for; ``ConfigError`` names the key of a file that will not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # chain and host name verified
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_insecure:
        context.check_hostname = False  # the chain is still verified: CERT_REQUIRED stays
    try:
        if cfg.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=os.fspath(cfg.ca_file))
    except OSError as err:  # ssl.SSLError included
        raise ConfigError(f"mqtt.ca_file: cannot load {cfg.ca_file}: {_why(err)}") from None
    if cfg.cert_file is not None and cfg.key_file is not None:
        _load_client_certificate(context, cfg)
    return context


def _load_client_certificate(context: ssl.SSLContext, cfg: MqttConfig) -> None:
    cert, key = cfg.cert_file, cfg.key_file
    assert cert is not None and key is not None  # the caller loads a client certificate only when both are set
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=os.fspath(cert))
    except OSError as err:
        raise ConfigError(f"mqtt.cert_file: {cert} holds no readable PEM certificate: {_why(err)}") from None
    try:
        pem = key.read_bytes()
    except OSError as err:
        raise ConfigError(f"mqtt.key_file: cannot read {key}: {_why(err)}") from None
    if b"PRIVATE KEY-----" not in pem:
        raise ConfigError(f"mqtt.key_file: {key} holds no PEM private key")
    encrypted = b"ENCRYPTED" in pem
    passphrase = cfg.key_password()

    def no_passphrase() -> str:
        raise ConfigError(f"mqtt.key_file: {key} is encrypted; set key_password_env or key_password_credential")

    try:
        context.load_cert_chain(
            os.fspath(cert), os.fspath(key), password=passphrase if passphrase is not None else no_passphrase
        )
    except OSError as err:
        if isinstance(err, ssl.SSLError) and err.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"mqtt.key_file: {key} is not the private key of mqtt.cert_file {cert}") from None
        if encrypted:
            raise ConfigError(f"mqtt.key_file: cannot decrypt {key} with the passphrase given") from None
        raise ConfigError(f"mqtt.key_file: cannot load {key} with {cert}: {_why(err)}") from None


def _why(err: OSError) -> str:
    """The reason of a file or TLS error, without anything read from the file."""
    if isinstance(err, ssl.SSLError):
        return err.reason or err.library or "TLS error"
    return err.strerror or type(err).__name__


def new_client(cfg: MqttConfig, client_id: str, persistent: bool = False) -> paho.Client:
    """A paho client with the config's credentials and TLS, not yet connected; ``persistent``: the broker
    keeps its session (subscriptions, queued QoS 1 messages) across disconnects."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password())
    if cfg.tls:
        client.tls_set_context(tls_context(cfg))
    return client


def publish_once(cfg: MqttConfig, client_id: str, topic: str, payload: str, timeout_s: float = 10.0) -> None:
    """Connect, publish one QoS 1 message, wait for the broker's PUBACK, disconnect.

    Raises ``EdgeError`` saying why when the broker cannot be reached, refuses the session, or does
    not acknowledge within ``timeout_s``.
    """
    with _session(cfg, client_id, timeout_s) as client:
        _publish(client, cfg, topic, payload, timeout_s)


def request(cfg: MqttConfig, client_id: str, topic: str, payload: str, reply_topic: str,
            accept: Callable[[bytes], bool], timeout_s: float) -> bytes:  # fmt: skip
    """Subscribe to ``reply_topic``, publish ``payload`` (QoS 1) and return the first reply ``accept`` takes;
    ``EdgeError`` when none comes within ``timeout_s`` (or the broker fails as for ``publish_once``)."""
    replies: list[bytes] = []
    answered, subscribed = threading.Event(), threading.Event()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        data = bytes(message.payload)
        if not answered.is_set() and accept(data):
            replies.append(data)
            answered.set()

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: Any, properties: Any) -> None:
        subscribed.set()

    with _session(cfg, client_id, timeout_s) as client:
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.subscribe(reply_topic, qos=1)
        if not subscribed.wait(timeout_s):
            raise EdgeError(f"the broker at {cfg.host}:{cfg.port} did not confirm the subscription to {reply_topic}")
        _publish(client, cfg, topic, payload, timeout_s)
        if not answered.wait(timeout_s):
            raise EdgeError(f"no answer on {reply_topic} within {timeout_s:g} s: is the daemon running?")
    return replies[0]


@contextlib.contextmanager
def _session(cfg: MqttConfig, client_id: str, timeout_s: float) -> Iterator[paho.Client]:
    """A connected client with its network loop running; disconnected on the way out."""
    client = new_client(cfg, client_id)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    where = f"{cfg.host}:{cfg.port}"
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(5, min(60, int(timeout_s))))
    except (OSError, ValueError) as err:  # refused, unreachable, TLS handshake (ssl.SSLError is an OSError)
        raise EdgeError(
            f"cannot reach the broker at {where}: {_why(err) if isinstance(err, OSError) else err}"
        ) from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise EdgeError(f"the broker at {where} did not answer within {timeout_s:g} s")
        if refused:
            raise EdgeError(f"the broker at {where} refused the session: {refused[0]}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def _publish(client: paho.Client, cfg: MqttConfig, topic: str, payload: str, timeout_s: float) -> None:
    where = f"{cfg.host}:{cfg.port}"
    info = client.publish(topic, payload, qos=1)
    try:
        info.wait_for_publish(timeout=timeout_s)
    except (RuntimeError, ValueError) as err:
        raise EdgeError(f"publishing to {where} failed: {err}") from None
    if not info.is_published():
        raise EdgeError(f"the broker at {where} did not acknowledge within {timeout_s:g} s")


class MqttLink:
    """``on_message(topic, payload)``, ``on_ack(mid)`` and ``on_state(connected)`` run on ``loop``.

    Messages published on a session that ends without their PUBACK are dropped when the next session
    starts: the caller republishes them (it heard ``on_state(False)`` in between).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        station: str,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[str, bytes], object],
        on_ack: Callable[[int], None],
        on_state: Callable[[bool], None],
        subscriptions: tuple[str, ...] = (),
    ) -> None:
        self._cfg = cfg
        self._loop = loop
        self._on_message = on_message
        self._on_ack = on_ack
        self._on_state = on_state
        self._subscriptions = subscriptions
        self.status_topic = status_topic(cfg.prefix, station)
        self.connected = False
        client = new_client(cfg, cfg.client_id or f"edge-{station}", persistent=cfg.persistent_session)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._connected
        client.on_connect_fail = self._connect_failed
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._message
        self._client = client
        self._failures = RateLimited(30.0)
        self._refused = False

    def start(self) -> None:
        self._client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        self._client.loop_start()

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Hand a message to paho; its mid, or None when not connected (the caller retries later)."""
        if not self.connected:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid if info.rc == paho.MQTT_ERR_SUCCESS else None

    def stop(self, timeout_s: float = 2.0) -> None:
        """Say ``offline`` on the status topic, then disconnect cleanly (no last will)."""
        if self.connected:
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                pass  # not connected any more: the broker's last will says offline instead
        self._client.disconnect()
        self._client.loop_stop()

    # paho thread -> event loop
    def _connected(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:  # refused: bad credentials, not authorised, ...; paho retries
            self._refused = True
            self._warn("mqtt_refused", reason=str(reason_code))
            return
        # What the last session left unacknowledged is resent by the publisher from the outbox, in order
        # and together with what the broker acknowledged just before it went away; paho must not resend it
        # ahead of them.
        client.drop_out_messages()
        client.publish(self.status_topic, "online", qos=1, retain=True)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self.connected = True
        self._loop.call_soon_threadsafe(self._on_state, True)

    def _connect_failed(self, client: paho.Client, userdata: Any) -> None:
        """No MQTT session: the broker cannot be reached, or the TLS handshake failed."""
        self._warn("mqtt_connect_failed")

    def _disconnected(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected, self.connected = self.connected, False
        refused, self._refused = self._refused, False
        if was_connected:
            self._loop.call_soon_threadsafe(self._on_state, False)
        elif not refused:  # never up, e.g. the broker ended the TLS session; a refusal was reported already
            self._warn("mqtt_connect_failed", reason=str(reason_code))

    def _warn(self, event: str, **fields: str) -> None:
        held = self._failures.allow(event)
        if held is not None:
            log.warning(
                event, host=self._cfg.host, port=self._cfg.port, tls=self._cfg.tls, similar_since_last=held, **fields
            )

    def _published(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        self._loop.call_soon_threadsafe(self._on_ack, mid)

    def _message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self._on_message, message.topic, bytes(message.payload))
