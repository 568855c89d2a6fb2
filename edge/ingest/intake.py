"""Frames from the tools: receive, parse, admission, de-duplication and decode; an accepted frame goes on to
``submit``, and every frame turned away is answered here (``rejected`` with the reason, or ``busy`` with a hint).

Several frames are handled at once (``ingest.frames_in_hand``): a frame's image is decoded on a small thread pool
(``ingest.decode_threads``; OpenCV and ISA-L let go of the interpreter lock while they decode) or in worker processes
(``ingest.decode_processes``; ``edge.ingest.decoders``, which says what crosses to them), so the event loop
batches, records and answers meanwhile, two cores decode side by side, and frames waiting on the outbox lookup or a
decode thread do not hold back the rest. The hand-off keeps the guarantees of one-at-a-time handling: a frame's key
is taken (``arriving``) as soon as its header is read, before anything is awaited, so a copy resent while the first
is looked up or decoded is answered once, on the newest connection, like a copy resent while in work; one resent after
it was recorded gets the recorded reply again. A defect in handling one frame costs that frame (``busy``), never the
intake.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from edge.errors import OutboxError
from edge.flow import Frame, FrameHeader, Rejected
from edge.ingest.admission import Limits as AdmissionLimits
from edge.ingest.admission import Turnaround, busy_reason, retry_after_ms
from edge.ingest.decoders import Lost, Sizes, decoder_for
from edge.ingest.imaging import decode
from edge.ingest.wire import Limits, encode_reply, error_reply, parse_frame
from edge.ops.logs import get
from edge.ops.stage_cpu import clock
from edge.shared import Shared

log = get("edge.ingest.intake")

RecordedReply = Callable[[str, str], Awaitable[bytes | None]]  # (tool_id, frame_id) -> the reply recorded, if any


class ToolSocket(Protocol):
    """The tools' ROUTER socket (``edge.ingest.zmq_sockets.FrameSocket``)."""

    async def recv(self) -> tuple[bytes, list[bytes], frozenset[str] | None]: ...

    async def send(self, identity: bytes, reply: bytes) -> None: ...


