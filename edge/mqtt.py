"""MQTT link (paho): the only module that imports paho. Status topic with last will, QoS 1
publishing with PUBACK notification, subscriptions for MES messages. Paho runs its own network
thread; every callback is handed to the asyncio loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig


def topic_matches(subscription: str, topic: str) -> bool:
    return paho.topic_matches_sub(subscription, topic)


def status_topic(prefix: str, station: str) -> str:
    return f"{prefix}/{station}/status"


class MqttLink:
    """``on_message(topic, payload)``, ``on_ack(mid)`` and ``on_state(connected)`` run on ``loop``."""

    def __init__(
        self,
        cfg: MqttConfig,
        station: str,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[str, bytes], None],
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
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"edge-{station}",
                             clean_session=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password())
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._message
        self._client = client

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
    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self.connected = True
        self._loop.call_soon_threadsafe(self._on_state, True)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        self._loop.call_soon_threadsafe(self._on_state, False)

    def _published(self, client, userdata, mid, reason_code, properties) -> None:
        self._loop.call_soon_threadsafe(self._on_ack, mid)

    def _message(self, client, userdata, message) -> None:
        self._loop.call_soon_threadsafe(self._on_message, message.topic, bytes(message.payload))
