"""Supervision: a critical task that ends is reported once, a failing periodic round is counted and the next
one runs, one-off work may fail without consequence, and stop cancels everything."""

from __future__ import annotations

import asyncio

from edge.ops.metrics import Metrics
from edge.ops.supervisor import Supervisor
from tests.waiting import wait_until


def restarts(metrics: Metrics, task: str) -> float:
    return metrics.registry.get_sample_value("edge_task_restarts_total", {"task": task}) or 0.0


def test_critical_and_periodic_tasks() -> None:
    async def scenario() -> None:
        metrics, ended = Metrics(), []
        tasks = Supervisor(ended.append, metrics.task_restarts)
        rounds: list[int] = []

        async def flaky_round() -> None:
            rounds.append(len(rounds))
            if len(rounds) % 2:
                raise RuntimeError("a defect in every other round")

        async def returns_early() -> None:
            await asyncio.sleep(0.02)

        async def runs() -> None:
            await asyncio.Event().wait()

        tasks.every("prune", 0.01, flaky_round, at_start=True)
        tasks.critical("batch_loop", returns_early())
        tasks.critical("intake", runs())
        tasks.spawn(flaky_round())  # one-off: fails, logged, nothing else
        # the loop outlives its failing rounds: waited for, not timed (each failure logs a traceback, slow on a busy
        # host), within a bound that only a loop that stopped would reach
        assert await wait_until(lambda: len(rounds) >= 6 and restarts(metrics, "prune") >= 2 and ended, 10.0, 0.01)
        await asyncio.sleep(0.05)
        assert ended == ["batch_loop"]  # once, by name; the intake still runs
        await tasks.stop()
        assert ended == ["batch_loop"]  # cancelling at stop is not a death
        settled = len(rounds)
        await asyncio.sleep(0.05)
        assert len(rounds) == settled

    asyncio.run(scenario())


def test_a_periodic_task_waits_one_interval_unless_asked_to_start_at_once() -> None:
    async def scenario() -> None:
        tasks, calls = Supervisor(lambda name: None, Metrics().task_restarts), []

        async def note() -> None:
            calls.append(asyncio.get_running_loop().time())

        tasks.every("save", 0.2, note)
        await asyncio.sleep(0.1)
        assert calls == []
        await tasks.stop()

    asyncio.run(scenario())
