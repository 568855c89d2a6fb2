"""One entry for every message the daemon hears, over MQTT or from a ZeroMQ MES gateway: a table of topic
filters (MQTT wildcards allowed) and their handlers, the first filter that matches wins."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge.publish.mqtt import topic_matches

Handler = Callable[[bytes], None]


class MessageRouter:
    def __init__(self, routes: Sequence[tuple[str, Handler]]) -> None:
        self._routes = list(routes)

    def add(self, pattern: str, handler: Handler) -> None:
        """One more route, after those already there (before the link subscribes)."""
        self._routes.append((pattern, handler))

    @property
    def filters(self) -> tuple[str, ...]:
        """The topic filters, in order: what to subscribe to."""
        return tuple(name for name, _ in self._routes)

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Hand ``payload`` to the handler of the first filter ``topic`` matches; False when none does."""
        for pattern, handler in self._routes:
            if topic_matches(pattern, topic):
                handler(payload)
                return True
        return False
