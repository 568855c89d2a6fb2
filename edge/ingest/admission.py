"""Admission (pure): which accepted-but-unanswered frames the daemon holds, and whether a new one may join.

A frame is turned away with ``busy`` (and a retry hint) when the daemon is shutting down, when the
outbox is at its disk quota, when the station holds its limit of frames, or when the sending tool
holds its own share: a tool that floods the intake waits for its own frames, never for another's.

The retry hint follows the load. A tool held at its share gets a slot back only as its own frames
are answered, so resending sooner than their turnaround only costs the intake a receive and a parse
per try; the hint is about one turnaround of that tool's frames (of all frames, for a full station),
jittered so the many frames of a flood do not come back at once, and bounded by the configured
floor and ceiling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar, get_args


class _Keyed(Protocol):
    @property
    def key(self) -> tuple[str, str]: ...


F = TypeVar("F", bound=_Keyed)

BusyReason = Literal["shutting_down", "outbox_full", "queue_full", "tool_share_full"]
BUSY_REASONS: tuple[BusyReason, ...] = get_args(BusyReason)


@dataclass(frozen=True, slots=True)
class Limits:
    station: int  # frames held at once, all tools together
    per_tool: int  # frames one tool may hold at once


class Inflight(Generic[F]):
    """Frames accepted and not yet answered, by (tool_id, frame_id), with a count per tool."""

    def __init__(self) -> None:
        self._frames: dict[tuple[str, str], F] = {}
        self._per_tool: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._frames

    def __iter__(self) -> Iterator[F]:
        return iter(list(self._frames.values()))

    def get(self, key: tuple[str, str]) -> F | None:
        return self._frames.get(key)

    def held_by(self, tool: str) -> int:
        return self._per_tool[tool]

    def add(self, frame: F) -> None:
        if frame.key not in self._frames:
            self._per_tool[frame.key[0]] += 1
        self._frames[frame.key] = frame

    def pop(self, key: tuple[str, str]) -> F | None:
        frame = self._frames.pop(key, None)
        if frame is not None:
            self._per_tool[key[0]] -= 1
            if not self._per_tool[key[0]]:
                del self._per_tool[key[0]]
        return frame


def busy_reason(
    held: int, held_by_tool: int, limits: Limits, *, accepting: bool, outbox_full: bool
) -> BusyReason | None:
    """Why a new frame must wait (one of ``BUSY_REASONS``), or None when it may join."""
    if not accepting:
        return "shutting_down"
    if outbox_full:
        return "outbox_full"
    if held >= limits.station:
        return "queue_full"
    if held_by_tool >= limits.per_tool:
        return "tool_share_full"
    return None


def per_tool_share(station_limit: int, n_tools: int, max_batch: int) -> int:
    """Default share of one tool: an equal part of the station limit, never less than one batch."""
    return min(station_limit, max(max_batch, station_limit // max(n_tools, 1)))


class Turnaround:
    """Running mean (exponentially weighted) of accept-to-answer time, per tool and for the station."""

    STATION = ""

    def __init__(self, weight: float = 0.2) -> None:
        if not 0 < weight <= 1:
            raise ValueError("weight must be in (0, 1]")
        self.weight = weight
        self._mean: dict[str, float] = {}

    def observe(self, tool: str, seconds: float) -> None:
        for key in (tool, self.STATION):
            before = self._mean.get(key)
            self._mean[key] = seconds if before is None else before + self.weight * (seconds - before)

    def seconds(self, tool: str = STATION) -> float | None:
        return self._mean.get(tool)


def retry_after_ms(
    reason: BusyReason, turnaround_s: float | None, floor_ms: int, ceiling_ms: int, jitter: float
) -> int:
    """The retry hint for a busy reply: ``turnaround_s x jitter`` (jitter drawn from [0.5, 1.5)) within
    [floor, ceiling] when the tool or station is at its limit, else the floor (outbox full, shutting down:
    their end does not follow from the frames' turnaround)."""
    if reason not in ("tool_share_full", "queue_full") or not turnaround_s:
        return floor_ms
    return int(max(floor_ms, min(ceiling_ms, turnaround_s * 1000 * jitter)))
