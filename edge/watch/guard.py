"""Line watching (open wafers, drift, process statistics) behind a guard, and its state across restarts.

A defect in a piece of watching costs that piece (None, counted and logged), never a frame's verdict or reply;
what the watch knows is saved to the outbox every few minutes and at the stop, and read back at the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

from edge.errors import OutboxError
from edge.ops.logs import get
from edge.publish.outbox import Outbox
from edge.shared import Shared
from edge.watch.line_watch import LineWatch

log = get("edge.watch.guard")

_R = TypeVar("_R")
_Ts = TypeVarTuple("_Ts")


class GuardedWatch:
    def __init__(self, shared: Shared, watch: LineWatch, outbox: Outbox) -> None:
        self.watch = watch
        self._db = shared.db
        self._outbox = outbox
        self._metrics = shared.metrics
        self._log_limiter = shared.log_limiter

    def __call__(self, fn: Callable[[*_Ts], _R], *args: *_Ts) -> _R | None:
        """``fn(*args)``, a piece of line watching; None when it raised."""
        try:
            return fn(*args)
        except Exception:  # any defect in watching: counted and logged, the frame's path goes on
            self._metrics.internal_errors.labels("line_watch").inc()
            if self._log_limiter.allow("line_watch") is not None:
                log.exception("line_watch_failed", step=fn.__name__)
            return None

    async def restore(self) -> None:
        """What the previous run left: its open wafers, drift references and windows, parameter statistics."""
        try:
            dies, ends = await self._db(self._outbox.open_dies), await self._db(self._outbox.wafer_ends)
            states = await self._db(self._outbox.load_state)
        except OutboxError as err:
            self._metrics.internal_errors.labels("line_watch").inc()
            log.error("line_watch_restore_failed", error=str(err))
            return
        reopened = self(self.watch.restore, dies, time.monotonic(), ends)
        refused = self(self.watch.restore_state, states) or {}
        kept = {name: len(keyed) - len(refused.get(name, [])) for name, keyed in states.items()}
        if reopened or states:
            log.info(
                "line_watch_restored",
                wafers_reopened=reopened,
                kept=kept,
                started_afresh={name: [list(k) for k in keys] for name, keys in refused.items() if keys},
            )

    async def save(self) -> None:
        states = self(self.watch.export_state)
        if states is None:
            return
        try:
            await self._db(self._outbox.save_state, states)
        except OutboxError as err:
            self._metrics.internal_errors.labels("outbox").inc()
            log.error("line_watch_save_failed", error=str(err))
