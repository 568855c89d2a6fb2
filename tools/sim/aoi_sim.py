"""Simulated AOI tool(s): stream generated die frames over ZeroMQ DEALER and check every reply.

Each tool keeps a window of frames in flight, resends a frame that got no reply in time or got
``busy`` (after ``retry_after_ms``), and mixes in malformed frames whose rejection reason it
checks. At the end it prints a summary (and writes it as JSON with ``--report``): frames, replies
by status, decisions against the injected defects, latency percentiles and frames/s. With
``--curve-server-key`` and ``--curve-client-key`` the tools connect as ZeroMQ CURVE clients.

    python -m tools.sim.aoi_sim --endpoint tcp://127.0.0.1:5555 --seed 7 --lots 2 --rate 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import cv2
import numpy as np
import zmq
import zmq.auth

from edge.ingest.wire import decode_reply, encode_header
from edge.taxonomy import DEFECT_CLASSES
from tools.sim.malformed import ANONYMOUS, MALFORMED_KINDS, malformed_frame
from tools.sim.wafer_patterns import paint_plan
from tools.synth import Fab


@dataclass
class Pending:
    frame_id: str
    parts: list[bytes]
    label: str
    look: str
    first_sent: float
    last_sent: float
    tries: int = 1
    expect_reason: str | None = None  # malformed frames: the rejection reason we expect


@dataclass
class Tally:
    sent: int = 0
    resent: int = 0
    replies: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)
    outcomes: list[dict] = field(default_factory=list)  # per good frame: label, decision, class, latency
    malformed_ok: int = 0
    malformed_wrong: list[str] = field(default_factory=list)
    duplicates: int = 0
    unanswered: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    events: dict[str, str] = field(default_factory=dict)  # event_id -> frame_id


def encode_image(image: np.ndarray, encoding: str) -> tuple[bytes, dict]:
    if encoding == "raw":
        return image.tobytes(), {"shape": list(image.shape), "dtype": "uint8"}
    ext = ".png" if encoding == "png" else ".jpg"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"cv2 could not encode {encoding}")
    return buf.tobytes(), {"dtype": "uint8"}


def build_frames(args: argparse.Namespace) -> list[tuple[str, Pending]]:
    """Every frame to send, in order, as (tool_id, pending) with its wire parts ready."""
    fab = Fab(args.seed, recipe_id=args.recipe, tool_ids=tuple(args.tools))
    plan = fab.plan(args.lots, args.wafers_per_lot, args.dies_per_wafer, args.defect_rate)
    if args.wafer_patterns:
        plan = paint_plan(plan, args.defect_rate, args.seed, DEFECT_CLASSES)
    frames: list[tuple[str, Pending]] = []
    n = 0
    for wafer in plan:
        for die in wafer.dies:
            image = fab.render(die, wafer).image
            payload, extra = encode_image(image, args.encoding)
            header = {
                "v": 1,
                "frame_id": die.frame_id,
                "tool_id": wafer.tool_id,
                "recipe_id": args.recipe,
                "lot_id": wafer.lot_id,
                "wafer_id": wafer.wafer_id,
                "die": list(die.die),
                "ts": time.time(),
                "encoding": args.encoding,
                **extra,
            }
            if wafer.note:
                header["notes"] = wafer.note
            frames.append(
                (wafer.tool_id, Pending(die.frame_id, [encode_header(header), payload], die.label, die.look, 0.0, 0.0))
            )
            n += 1
            if args.malformed_every and n % args.malformed_every == 0:
                kind = MALFORMED_KINDS[(n // args.malformed_every) % len(MALFORMED_KINDS)]
                frame_id = f"bad-{wafer.tool_id}-{n}"
                parts, reason = malformed_frame(kind, frame_id, header, image)
                frames.append(
                    (wafer.tool_id, Pending(frame_id, parts, "MALFORMED", kind, 0.0, 0.0, expect_reason=reason))
                )
    return frames


@dataclass(frozen=True)
class CurveClient:
    """CURVE keys of the simulated tools: the daemon's public key and the tools' own pair (shared)."""

    server_public: bytes
    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def from_files(cls, server_key_file: str, client_key_file: str) -> CurveClient:
        """From the daemon's public certificate (NAME.key) and a tool's secret one (NAME.key_secret)."""
        server_public, _ = zmq.auth.load_certificate(server_key_file)
        public, secret = zmq.auth.load_certificate(client_key_file)
        if secret is None:
            raise ValueError(f"{client_key_file} holds no secret key: give the tool's NAME.key_secret")
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the daemon; before connect."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


class AoiTools:
    """One DEALER per tool, sharing one poll loop; CURVE clients when ``curve`` is given."""

    def __init__(
        self,
        endpoint: str,
        tools: list[str],
        window: int,
        reply_timeout_s: float,
        max_tries: int,
        curve: CurveClient | None = None,
    ):
        self.ctx = zmq.Context.instance()
        self.socks: dict[str, zmq.Socket] = {}
        for tool in tools:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt_string(zmq.IDENTITY, f"{tool}-{time.monotonic_ns()}")
            if curve:
                curve.apply(sock)
            sock.connect(endpoint)
            self.socks[tool] = sock
        self.window = window
        self.reply_timeout_s = reply_timeout_s
        self.max_tries = max_tries

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def run(self, frames: list[tuple[str, Pending]], rate: float, deadline_s: float) -> Tally:
        tally = Tally()
        todo = deque(frames)
        pending: dict[str, Pending] = {}
        retry_at: dict[str, float] = {}
        done: set[str] = set()
        poller = zmq.Poller()
        for sock in self.socks.values():
            poller.register(sock, zmq.POLLIN)
        tool_of = {p.frame_id: tool for tool, p in frames}
        start = time.monotonic()
        interval = 1.0 / rate if rate > 0 else 0.0
        next_send = start
        while (todo or pending) and time.monotonic() - start < deadline_s:
            now = time.monotonic()
            while todo and len(pending) < self.window and now >= next_send:
                tool, frame = todo.popleft()
                frame.first_sent = frame.last_sent = now
                self.socks[tool].send_multipart(frame.parts)
                pending[frame.frame_id] = frame
                tally.sent += 1
                next_send = max(next_send + interval, now - 1.0) if interval else now
            for frame_id, frame in list(pending.items()):
                due = retry_at.get(frame_id, frame.last_sent + self.reply_timeout_s)
                if now >= due and frame.tries < self.max_tries:
                    frame.tries += 1
                    frame.last_sent = now
                    retry_at.pop(frame_id, None)
                    self.socks[tool_of[frame_id]].send_multipart(frame.parts)
                    tally.resent += 1
            wait_ms = 5 if todo or retry_at else 20
            for sock, _ in poller.poll(wait_ms):
                while True:
                    try:
                        data = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_reply(decode_reply(data), pending, retry_at, done, tally)
        tally.unanswered = sorted(pending)
        tally.elapsed_s = time.monotonic() - start
        return tally

    def _on_reply(self, reply: dict, pending: dict, retry_at: dict, done: set, tally: Tally) -> None:
        frame_id = reply.get("frame_id")
        if frame_id is None:  # unreadable header: pair with the oldest such frame still pending
            frame_id = next((f for f, p in pending.items() if p.look in ANONYMOUS), None)
        frame = pending.get(frame_id)
        if frame is None:
            if frame_id in done:
                tally.duplicates += 1
            return
        status = reply.get("status")
        if status == "busy":
            retry_at[frame_id] = time.monotonic() + reply.get("retry_after_ms", 50) / 1000
            tally.replies["busy"] += 1
            return
        del pending[frame_id]
        retry_at.pop(frame_id, None)
        done.add(frame_id)
        tally.replies[status] += 1
        if frame.expect_reason is not None:
            reason = str(reply.get("reason", ""))
            if status == "rejected" and reason.startswith(frame.expect_reason):
                tally.malformed_ok += 1
            else:
                tally.malformed_wrong.append(f"{frame.look}: {status} {reason}")
            return
        latency = (time.monotonic() - frame.first_sent) * 1000
        tally.latencies_ms.append(latency)
        decision = reply.get("decision", status.upper())
        tally.decisions[decision] += 1
        if reply.get("event_id"):
            tally.events[reply["event_id"]] = frame_id
        tally.outcomes.append(
            {
                "frame_id": frame_id,
                "label": frame.label,
                "look": frame.look,
                "status": status,
                "decision": decision,
                "event_id": reply.get("event_id"),
                "latency_ms": latency,
                "reason": reply.get("reason"),
                "replied_at": time.monotonic(),
            }
        )


def latency_percentiles(ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 of latencies in ms (zeros when there are none)."""
    a = np.asarray(ms) if ms else np.zeros(1)
    return {f"p{p}": round(float(np.percentile(a, p)), 2) for p in (50, 95, 99)}


