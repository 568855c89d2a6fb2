"""Frames from the tools: receive, parse, admission, de-duplication and decode; an accepted frame goes on to
``submit``, and every frame turned away is answered here (``rejected`` with the reason, or ``busy`` with a hint).

A frame resent while still in work is answered once, on the newest connection; one resent after it was recorded
gets the recorded reply again. A defect in handling one frame costs that frame (``busy``), never the intake.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from edge.errors import OutboxError
from edge.flow import Frame, Rejected
from edge.ingest.admission import Limits as AdmissionLimits
from edge.ingest.admission import Turnaround, busy_reason, retry_after_ms
from edge.ingest.imaging import decode
from edge.ingest.wire import Limits, encode_reply, error_reply, parse_frame
from edge.ops.logs import get
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

    async def run(self) -> None:
        """Receive and handle frames until cancelled."""
        while True:
            identity, parts, tools = await self._socket.recv()
            await self.handle(identity, parts, tools)

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
        now, wall = time.monotonic(), time.time()
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
        held = self._inflight.get((tool, header.frame_id))
        if held is not None:  # resent while still in work: answer the newest connection
            held.identity = identity
            self._metrics.frames_duplicate.labels(tool).inc()
            return
        recorded = await self._recorded_reply(tool, header.frame_id)
        if recorded is not None:
            self._metrics.frames_duplicate.labels(tool).inc()
            return await self._socket.send(identity, recorded)
        busy = busy_reason(
            len(self._inflight),
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
            return await self._reply(identity, error_reply(header.frame_id, "busy", busy, hint))
        tensors = decode(header, payload, (ing.image_height, ing.image_width), ing.max_image_pixels, ing.resize)
        if isinstance(tensors, Rejected):
            return await self._reject(identity, tensors)
        budget_ms = min(header.deadline_ms or ing.default_deadline_ms, ing.max_deadline_ms)
        frame = Frame(identity, header, tensors, now, now + budget_ms / 1000, wall)
        frame.timings["ingest"] = time.monotonic() - now
        self._metrics.stage_latency.labels("ingest").observe(frame.timings["ingest"])
        self._inflight.add(frame)
        self._submit(frame)

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
