"""What an engineer does to a class's calibration state, whichever controller runs it (the seed rule or the
statistical one): a threshold of their own (held for some lots, or not), a lock released, new settings. Pure."""

from __future__ import annotations

from dataclasses import replace

from calibration.controller import ADJUSTING, LOCKED, ClassSettings, ClassState
from calibration.statistical_controller import StatState

State = ClassState | StatState


def override(state: State, threshold: float, lock_lots: int) -> State:
    """An engineer's value, held for ``lock_lots`` lots (0: not locked, the controller continues from it)."""
    if not state.settings.lower <= threshold <= state.settings.upper:
        raise ValueError(f"threshold {threshold} is outside the bounds {state.settings.lower}..{state.settings.upper}")
    if lock_lots < 0:
        raise ValueError("lock_lots must be >= 0")
    if lock_lots == 0:
        return replace(state, threshold=threshold)
    return replace(state, threshold=threshold, status=LOCKED, lock_until=state.lots_seen + lock_lots)


def unlock(state: State) -> State:
    if state.status != LOCKED:
        return state
    return replace(state, status=ADJUSTING, lock_until=None)


def with_settings(state: State, settings: ClassSettings) -> State:
    """New engineer settings; the threshold is pulled inside the new bounds."""
    return replace(state, settings=settings, threshold=settings.clamp(state.threshold))
