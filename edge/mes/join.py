"""Joining frames with their wafer's MES process log (DESIGN 3.2). Pure: the caller owns the clock
and the timers; this only decides which frames may go on, and with what context."""

from __future__ import annotations

from collections import defaultdict

from edge.flow import Frame, ProcessLog
from edge.mes.context import ContextCache

WaferKey = tuple[str, str, str]


class Joiner:
    def __init__(self, cache: ContextCache) -> None:
        self.cache = cache
        self._waiting: dict[WaferKey, list[Frame]] = defaultdict(list)

    def __len__(self) -> int:
        return sum(len(frames) for frames in self._waiting.values())

    def admit(self, frame: Frame, now: float, wait: bool) -> bool:
        """True when the frame can go on now (its context set, if known); False when it now waits
        for its log (only with ``wait``): ``on_log`` or ``expire`` releases it later."""
        frame.context = self.cache.get(frame.wafer_key, now)
        if frame.context is not None or not wait:
            return True
        self._waiting[frame.wafer_key].append(frame)
        return False

    def on_log(self, log: ProcessLog, now: float) -> list[Frame]:
        """Store a process log; the frames that were waiting for it, with their context set."""
        self.cache.put(log, now)
        released = self._waiting.pop(log.key, [])
        for frame in released:
            frame.context = log
        return released

    def expire(self, frame: Frame) -> bool:
        """The join window of ``frame`` ran out: True if it was still waiting (it goes on without context)."""
        waiting = self._waiting.get(frame.wafer_key)
        if not waiting or frame not in waiting:
            return False
        waiting.remove(frame)
        if not waiting:
            del self._waiting[frame.wafer_key]
        return True

    def release_all(self) -> list[Frame]:
        """Every waiting frame, without context (shutdown drain)."""
        frames = [f for waiting in self._waiting.values() for f in waiting]
        self._waiting.clear()
        return frames
