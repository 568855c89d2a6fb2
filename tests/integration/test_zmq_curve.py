"""CURVE on the frame intake: real ROUTER and DEALER sockets over TCP loopback.

Only a tool whose public certificate is in the authorized directory and that knows the daemon's
public key gets a frame through, tagged with the tools its certificate is named for; a stranger's key
or a plain socket gets nothing. Without CURVE the intake takes plain DEALERs as before. The keys come
from `edge-inspect curve-keygen`."""

from __future__ import annotations

import asyncio
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from prometheus_client import CollectorRegistry

from edge.cli import main as edge_inspect
from edge.errors import ConfigError
from edge.ingest.zmq_sockets import FrameSocket
from edge.ops.metrics import Metrics
from edge.serving.tritonserver import free_port
from tools.sim.aoi_sim import AoiTools, CurveClient

pytestmark = pytest.mark.integration

NOTHING_WITHIN_S = 1.0
FRAME = [b"header", b"payload"]


@dataclass
class Keys:
    server_secret: Path  # the daemon's NAME.key_secret
    server_public: Path  # the daemon's NAME.key, handed to the tools
    authorized: Path  # the daemon's curve_authorized_keys directory
    tool_secret: Path  # an authorized tool's key pair
    rogue_secret: Path  # a well-formed pair the daemon does not know


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    for directory, name in (("station", "ST-01"), ("tool", "AOI-01"), ("rogue", "AOI-66")):
        assert edge_inspect(["curve-keygen", str(tmp_path / directory), name]) == 0
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(tmp_path / "tool" / "AOI-01.key", authorized)
    return Keys(
        tmp_path / "station" / "ST-01.key_secret",
        tmp_path / "station" / "ST-01.key",
        authorized,
        tmp_path / "tool" / "AOI-01.key_secret",
        tmp_path / "rogue" / "AOI-66.key_secret",
    )


@pytest.fixture
def ctx() -> Iterator[zmq.asyncio.Context]:
    """A private context per test: the intake's ZAP handler is one per context."""
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


def intake(ctx: zmq.asyncio.Context, keys: Keys | None) -> FrameSocket:
    curve = {"curve_secret_key_file": keys.server_secret, "curve_authorized_keys": keys.authorized} if keys else {}
    return FrameSocket(ctx, "tcp://127.0.0.1:0", 1 << 20, hwm=100, **curve)


