"""What every stage of one daemon shares: its configuration, metrics and health, the SQLite threads (the outbox's,
on the reply path, and the calibration store's, off it), the log limiter for bad input and repeated defects, the
frames in work, and where one-off tasks are spawned."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from edge.config import Config
from edge.flow import Frame
from edge.ingest.admission import Inflight
from edge.ops.async_db import AsyncDb
from edge.ops.http import Health
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics

Spawn = Callable[[Coroutine[Any, Any, None]], object]


@dataclass(frozen=True, eq=False)
class Shared:
    cfg: Config
    metrics: Metrics
    health: Health  # also what /readyz reports: models served, draining, outbox full, stalled tasks
    db: AsyncDb
    log_limiter: RateLimited
    inflight: Inflight[Frame]  # accepted and not yet answered, by (tool_id, frame_id)
    spawn: Spawn  # one-off work, supervised (edge.ops.supervisor)
    # the calibration store's thread: a lot end or a review never waits behind the outbox, nor holds a reply
    calibration_db: AsyncDb = field(default_factory=AsyncDb)
