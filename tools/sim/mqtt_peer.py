"""A plain MQTT peer for the simulators, tests and the demo (publish, collect): paho lives here for tools."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Peer:
    """``tls``: connect over TLS with that context (``tools.station.certs.client_context`` makes one);
    ``username`` / ``password``: log in with them; ``clean_session=False``: a durable session (the
    broker queues QoS 1 messages for it while it is away)."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        subscribe: tuple[str, ...] = (),
        on_message: Callable[[str, bytes], None] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.RLock()  # a wait_for predicate may read json_messages()
        self._connected = threading.Event()
        self._subscribe = subscribe
        self._on_message = on_message
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.client.on_connect = self._connected_cb
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self.client.on_message = self._message_cb
        self.client.reconnect_delay_set(0.2, 2)
        if tls is not None:
            self.client.tls_set_context(tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def wait_connected(self, timeout_s: float = 10.0) -> Peer:
        if not self._connected.wait(timeout_s):
            raise TimeoutError("MQTT peer did not connect")
        return self

    def publish(self, topic: str, body: dict | str | bytes, qos: int = 1, retain: bool = False) -> None:
        payload = json.dumps(body) if isinstance(body, dict) else body
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)

    def json_messages(self, topic_prefix: str = "") -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p in self.messages if t.startswith(topic_prefix)]

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if predicate(self.messages):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _connected_cb(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:  # refused (bad credentials, not authorised): not connected
            return
        for topic in self._subscribe:
            client.subscribe(topic, qos=1)
        self._connected.set()

    def _message_cb(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))
        if self._on_message:
            self._on_message(message.topic, bytes(message.payload))
