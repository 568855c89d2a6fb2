"""Joining frames with their wafer's MES process log (DESIGN 3.2). Pure: the caller owns the clock
and the timers; this only decides which frames may go on, and with what context.

A frame whose log is not known waits at most the join window. A log that is not coming must not cost that window
again and again:

- once a wafer's window has run out without its log, the wafer's other waiting frames go on with it and its later
  frames do not wait (``WAFER_EXPIRED``; the wafers remembered are bounded, the oldest forgotten first);
- once ``silent_after`` wafers of a tool in a row ran out without a log, the tool's MES counts as silent: none of
  its frames waits (``TOOL_SILENT``) until a log of that tool arrives.

A log that comes late is stored as always: the wafer's later frames get it, and a log of a silent tool ends the
silence. The caller counts the frames that went on without waiting and shows the silent tools.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Literal

from edge.flow import Frame, ProcessLog
from edge.mes.context import ContextCache

WaferKey = tuple[str, str, str]
Admission = Literal["joined", "waiting", "no_wait", "wafer_expired", "tool_silent"]
WAFER_EXPIRED: Admission = "wafer_expired"
TOOL_SILENT: Admission = "tool_silent"
SKIPPED: tuple[Admission, ...] = (WAFER_EXPIRED, TOOL_SILENT)  # went on at once: no log is expected
REMEMBERED_WAFERS = 4096


class Joiner:
    def __init__(self, cache: ContextCache, silent_after: int = 2, remembered: int = REMEMBERED_WAFERS) -> None:
        self.cache = cache
        self.silent_after = silent_after
        self._remembered = remembered
        self._waiting: dict[WaferKey, list[Frame]] = defaultdict(list)
        self._expired: OrderedDict[WaferKey, None] = OrderedDict()  # wafers whose window ran out with no log
        self._misses: dict[str, int] = defaultdict(int)  # tool -> wafers in a row that ran out with no log
        self.silent: set[str] = set()  # tools whose MES is silent: their frames do not wait

    def __len__(self) -> int:
        return sum(len(frames) for frames in self._waiting.values())

    def admit(self, frame: Frame, now: float, wait: bool) -> Admission:
        """How the frame goes on: ``waiting`` when it now waits for its log (only with ``wait``; ``on_log`` or
        ``expire`` releases it later), else at once, its context set if known (``joined``), without waiting
        (``no_wait``), or without context because its log is not expected (``WAFER_EXPIRED``, ``TOOL_SILENT``)."""
        frame.context = self.cache.get(frame.wafer_key, now)
        if frame.context is not None:
            return "joined"
        if not wait:
            return "no_wait"
        if frame.wafer_key in self._expired:
            return WAFER_EXPIRED
        if frame.header.tool_id in self.silent:
            return TOOL_SILENT
        self._waiting[frame.wafer_key].append(frame)
        return "waiting"

    def on_log(self, log: ProcessLog, now: float) -> list[Frame]:
        """Store a process log; the frames that were waiting for it, with their context set. The tool's MES is
        heard again: its frames wait for their logs from now on."""
        self.cache.put(log, now)
        self._expired.pop(log.key, None)
        self._misses[log.tool_id] = 0
        self.silent.discard(log.tool_id)
        released = self._waiting.pop(log.key, [])
        for frame in released:
            frame.context = log
        return released

    def expire(self, frame: Frame) -> list[Frame]:
        """The join window of ``frame`` ran out. If it was still waiting: it, and every frame of its wafer still
        waiting (the log did not come in the first frame's window; the others need not wait out theirs), and every
        waiting frame of its tool when this makes the tool's MES silent. Nothing when it was already released."""
        key = frame.wafer_key
        waiting = self._waiting.get(key)
        if not waiting or frame not in waiting:
            return []
        released = self._waiting.pop(key)
        self._expired[key] = None
        self._expired.move_to_end(key)
        while len(self._expired) > self._remembered:
            self._expired.popitem(last=False)
        tool = frame.header.tool_id
        self._misses[tool] += 1
        if self._misses[tool] >= self.silent_after and tool not in self.silent:
            self.silent.add(tool)
            for other in [k for k, frames in self._waiting.items() if frames[0].header.tool_id == tool]:
                released.extend(self._waiting.pop(other))
        return released

    def release_all(self) -> list[Frame]:
        """Every waiting frame, without context (shutdown drain)."""
        frames = [f for waiting in self._waiting.values() for f in waiting]
        self._waiting.clear()
        return frames