def summarise(tally: Tally) -> dict:
    good = [o for o in tally.outcomes if o["status"] == "ok"]
    return {
        "frames_sent": tally.sent,
        "resent": tally.resent,
        "replies": dict(tally.replies),
        "decisions": dict(tally.decisions),
        "malformed_rejected_as_expected": tally.malformed_ok,
        "malformed_wrong": tally.malformed_wrong,
        "duplicate_replies": tally.duplicates,
        "unanswered": tally.unanswered,
        "inspected": len(good),
        "latency_ms": latency_percentiles(tally.latencies_ms),
        "frames_per_s": round(len(tally.latencies_ms) / max(tally.elapsed_s, 1e-9), 1),
        "elapsed_s": round(tally.elapsed_s, 2),
        "outcomes": tally.outcomes,
    }


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments that fix the production plan; the MES simulator takes the same ones."""
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--recipe", default="R-7NM-L4")
    parser.add_argument("--tools", nargs="+", default=["AOI-01", "AOI-02"])
    parser.add_argument("--lots", type=int, default=2)
    parser.add_argument("--wafers-per-lot", type=int, default=3)
    parser.add_argument("--dies-per-wafer", type=int, default=40)
    parser.add_argument("--defect-rate", type=float, default=0.3)
    parser.add_argument(
        "--wafer-patterns",
        action="store_true",
        help="draw each wafer's defects in a spatial pattern (random, edge ring, centre, scratch, "
        "cluster in turn) instead of uniformly",
    )


def plan_frames(plan_argv: list[str], encoding: str = "png", malformed_every: int = 0) -> list[tuple[str, Pending]]:
    """``build_frames`` for plan arguments given as a command line (tests, benchmark)."""
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    args = parser.parse_args(plan_argv)
    args.encoding, args.malformed_every = encoding, malformed_every
    return build_frames(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.aoi_sim", description=__doc__.split("\n")[0])
    add_plan_arguments(parser)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    parser.add_argument("--encoding", choices=("png", "raw", "jpeg"), default="png")
    parser.add_argument("--rate", type=float, default=40.0, help="frames per second, all tools together (0: max)")
    parser.add_argument("--window", type=int, default=32, help="frames in flight")
    parser.add_argument("--malformed-every", type=int, default=0, help="add a malformed frame every N frames")
    parser.add_argument("--reply-timeout-s", type=float, default=5.0)
    parser.add_argument("--max-tries", type=int, default=5)
    parser.add_argument("--deadline-s", type=float, default=600.0)
    parser.add_argument("--report", help="write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary")
    parser.add_argument("--curve-server-key", metavar="FILE", help="CURVE: the daemon's public certificate (.key)")
    parser.add_argument(
        "--curve-client-key",
        metavar="FILE",
        help="CURVE: the tools' secret certificate (.key_secret), shared by all simulated tools "
        "(the daemon needs its .key filed under each tool id)",
    )
    args = parser.parse_args(argv)
    curve = None
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        parser.error("--curve-server-key and --curve-client-key go together")
    if args.curve_server_key:
        try:
            curve = CurveClient.from_files(args.curve_server_key, args.curve_client_key)
        except (OSError, ValueError) as err:
            parser.error(f"CURVE keys: {err}")
    frames = build_frames(args)
    tools = AoiTools(args.endpoint, args.tools, args.window, args.reply_timeout_s, args.max_tries, curve=curve)
    try:
        tally = tools.run(frames, args.rate, args.deadline_s)
    finally:
        tools.close()
    summary = summarise(tally)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(summary, fh, indent=1)
    if not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "outcomes"}, indent=1))
    return 0 if not summary["unanswered"] and not summary["malformed_wrong"] else 1


if __name__ == "__main__":
    sys.exit(main())
