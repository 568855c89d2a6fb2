"""An engineer's ad-hoc check: an uploaded die image (PNG or JPEG, with optional process values and a note) through
the served models and the decision rule as the daemon runs them, with the thresholds in force for the chosen recipe
x tool, answered with the score against its bands, the classes, the heatmap over the die and the latency.

Nothing of it is production: no event, no capture, no calibration candidate, no result; no audit sample is drawn.
Each user may run ``review.inspect_per_minute`` of them a minute (a sliding minute, refused with the seconds to
wait), so an ad-hoc check cannot crowd the station's Triton.
"""

from __future__ import annotations

import base64
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from calibration.store import CalibrationStore
from edge.capture import overlay
from edge.config import Config
from edge.errors import EdgeError
from edge.flow import Frame, FrameHeader, Outcome, ProcessLog, Rejected, Tensors
from edge.inference.inspector import Inspector
from edge.inference.model_watch import read_pairs
from edge.inference.triton_client import TritonClient
from edge.ingest.imaging import decode
from edge.models.ledger import read_route
from edge.models.served import Route, Serving
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics

MAX_NOTE = 2000
MAX_PARAMS = 256


class InspectRefused(ValueError):
    """An upload the check will not run, with the reason (a 4xx for the caller)."""


class RateLimiter:
    """At most ``per_minute`` calls per user in any 60 s."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._calls: dict[str, deque[float]] = {}

    def wait(self, user: str) -> float:
        """0 and the call counted when ``user`` may go on; otherwise the seconds until they may."""
        now = self._clock()
        calls = self._calls.setdefault(user, deque())
        while calls and calls[0] <= now - 60:
            calls.popleft()
        if len(calls) >= self.per_minute:
            return calls[0] + 60 - now
        calls.append(now)
        return 0.0


@dataclass(frozen=True)
class Upload:
    image: bytes
    recipe_id: str
    tool_id: str
    params: dict[str, float]
    note: str | None


def upload_of(cfg: Config, fields: Mapping[str, Any]) -> Upload:
    """The checked upload of a form's fields (``image`` bytes, ``recipe``, ``tool``, ``params`` as ``name=value``
    lines, ``note``); ``InspectRefused`` naming what is wrong."""
    image = fields.get("image")
    if not isinstance(image, bytes | bytearray) or not image:
        raise InspectRefused("image: attach a PNG or JPEG die image")
    recipe = str(fields.get("recipe") or next(iter(cfg.recipes)))
    tool = str(fields.get("tool") or sorted(cfg.tool_ids)[0])
    if recipe not in cfg.recipes:
        raise InspectRefused(f"recipe: {recipe!r} is not configured ({', '.join(cfg.recipes)})")
    if tool not in cfg.tool_ids:
        raise InspectRefused(f"tool: {tool!r} is not configured ({', '.join(sorted(cfg.tool_ids))})")
    params: dict[str, float] = {}
    for n, line in enumerate(str(fields.get("params") or "").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name.strip() or not math.isfinite(number):
            raise InspectRefused(f"params line {n}: write name=number, one per line")
        params[name.strip()] = number
    if len(params) > MAX_PARAMS:
        raise InspectRefused(f"params: at most {MAX_PARAMS}")
    note = str(fields.get("note") or "").strip() or None
    if note is not None and len(note) > MAX_NOTE:
        raise InspectRefused(f"note: at most {MAX_NOTE} characters")
    return Upload(bytes(image), recipe, tool, params, note)


def _encoding(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    raise InspectRefused("image: not a PNG or JPEG file")


class AdHoc:
    """The models as the daemon reaches them, for one upload at a time."""

    def __init__(self, cfg: Config, calibration: CalibrationStore) -> None:
        ad_hoc_decision = cfg.decision.model_copy(update={"audit_fraction": 0.0})  # no audit sample ad hoc
        self.cfg = cfg.model_copy(update={"decision": ad_hoc_decision})
        t = cfg.triton
        self.triton = TritonClient(t.url, t.anomaly_model, t.classifier_model, t.timeout_ms / 1000)
        self._calibration = calibration
        self.inspector = Inspector(self.cfg, self.triton, self._threshold, Metrics(), RateLimited())

    def _threshold(self, recipe: str, tool: str, defect_class: str) -> float:
        found = self._calibration.thresholds(recipe, tool).get(defect_class)
        return found if found is not None else self.cfg.decision.default_threshold

    async def close(self) -> None:
        await self.triton.close()

    async def check(self, upload: Upload) -> dict[str, Any]:
        """The verdict on ``upload``; ``InspectRefused`` for an image the daemon would refuse, ``EdgeError`` when
        the models cannot be reached."""
        t0 = time.perf_counter()
        tensors, outcome, context = await self.outcome(upload)
        latency_ms = 1000 * (time.perf_counter() - t0)
        v = outcome.verdict
        assert v is not None  # ``outcome`` raises otherwise
        heatmap = overlay.png(overlay.heatmap_overlay(tensors.rgb, outcome.heatmap)) if outcome.heatmap is not None \
            else overlay.png(overlay.die_bgr(tensors.rgb))  # fmt: skip
        return {
            "decision": v.decision, "defect_class": v.defect_class, "confidence": v.confidence,
            "threshold": v.threshold, "top_k": [{"class": c, "p": p} for c, p in v.top_k],
            "anomaly": {"score": outcome.score, "band": v.band,
                        "bands": None if outcome.bands is None else dict(zip(("pass", "reject"), outcome.bands))},
            "recipe_id": upload.recipe_id, "tool_id": upload.tool_id, "process_present": context is not None,
            "latency_ms": round(latency_ms, 1),
            "heatmap_png": "data:image/png;base64," + base64.b64encode(heatmap).decode(),
            "recorded": False,
        }  # fmt: skip

    async def outcome(self, upload: Upload) -> tuple[Tensors, Outcome, ProcessLog | None]:
        """``upload`` through the live models as the daemon runs them: its tensors, outcome (with the classifier's
        embedding where served) and process context; ``InspectRefused`` or ``EdgeError`` as ``check``."""
        ing = self.cfg.ingest
        header = FrameHeader("ad-hoc", upload.tool_id, upload.recipe_id, "AD-HOC", "AD-HOC", (0, 0), time.time(),
                             _encoding(upload.image), None, upload.note, None)  # fmt: skip
        tensors = decode(header, upload.image, (ing.image_height, ing.image_width), ing.max_image_pixels, True)
        if isinstance(tensors, Rejected):
            raise InspectRefused(f"image: {tensors.detail}")
        serving = self.inspector.serving
        wanted = read_route(self.cfg.models.ledger)  # the daemon's live version: it may have switched since
        if serving is None or (wanted is not None and wanted.live != serving.route.live):
            pairs = await read_pairs(self.cfg, self.triton)
            live = wanted.live if wanted is not None and wanted.live in pairs else max(pairs, key=int)
            self.inspector.serving = Serving(Route(live), pairs)
        context = (ProcessLog("AD-HOC", "AD-HOC", upload.recipe_id, upload.tool_id, time.time(), upload.params)
                   if upload.params else None)  # fmt: skip
        now = time.monotonic()
        frame = Frame(b"", header, tensors, now, now + ing.max_deadline_ms / 1000, time.time(), context)
        outcome = (await self.inspector.inspect([frame]))[0]
        if outcome.verdict is None:
            raise EdgeError(f"the models could not score the image: {outcome.reason}")
        return tensors, outcome, context
