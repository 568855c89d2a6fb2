"""ZeroMQ sockets of the daemon: the frame intake (ROUTER) and the local event feed (PUB).
The only daemon module that imports zmq.

The intake can require ZeroMQ CURVE: frames travel encrypted, and only tools whose public
certificate lies in the authorized-keys directory complete the handshake. A certificate's file name
says which tool it speaks for (``AOI-01.key``: frames of tool AOI-01; a controller serving several
tools has a copy of its certificate under each tool's name), and the intake hands that set on with
every frame, so a key cannot send frames as another tool. The directory is re-read when its
``*.key`` files change, so adding or withdrawing a tool key needs no restart; a withdrawn key keeps
a connection it already made until that tool reconnects or the daemon restarts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from edge.errors import ConfigError
from edge.ops.logs import get
from edge.ops.stage_cpu import StageCpu, clock

log = get("edge.zmq")


def load_server_keys(path: Path) -> tuple[bytes, bytes]:
    """The (public, secret) CURVE pair of a secret certificate file.

    ``ConfigError`` names the file and what is wrong with it, never its content."""
    what = f"curve_secret_key_file {path}"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as err:
        raise ConfigError(f"{what}: cannot read it ({err.strerror or 'no such file'})") from None
    except (ValueError, IndexError):  # pyzmq's reader: no public-key line, or a key line without "="
        raise ConfigError(f"{what}: not a ZeroMQ certificate") from None
    if secret is None:
        raise ConfigError(f"{what}: holds no secret key (the public certificate was given?)")
    try:
        matches = zmq.curve_public(secret) == public
    except (zmq.ZMQError, ValueError):
        matches = False
    if not matches:
        raise ConfigError(f"{what}: the secret key is malformed or does not belong to its public key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("curve_secret_key_file_exposed", file=str(path), mode=oct(mode), advice="chmod 600")
    return public, secret


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Create ``name.key`` (public certificate, to hand out) and ``name.key_secret`` (mode 0600) in
    ``directory``. Refuses to overwrite either: a replaced station key locks out every tool that trusts it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it first to replace the key pair")
    # Created empty, exclusively and owner-only, before anything is written: the secret is never
    # readable by others, not even between writing it and a chmod.
    for path in (public, secret):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    zmq.auth.create_certificates(directory, name)
    public.chmod(0o644)
    secret.chmod(0o600)
    return public, secret


class ToolKeys(AsyncioAuthenticator):
    """ZAP handler on the daemon's event loop: admits CURVE clients whose public key has a certificate
    in ``directory`` (NULL clients on other sockets of the context pass, as without a handler).

    Before each handshake it compares the directory's listing (name, size, mtime of each ``*.key``)
    with the one last loaded - a single scandir, and handshakes are rare - and reloads on a change.
    A directory that becomes unreadable, or a bad certificate in it, keeps the last good set."""

    def __init__(self, ctx: zmq.asyncio.Context, directory: Path) -> None:
        super().__init__(ctx)
        self.directory = directory
        try:
            self._stamp: tuple[tuple[str, int, int], ...] | None = self._listing()
            self.count = self._load()
        except (OSError, ValueError, IndexError) as err:
            raise ConfigError(f"curve_authorized_keys {directory}: {err}") from None

    def _listing(self) -> tuple[tuple[str, int, int], ...]:
        with os.scandir(self.directory) as entries:
            return tuple(
                sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.name.endswith(".key"))
            )

    def _load(self) -> int:
        """Read every ``*.key`` certificate; raises (keeping the last good set) on one that will not load."""
        tools: dict[bytes, set[str]] = {}
        for path in sorted(self.directory.glob("*.key")):
            public, _ = zmq.auth.load_certificate(path)
            tools.setdefault(public, set()).add(path.name[: -len(".key")])
        self._tools = {public: ",".join(sorted(names)) for public, names in tools.items()}
        self.certs = {"*": dict.fromkeys(self._tools, True)}  # what pyzmq's CURVE check looks up
        return len(self._tools)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The ZAP User-Id of an admitted key: the tools it speaks for, comma-separated."""
        return self._tools.get(z85.encode(client_public_key), "")

    def refresh(self) -> None:
        """Reload the keys if the directory changed since the last look; logs once per change."""
        try:
            stamp = self._listing()
        except OSError as err:
            if self._stamp is not None:
                log.warning("curve_keys_unreadable", directory=str(self.directory), error=err.strerror, kept=self.count)
            self._stamp = None
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.count = self._load()
        except (OSError, ValueError, IndexError) as err:
            log.warning("curve_keys_invalid", directory=str(self.directory), error=str(err), kept=self.count)
            return
        log.info("curve_keys_reloaded", directory=str(self.directory), authorized=self.count)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.refresh()
        await super().handle_zap_message(msg)


