"""The daemon's own account of its CPU time, per pipeline stage (``edge_stage_cpu_seconds_total{stage}``).

Each stage adds the CPU time of the thread it runs on (``time.thread_time_ns``) over stretches of code that do not
await, so what other coroutines do meanwhile is never counted twice. Divided by ``edge_frames_received_total`` it is
the stage's CPU per frame; the process's own CPU (``process_cpu_seconds_total``) less their sum is what no stage
names (the event loop, gRPC's and ZeroMQ's threads, the MQTT client, logging). Counting costs two clock reads and a
counter increment per stretch.

    t = clock()
    ...                                   # parse
    t = cpu.add("parse", t)               # returns the clock now: the next stretch starts here
    run = cpu.timed("outbox", outbox.record)   # for a function another thread runs
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from prometheus_client import Counter

P = ParamSpec("P")
R = TypeVar("R")

clock = time.thread_time_ns  # CPU nanoseconds of the calling thread

# The stages, in pipeline order (a stage nobody reached reads 0). "receive" is a frame taken off the socket at once
# (one waited for is taken in the event loop's own callbacks); "infer" the daemon's side of the inference round trip
# (the images stacked, the other inputs serialised, the answers read), not tritonclient's or gRPC's within the call
STAGES = ("receive", "parse", "dedupe", "decode", "join", "batch", "infer", "decide", "record", "outbox", "reply",
          "capture", "calibration", "publish")  # fmt: skip


class StageCpu:
    """Adds CPU time to ``counter`` (labelled by stage), its children bound once."""

    def __init__(self, counter: Counter) -> None:
        self._children = {stage: counter.labels(stage) for stage in STAGES}

    def add(self, stage: str, since: int) -> int:
        """Count this thread's CPU since ``since`` (a ``clock()`` reading) to ``stage``; returns the clock now."""
        now = clock()
        self._children[stage].inc((now - since) / 1e9)
        return now

    def count(self, stage: str, seconds: float) -> None:
        """Count CPU seconds measured elsewhere (a decode worker's process) to ``stage``."""
        self._children[stage].inc(seconds)

    def timed(self, stage: str, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn``, counting the CPU of each call (on whichever thread runs it) to ``stage``."""

        @wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            since = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, since)

        return run