class Intake:
    def __init__(
        self,
        shared: Shared,
        socket: ToolSocket,
        turnaround: Turnaround,
        recorded_reply: RecordedReply,
        submit: Callable[[Frame], None],
    ) -> None:
        self.cfg = cfg = shared.cfg
        self._socket = socket
        self._inflight = shared.inflight
        self._turnaround = turnaround
        self._recorded_reply = recorded_reply
        self._submit = submit
        self._health = shared.health  # draining (shutting down) and outbox_full turn frames away
        self._metrics = shared.metrics
        self._log_limiter = shared.log_limiter
        ing = cfg.ingest
        self._limits = Limits(
            ing.max_header_bytes, ing.max_payload_bytes, ing.max_image_pixels, cfg.tool_ids, frozenset(cfg.recipes)
        )
        self._admission = AdmissionLimits(ing.max_inflight_frames, cfg.per_tool_inflight)
        self._jitter = random.Random()  # spreads the retry hints of busy replies
        self._cpu = shared.metrics.stage_cpu
        sizes = Sizes((ing.image_height, ing.image_width), ing.max_image_pixels, ing.resize, ing.max_payload_bytes)
        self._decoder = decoder_for(ing.decode_threads, ing.decode_processes, decode, sizes, shared.metrics)
        self._arriving: dict[tuple[str, str], bytes] = {}  # keys being handled -> the newest connection's identity

    async def run(self) -> None:
        """Receive frames until cancelled, handling up to ``ingest.frames_in_hand`` at once; at the end, those in
        hand are finished (accepted or answered) before the decode threads go."""
        await self._decoder.start()
        slots = asyncio.Semaphore(self.cfg.ingest.frames_in_hand)
        handling: set[asyncio.Task[None]] = set()

        async def handle(identity: bytes, parts: list[bytes], tools: frozenset[str] | None) -> None:
            try:
                await self.handle(identity, parts, tools)
            finally:
                slots.release()

        try:
            while True:
                await slots.acquire()
                identity, parts, tools = await self._socket.recv()
                task = asyncio.create_task(handle(identity, parts, tools))
                handling.add(task)
                task.add_done_callback(handling.discard)
        finally:
            if handling:
                await asyncio.shield(asyncio.gather(*handling, return_exceptions=True))
            self._decoder.close()

    async def handle(self, identity: bytes, parts: list[bytes], tools: frozenset[str] | None) -> None:
        """One message from a tool; ``tools``: those the sender's CURVE key speaks for (None: no CURVE)."""
        busy_ms = self.cfg.ingest.busy_retry_after_ms
        try:
            await self._accept(identity, parts, tools)
        except OutboxError as err:
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("outbox_read_failed", error=str(err))
            await self._reply(identity, error_reply(None, "busy", "outbox_unavailable", busy_ms))
        except Exception:  # a defect in handling one frame must not stop the intake
            log.exception("intake_failed")
            self._metrics.internal_errors.labels("intake").inc()
            await self._reply(identity, error_reply(None, "busy", "internal_error", busy_ms))

    async def _accept(self, identity: bytes, parts: list[bytes], tools: frozenset[str] | None) -> None:
        now, wall, cpu = time.monotonic(), time.time(), clock()
        parsed = parse_frame(parts, self._limits)
        if isinstance(parsed, Rejected):
            return await self._reject(identity, parsed)
        header, payload = parsed
        if tools is not None and header.tool_id not in tools:
            return await self._reject(
                identity,
                Rejected(
                    "tool_key_mismatch",
                    f"the connection's CURVE key speaks for {', '.join(sorted(tools)) or 'no tool'}, "
                    f"not {header.tool_id}",
                    header.frame_id,
                ),
            )
        tool = header.tool_id
        self._metrics.frames_received.labels(tool).inc()
        key = (tool, header.frame_id)
        held = self._inflight.get(key)
        if held is not None or key in self._arriving:  # resent while in work or in hand: answer the newest connection
            if held is not None:
                held.identity = identity
            else:
                self._arriving[key] = identity
            self._metrics.frames_duplicate.labels(tool).inc()
            return
        self._arriving[key] = identity
        self._cpu.add("parse", cpu)
        try:
            frame = await self._admit(header, payload, now, wall)
        finally:
            identity = self._arriving.pop(key)
        if isinstance(frame, Frame):
            cpu = clock()
            frame.identity = identity
            self._inflight.add(frame)
            self._submit(frame)
            self._cpu.add("join", cpu)
        elif isinstance(frame, Rejected):
            await self._reject(identity, frame)
        else:
            await self._socket.send(identity, frame)

    async def _admit(self, header: FrameHeader, payload: bytes, now: float, wall: float) -> Frame | Rejected | bytes:
        """The frame to submit, why it is refused, or the reply to send (recorded before, or busy)."""
        tool = header.tool_id
        recorded = await self._recorded_reply(tool, header.frame_id)
        if recorded is not None:
            self._metrics.frames_duplicate.labels(tool).inc()
            return recorded
        busy = busy_reason(
            len(self._inflight) + len(self._arriving) - 1,
            self._inflight.held_by(tool),
            self._admission,
            accepting=not self._health.draining,
            outbox_full=self._health.outbox_full,
        )
        ing = self.cfg.ingest
        if busy is not None:
            self._metrics.frames_busy.labels(tool, busy).inc()
            turnaround = self._turnaround.seconds(tool if busy == "tool_share_full" else Turnaround.STATION)
            hint = retry_after_ms(
                busy, turnaround, ing.busy_retry_after_ms, ing.busy_retry_max_ms, self._jitter.uniform(0.5, 1.5)
            )
            return encode_reply(error_reply(header.frame_id, "busy", busy, hint))
        tensors = await self._decoder.decode(header, payload)
        if isinstance(tensors, Rejected):
            return tensors
        if isinstance(tensors, Lost):  # a decode worker died meanwhile: nothing recorded, the tool resends
            self._metrics.frames_busy.labels(tool, tensors.reason).inc()
            return encode_reply(error_reply(header.frame_id, "busy", tensors.reason, ing.busy_retry_after_ms))
        budget_ms = min(header.deadline_ms or ing.default_deadline_ms, ing.max_deadline_ms)
        frame = Frame(b"", header, tensors, now, now + budget_ms / 1000, wall)
        frame.timings["ingest"] = time.monotonic() - now
        self._metrics.stage_latency.labels("ingest").observe(frame.timings["ingest"])
        return frame

    async def _reject(self, identity: bytes, rejected: Rejected) -> None:
        self._metrics.frames_rejected.labels(rejected.reason).inc()
        held = self._log_limiter.allow(rejected.reason)
        if held is not None:
            log.warning(
                "frame_rejected",
                reason=rejected.reason,
                detail=rejected.detail,
                frame_id=rejected.frame_id,
                similar_since_last=held,
            )
        await self._reply(identity, error_reply(rejected.frame_id, "rejected", f"{rejected.reason}: {rejected.detail}"))

    async def _reply(self, identity: bytes, reply: dict[str, Any]) -> None:
        await self._socket.send(identity, encode_reply(reply))
