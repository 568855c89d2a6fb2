"""ZeroMQ sockets of the daemon: the frame intake (ROUTER) and the local event feed (PUB).
The only daemon module that imports zmq."""

from __future__ import annotations

import zmq
import zmq.asyncio


class FrameSocket:
    """ROUTER bound for AOI tools' DEALER sockets: one multipart ``[header, payload]`` per frame."""

    def __init__(self, ctx: zmq.asyncio.Context, bind: str, max_message_bytes: int, hwm: int) -> None:
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        # Transport-level cap: far over the payload limit a peer is cut off without reading it all.
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._sock.bind(bind)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    async def recv(self) -> tuple[bytes, list[bytes]]:
        identity, *parts = await self._sock.recv_multipart(copy=True)
        return identity, parts

    async def send(self, identity: bytes, reply: bytes) -> None:
        await self._sock.send_multipart([identity, reply])

    def close(self) -> None:
        self._sock.close()


class EventFeed:
    """PUB socket for local consumers: ``[topic, json]`` per event, best effort (no replay)."""

    def __init__(self, bind: str) -> None:
        self._sock = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        self._sock.bind(bind)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, topic: str, payload: str) -> None:
        try:
            self._sock.send_multipart([topic.encode(), payload.encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow local subscriber loses messages; the MQTT path is the durable one

    def close(self) -> None:
        self._sock.close()


def context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context.instance()
