"""The daemon's CPU account per stage: a stretch adds the CPU of the thread that ran it, not the time it took, and a
function another thread runs is counted on that thread."""

from __future__ import annotations

import threading
import time

from edge.ops.metrics import Metrics
from edge.ops.stage_cpu import STAGES, clock


def seconds(metrics: Metrics, stage: str) -> float:
    return metrics.registry.get_sample_value("edge_stage_cpu_seconds_total", {"stage": stage}) or 0.0


def spin(s: float) -> None:
    end = time.thread_time() + s
    while time.thread_time() < end:
        pass


def test_every_stage_is_exported_from_the_start():
    metrics = Metrics()
    assert all(seconds(metrics, stage) == 0.0 for stage in STAGES)
    assert metrics.registry.get_sample_value("edge_stage_cpu_seconds_total", {"stage": "decode"}) == 0.0


def test_a_stretch_adds_its_cpu_and_the_next_starts_where_it_ended():
    metrics = Metrics()
    t = clock()
    spin(0.03)
    t = metrics.stage_cpu.add("parse", t)
    time.sleep(0.05)  # waiting is no CPU
    spin(0.02)
    metrics.stage_cpu.add("decode", t)
    assert 0.03 <= seconds(metrics, "parse") < 0.05
    assert 0.02 <= seconds(metrics, "decode") < 0.04


def test_a_function_run_on_another_thread_counts_that_threads_cpu_only():
    metrics = Metrics()
    work = metrics.stage_cpu.timed("outbox", spin)
    rest = metrics.stage_cpu.timed("capture", time.sleep)
    threads = [threading.Thread(target=work, args=(0.04,)), threading.Thread(target=rest, args=(0.05,))]
    for thread in threads:
        thread.start()
    spin(0.05)  # this thread's own CPU meanwhile goes to no stage
    for thread in threads:
        thread.join()
    assert 0.04 <= seconds(metrics, "outbox") < 0.07
    assert seconds(metrics, "capture") < 0.01
    assert work.__name__ == "spin"