class FrameSocket:
    """ROUTER bound for AOI tools' DEALER sockets: one multipart ``[header, payload]`` per frame.

    With ``curve_secret_key_file`` and ``curve_authorized_keys`` (both or neither) the socket is a
    CURVE server and only the authorized tools get through; create it on the running event loop
    then, which serves the handshakes. One CURVE intake per context (ZAP has one address)."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        bind: str,
        max_message_bytes: int,
        hwm: int,
        *,
        also_bind: Sequence[str] = (),
        curve_secret_key_file: Path | None = None,
        curve_authorized_keys: Path | None = None,
        cpu: StageCpu | None = None,
    ) -> None:
        self._cpu = cpu  # counts a message taken at once to the "receive" stage
        if (curve_secret_key_file is None) != (curve_authorized_keys is None):
            raise ConfigError("curve_secret_key_file and curve_authorized_keys go together: set both or neither")
        keys = load_server_keys(curve_secret_key_file) if curve_secret_key_file else None
        self._auth = ToolKeys(ctx, curve_authorized_keys) if curve_authorized_keys else None
        self._sock = ctx.socket(zmq.ROUTER)
        try:
            self._sock.setsockopt(zmq.LINGER, 1000)
            self._sock.setsockopt(zmq.RCVHWM, hwm)
            self._sock.setsockopt(zmq.SNDHWM, hwm)
            # Transport-level cap: far over the payload limit a peer is cut off without reading it all.
            self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if keys and self._auth:
                self._auth.start()  # before bind: no handshake may happen without the handler
                self._sock.curve_server = True
                self._sock.curve_publickey, self._sock.curve_secretkey = keys
            self._sock.bind(bind)
            self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            for address in also_bind:
                self._sock.bind(address)
                if address.startswith("ipc://"):  # tools of the daemon's group may connect (the unit's umask is 077)
                    os.chmod(address.removeprefix("ipc://"), 0o660)
        except BaseException:
            self.close()
            raise
        self.endpoints = (self.endpoint, *also_bind)
        # The same socket without asyncio's futures, for a message already there. Only the event loop's thread uses
        # either, and only while no receive of the asyncio socket is waiting: pyzmq's wait checks the socket's events
        # before it waits on its descriptor, so a message taken here never leaves that wait unwoken. (Sends stay on
        # the asyncio socket: one made here would take the descriptor's signal from a receive waiting there.)
        self._now: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)
        if keys and self._auth:
            log.info(
                "frame_intake_curve",
                server_public_key=keys[0].decode(),
                authorized=self._auth.count,
                directory=str(self._auth.directory),
            )

    async def recv(self) -> tuple[bytes, list[bytes], frozenset[str] | None]:
        """``(identity, parts, tools)``: ``tools`` are those the sender's CURVE key speaks for, None without CURVE.
        A message already waiting is taken at once, and its CPU counted to the "receive" stage; one waited for is
        taken by pyzmq's callback on the event loop, whose CPU no stage can tell from the loop's own."""
        since: int | None = clock()
        copy = self._auth is None  # bytes copied out; with CURVE, zero-copy Frames: they carry the ZAP metadata
        try:
            message = self._now.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            message, since = await self._sock.recv_multipart(copy=copy), None
        received = self._message(message, copied=copy)
        if since is not None and self._cpu is not None:
            self._cpu.add("receive", since)
        return received

    @staticmethod
    def _message(message: list[Any], copied: bool) -> tuple[bytes, list[bytes], frozenset[str] | None]:
        if copied:
            identity, *parts = message
            return identity, parts, None
        identity, *frames = message
        try:
            # a ZAP metadata property: pyzmq types Frame.get(str) as int | str, a named property is a str
            user = cast(str, frames[0].get("User-Id")) if frames else ""
        except zmq.ZMQError:  # no ZAP identity on the message: it speaks for no tool
            user = ""
        return identity.bytes, [f.bytes for f in frames], frozenset(filter(None, user.split(",")))

    async def send(self, identity: bytes, reply: bytes) -> None:
        await self._sock.send_multipart([identity, reply])

    def close(self) -> None:
        """Idempotent: the drain closes the socket early, the daemon's exit closes it again."""
        self._sock.close()
        if self._auth:
            self._auth.stop()
            self._auth = None


class MesFeed:
    """SUB socket connected to MES gateways' PUB endpoints: ``[topic, json]`` per message, the topics
    named as on MQTT. Subscribes to each MQTT filter's literal part (up to its first wildcard); the
    daemon matches the full filter."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: list[str], filters: tuple[str, ...]) -> None:
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 10_000)
        self._sock.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
        for literal in {f.split("#")[0].split("+")[0] for f in filters}:
            self._sock.setsockopt(zmq.SUBSCRIBE, literal.encode())
        for endpoint in endpoints:
            self._sock.connect(endpoint)

    async def recv(self) -> tuple[str, bytes] | None:
        """The next message, or None for one that is not ``[utf-8 topic, payload]``."""
        parts = await self._sock.recv_multipart(copy=True)
        if len(parts) != 2:
            return None
        try:
            return parts[0].decode(), parts[1]
        except UnicodeDecodeError:
            return None

    def close(self) -> None:
        self._sock.close()


class EventFeed:
    """PUB socket for local consumers: ``[topic, json]`` per event, best effort (no replay)."""

    def __init__(self, bind: str) -> None:
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        self._sock.bind(bind)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, topic: str, payload: str) -> None:
        try:
            self._sock.send_multipart([topic.encode(), payload.encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow local subscriber loses messages; the MQTT path is the durable one

    def close(self) -> None:
        self._sock.close()


def context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context.instance()
