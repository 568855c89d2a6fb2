"""Open wafers per tool, and when each one ends (pure; the clock is passed in).

A wafer ends when the MES says so (``wafer_end``), when its lot ends, when its tool starts another
wafer, or when no die of it came for ``idle_s``. It is summarised once it ended, none of its frames
is in work and no die of it came for ``grace_s`` (an MES message may overtake the tool's last
frames), so a summary covers the whole wafer. A die that still comes after its wafer was summarised
is reported by ``add`` (returns False) and left out: a wafer gets one summary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.flow import WaferKey
from edge.watch.wafer_map import DieResult


@dataclass
class OpenWafer:
    key: WaferKey
    recipe_id: str
    last_die: float  # monotonic seconds
    dies: dict[tuple[int, int], DieResult] = field(default_factory=dict)
    ended_by: str | None = None  # why it ends: wafer_end | lot_end | next_wafer | idle

    @property
    def tool_id(self) -> str:
        return self.key[0]


class WaferTracker:
    def __init__(self, remember: int = 4096) -> None:
        self._open: dict[WaferKey, OpenWafer] = {}
        self._current: dict[str, WaferKey] = {}  # tool -> the wafer it sent last
        self._closed: OrderedDict[WaferKey, None] = OrderedDict()  # the last ``remember`` summarised wafers
        self._remember = remember

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: WaferKey, recipe_id: str, die: DieResult, now: float) -> bool:
        """Record a die's result; the first die of a new wafer ends the tool's previous one (a straggler of an
        open wafer, say a resend after ``busy``, ends nothing). False for a die of a wafer already summarised
        (left out)."""
        if key in self._closed:
            return False
        wafer = self._open.get(key)
        if wafer is None:
            wafer = self._open[key] = OpenWafer(key, recipe_id, now)
            previous = self._current.get(key[0])
            if previous is not None:
                self._end(previous, "next_wafer")
            self._current[key[0]] = key
        wafer.dies[(die.x, die.y)] = die  # a die inspected again: its last result counts
        wafer.last_die = now
        return True

    def end_wafer(self, key: WaferKey, why: str = "wafer_end") -> list[WaferKey]:
        """The wafer ends, if it is open and did not end yet; the keys that ended now."""
        return [key] if self._end(key, why) else []

    def end_lot(self, tool_id: str, lot_id: str) -> list[WaferKey]:
        return [key for key in self._open if key[:2] == (tool_id, lot_id) and self._end(key, "lot_end")]

    def due(self, now: float, idle_s: float, grace_s: float, in_work: Callable[[WaferKey], bool]) -> list[OpenWafer]:
        """Wafers that ended (or sat idle ``idle_s``), quiet for ``grace_s`` with no frame in work: removed
        and returned."""
        out = []
        for key, wafer in list(self._open.items()):
            quiet = now - wafer.last_die
            if wafer.ended_by is None and quiet >= idle_s:
                wafer.ended_by = "idle"
            if wafer.ended_by is not None and quiet >= grace_s and not in_work(key):
                out.append(self._pop(key))
        return out

    def close_ended(self) -> list[OpenWafer]:
        """The wafers that ended, without waiting for their grace (the daemon is stopping, no frame is in
        work); the others stay open, to go on after the restart."""
        return [self._pop(key) for key, wafer in list(self._open.items()) if wafer.ended_by is not None]

    def _end(self, key: WaferKey, why: str) -> bool:
        wafer = self._open.get(key)
        if wafer is None or wafer.ended_by is not None:
            return False
        wafer.ended_by = why
        return True

    def _pop(self, key: WaferKey) -> OpenWafer:
        if self._current.get(key[0]) == key:
            del self._current[key[0]]
        self._closed[key] = None
        if len(self._closed) > self._remember:
            self._closed.popitem(last=False)
        return self._open.pop(key)