def tool(ctx: zmq.asyncio.Context, endpoint: str, server_public: Path | None, secret: Path | None) -> zmq.Socket:
    """A DEALER like an AOI tool's; a CURVE client when given the daemon's public key and its own pair."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if server_public and secret:
        sock.curve_serverkey = zmq.auth.load_certificate(server_public)[0]
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(secret)
    sock.connect(endpoint)
    return sock


async def exchange(
    frames: FrameSocket, client: zmq.asyncio.Socket, tools: frozenset[str] | None = frozenset({"AOI-01"})
) -> bytes | None:
    """One frame from ``client`` and the intake's reply to it; None when nothing got through. The
    intake must say the sender speaks for ``tools`` (None: no CURVE)."""
    await client.send_multipart(FRAME)
    try:
        identity, parts, speaks_for = await asyncio.wait_for(frames.recv(), NOTHING_WITHIN_S)
    except TimeoutError:
        return None
    assert parts == FRAME and speaks_for == tools
    await frames.send(identity, b"reply")
    return await asyncio.wait_for(client.recv(), NOTHING_WITHIN_S)


def test_an_authorized_tool_exchanges_frames_and_no_secret_is_logged(ctx, keys, capsys):
    async def scenario() -> None:
        frames = intake(ctx, keys)
        client = tool(ctx, frames.endpoint, keys.server_public, keys.tool_secret)
        assert await exchange(frames, client) == b"reply"
        assert await exchange(frames, client) == b"reply"  # and keeps doing so on the same connection
        frames.close()

    asyncio.run(scenario())
    out = capsys.readouterr()
    assert "frame_intake_curve" in out.out
    for secret_file in (keys.server_secret, keys.tool_secret):
        secret = zmq.auth.load_certificate(secret_file)[1].decode()
        assert secret not in out.out + out.err


@pytest.mark.parametrize("who", ["unknown key", "plain socket", "wrong server key"])
def test_a_stranger_gets_nothing_through(ctx, keys, who):
    async def scenario() -> None:
        frames = intake(ctx, keys)
        server_public, secret = {
            "unknown key": (keys.server_public, keys.rogue_secret),
            "plain socket": (None, None),
            "wrong server key": (keys.rogue_secret, keys.tool_secret),  # an authorized tool, a fake daemon key
        }[who]
        assert await exchange(frames, tool(ctx, frames.endpoint, server_public, secret)) is None
        # the intake itself is unharmed: the authorized tool still gets through
        assert await exchange(frames, tool(ctx, frames.endpoint, keys.server_public, keys.tool_secret)) == b"reply"
        frames.close()

    asyncio.run(scenario())


def test_without_curve_the_intake_takes_plain_dealers(ctx):
    async def scenario() -> None:
        frames = intake(ctx, None)
        assert await exchange(frames, tool(ctx, frames.endpoint, None, None), tools=None) == b"reply"
        frames.close()

    asyncio.run(scenario())


def test_a_frame_already_waiting_counts_to_the_receive_stage_and_one_waited_for_does_not(ctx):
    def received_s(metrics: Metrics) -> float:
        return metrics.registry.get_sample_value("edge_stage_cpu_seconds_total", {"stage": "receive"}) or 0.0

    async def scenario() -> None:
        metrics = Metrics(CollectorRegistry())
        frames = FrameSocket(ctx, "tcp://127.0.0.1:0", 1 << 20, hwm=100, cpu=metrics.stage_cpu)
        client = tool(ctx, frames.endpoint, None, None)
        waiting = asyncio.ensure_future(frames.recv())  # nothing there yet: it waits on the socket
        await asyncio.sleep(0.2)
        await client.send_multipart(FRAME)
        assert (await asyncio.wait_for(waiting, NOTHING_WITHIN_S))[1] == FRAME
        assert received_s(metrics) == 0.0  # taken in pyzmq's callback: the loop's own CPU
        await client.send_multipart(FRAME)
        await asyncio.sleep(0.3)  # there before the intake asks
        assert (await asyncio.wait_for(frames.recv(), NOTHING_WITHIN_S))[1] == FRAME
        assert received_s(metrics) > 0.0
        frames.close()

    asyncio.run(scenario())


def test_the_intake_also_listens_on_a_unix_socket_its_group_may_use(ctx, tmp_path):
    """``ingest.also_bind``: the same ROUTER on TCP and on a Unix socket; each tool's reply goes back the way it came,
    and a socket file left by an earlier run is taken over."""
    unix = tmp_path / "frames.sock"
    unix.write_bytes(b"left by a crash")

    async def scenario() -> None:
        frames = FrameSocket(ctx, "tcp://127.0.0.1:0", 1 << 20, hwm=100, also_bind=[f"ipc://{unix}"])
        assert frames.endpoints == (frames.endpoint, f"ipc://{unix}") and frames.endpoint.startswith("tcp://")
        assert stat.S_ISSOCK(unix.stat().st_mode) and stat.S_IMODE(unix.stat().st_mode) == 0o660
        over_tcp, over_unix = tool(ctx, frames.endpoint, None, None), tool(ctx, f"ipc://{unix}", None, None)
        assert await exchange(frames, over_unix, tools=None) == b"reply"
        assert await exchange(frames, over_tcp, tools=None) == b"reply"
        assert await exchange(frames, over_unix, tools=None) == b"reply"
        frames.close()

    asyncio.run(scenario())


def test_an_unusable_unix_socket_path_fails_the_start_and_leaves_nothing_bound(ctx, tmp_path):
    port = free_port()
    with pytest.raises(zmq.ZMQError, match="No such file or directory"):
        FrameSocket(ctx, f"tcp://127.0.0.1:{port}", 1 << 20, hwm=100, also_bind=[f"ipc://{tmp_path}/no/frames.sock"])
    again = ctx.socket(zmq.ROUTER)
    try:  # the TCP address was let go (ZeroMQ closes a socket on its I/O thread: allow it a moment)
        deadline = time.monotonic() + 2
        while True:
            try:
                again.bind(f"tcp://127.0.0.1:{port}")
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        again.close(linger=0)


def test_tool_keys_added_or_withdrawn_while_running_take_effect_on_the_next_connection(ctx, keys):
    async def scenario() -> None:
        (keys.authorized / "AOI-01.key").unlink()
        frames = intake(ctx, keys)
        connect = lambda: tool(ctx, frames.endpoint, keys.server_public, keys.tool_secret)  # noqa: E731
        assert await exchange(frames, connect()) is None
        shutil.copy(keys.tool_secret.with_suffix(".key"), keys.authorized)
        assert await exchange(frames, connect()) == b"reply"
        (keys.authorized / "AOI-01.key").unlink()
        assert await exchange(frames, connect()) is None
        frames.close()

    asyncio.run(scenario())


def test_a_key_speaks_for_the_tools_its_certificate_is_named_for(ctx, keys):
    async def scenario() -> None:
        shutil.copy(keys.authorized / "AOI-01.key", keys.authorized / "AOI-02.key")  # one controller, two tools
        frames = intake(ctx, keys)
        connect = lambda: tool(ctx, frames.endpoint, keys.server_public, keys.tool_secret)  # noqa: E731
        assert await exchange(frames, connect(), tools=frozenset({"AOI-01", "AOI-02"})) == b"reply"
        (keys.authorized / "AOI-01.key").unlink()  # withdrawn for AOI-01: the next connection speaks for AOI-02
        assert await exchange(frames, connect(), tools=frozenset({"AOI-02"})) == b"reply"
        frames.close()

    asyncio.run(scenario())


def test_bad_key_files_are_config_errors_naming_the_file_and_never_the_secret(ctx, keys, tmp_path):
    secret_text = zmq.auth.load_certificate(keys.server_secret)[1].decode()
    mangled = tmp_path / "mangled.key_secret"
    mangled.write_text(keys.server_secret.read_text().replace(secret_text, secret_text[::-1]))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "AOI-02.key").write_text("not a certificate\n")
    cases = [
        (tmp_path / "missing.key_secret", keys.authorized, "missing.key_secret"),
        (keys.server_public, keys.authorized, "no secret key"),
        (mangled, keys.authorized, "malformed or does not belong"),
        (keys.server_secret, broken, "AOI-02.key"),
        (keys.server_secret, tmp_path / "nowhere", "nowhere"),
    ]

    async def scenario() -> None:
        for secret_file, authorized, message in cases:
            with pytest.raises(ConfigError, match=message) as caught:
                FrameSocket(
                    ctx,
                    "tcp://127.0.0.1:0",
                    1 << 20,
                    hwm=100,
                    curve_secret_key_file=secret_file,
                    curve_authorized_keys=authorized,
                )
            assert secret_text not in str(caught.value) and secret_text[::-1] not in str(caught.value)
        with pytest.raises(ConfigError, match="both or neither"):
            FrameSocket(ctx, "tcp://127.0.0.1:0", 1 << 20, hwm=100, curve_secret_key_file=keys.server_secret)
        intake(ctx, keys).close()  # nothing half-made was left bound: a good intake still starts

    asyncio.run(scenario())


def test_curve_keygen_writes_a_usable_pair_owner_only_and_never_overwrites(tmp_path, capsys):
    directory = tmp_path / "keys"
    assert edge_inspect(["curve-keygen", str(directory), "ST-01"]) == 0
    public, secret = directory / "ST-01.key", directory / "ST-01.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    public_key, secret_key = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (public_key, None)
    assert zmq.curve_public(secret_key) == public_key
    assert secret_key.decode() not in capsys.readouterr().out
    before = secret.read_bytes()
    assert edge_inspect(["curve-keygen", str(directory), "ST-01"]) == 2
    assert "exists" in capsys.readouterr().err and secret.read_bytes() == before
    assert edge_inspect(["curve-keygen", str(directory), "../ST-02"]) == 2


def test_the_aoi_simulator_connects_as_a_curve_client(ctx, keys):
    async def scenario() -> None:
        frames = intake(ctx, keys)
        sim = AoiTools(
            frames.endpoint,
            ["AOI-01"],
            window=1,
            reply_timeout_s=1.0,
            max_tries=1,
            curve=CurveClient.from_files(str(keys.server_public), str(keys.tool_secret)),
        )

        def send_and_wait() -> bytes | None:  # the simulator's blocking socket, off the loop serving ZAP
            sock = sim.socks["AOI-01"]
            sock.send_multipart(FRAME)
            return sock.recv() if sock.poll(2000) else None

        try:
            reply = asyncio.create_task(asyncio.to_thread(send_and_wait))
            identity, parts, speaks_for = await asyncio.wait_for(frames.recv(), 2.0)
            assert parts == FRAME and speaks_for == {"AOI-01"}
            await frames.send(identity, b"reply")
            assert await reply == b"reply"
        finally:
            sim.close()
            frames.close()

    asyncio.run(scenario())
