"""The daemon's tasks, supervised: what must run as long as the daemon, and what may fail and go on.

- ``critical``: a task the daemon cannot serve without (the intake, the batch loop, the publisher, the health loop).
  It never ends on its own; when it does (an exception, or a return) ``on_critical_end`` hears its name once,
  and the daemon stops petting the watchdog, drains and exits non-zero.
- ``every``: a periodic round (pruning, saving state, reloading calibration). A round that raises is logged and
  counted in ``restarts`` (by name) and the next round runs on time: one bad round never ends the loop.
- ``spawn``: one-off work (recording a batch's rows, a lot end); a failure is logged, the daemon goes on.

``stop`` cancels whatever is still running and waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from edge.ops.logs import get

log = get("edge.ops.supervisor")


class Counted(Protocol):
    """A counter by task name (``edge_task_restarts_total{task}``)."""

    def labels(self, task: str) -> Any: ...


class Supervisor:
    def __init__(self, on_critical_end: Callable[[str], None], restarts: Counted) -> None:
        self._on_critical_end = on_critical_end
        self._restarts = restarts
        self._tasks: set[asyncio.Task[None]] = set()
        self._critical: dict[asyncio.Task[None], str] = {}

    def critical(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.spawn(coro)
        self._critical[task] = name
        return task

    def every(
        self, name: str, interval_s: float, round_: Callable[[], Awaitable[None]], *, at_start: bool = False
    ) -> asyncio.Task[None]:
        """Run ``round_`` every ``interval_s`` (the first one at once with ``at_start``), whatever a round raises."""
        return self.spawn(self._periodic(name, interval_s, round_, at_start))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    async def stop(self) -> None:
        """Cancel every task still running (critical ones included: the daemon is stopping) and wait for them."""
        running = list(self._tasks)
        self._critical.clear()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _periodic(
        self, name: str, interval_s: float, round_: Callable[[], Awaitable[None]], at_start: bool
    ) -> None:
        if not at_start:
            await asyncio.sleep(interval_s)
        while True:
            try:
                await round_()
            except Exception:  # a defect in one round must not end the loop: logged, counted, the next one runs
                log.exception("periodic_round_failed", task=name)
                self._restarts.labels(name).inc()
            await asyncio.sleep(interval_s)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        name = self._critical.pop(task, None)
        if task.cancelled():
            return
        error = task.exception()
        if name is not None:
            log.critical("critical_task_died", task=name, error=repr(error) if error else "returned")
            self._on_critical_end(name)
        elif error is not None:
            log.error("task_failed", error=repr(error))
