"""Process-parameter drift per recipe x tool (pure): per parameter, the shift of the window mean in reference
standard deviations and the window/reference variance ratio; the largest shift drives the state, which raises at
``shift_sigma`` and clears under ``shift_sigma * clear_ratio`` (``edge.watch.drift`` holds what both detectors
share: the reference, the window ring, the state flips and their export)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.watch.drift import PROCESS, Change, Detector, Key, _Ring, as_float, check_sizes, next_state, ring_fits

STD_REL_FLOOR = 1e-3  # reference std is at least this share of |reference mean| ...
STD_ABS_FLOOR = 1e-9  # ... and at least this, for a parameter constant at zero
TOP_PARAMETERS = 5  # parameters listed in a process drift change


def _column_stats(
    rows: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.int_], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Count, mean and sample variance per column, NaN meaning missing (mean/var NaN when too few)."""
    present = ~np.isnan(rows)
    count = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, rows, 0.0).sum(axis=0) / count
        dev = np.where(present, rows - mean, 0.0)
        var = (dev * dev).sum(axis=0) / (count - 1)
    var = np.where(count >= 2, var, np.nan)
    return count, mean, var


def _floored_std(mean: npt.NDArray[np.float64], var: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Reference std floored at ``STD_REL_FLOOR * |mean|`` and ``STD_ABS_FLOOR``.

    A parameter held at a setpoint has (near) zero spread; without a floor any change of it would be
    an infinite shift. With it, moving a constant setpoint by 0.1 % of its value is one sigma.
    """
    floor = np.maximum(STD_REL_FLOOR * np.abs(mean), STD_ABS_FLOOR)
    std: npt.NDArray[np.float64] = np.maximum(np.sqrt(var), floor)
    return std


def _enough(n: int) -> int:
    """Values a parameter needs among ``n`` wafers to be judged: half of them, and at least two."""
    return max(2, math.ceil(n / 2))


class _ParamState:
    __slots__ = (
        "names",
        "raised",
        "ref_mean",
        "ref_rows",
        "ref_std",
        "seen",
        "shift",
        "var_ratio",
        "window",
        "window_mean",
    )

    def __init__(self, names: Sequence[str], reference: int, window: int) -> None:
        self.names = list(names)
        self.ref_rows: npt.NDArray[np.float64] | None = np.full((reference, len(self.names)), np.nan)
        self.seen = 0
        self.ref_mean = np.full(len(self.names), np.nan)
        self.ref_std = np.full(len(self.names), np.nan)
        self.window = _Ring(window, len(self.names))
        self.shift: npt.NDArray[np.float64] | None = None  # NaN where a parameter is not judged
        self.var_ratio: npt.NDArray[np.float64] | None = None
        self.window_mean: npt.NDArray[np.float64] | None = None
        self.raised = False


class ParamDrift(Detector):
    """Process-parameter drift per key: the first ``reference`` wafers against the last ``window``.

    The shift of a parameter is |mean_window - mean_ref| / std_ref (std_ref floored, see
    ``_floored_std``); its variance ratio is var_window / std_ref². A parameter is judged when it is
    present in at least half of the reference and of the window. The parameter list of a key is the
    ``names`` of its first wafer; names added later are ignored until ``reset``. Evaluation runs on
    every wafer once the window is full, O(window * parameters): wafers come minutes apart.
    """

    kind = PROCESS

    def __init__(self, reference: int, window: int, shift_sigma: float, clear_ratio: float) -> None:
        check_sizes(reference, window, shift_sigma, clear_ratio)
        self.reference, self.window = int(reference), int(window)
        self.shift_sigma, self.clear_ratio = float(shift_sigma), float(clear_ratio)
        self._keys: dict[Key, _ParamState] = {}
        self._classes = {"_ParamState": _ParamState, "_Ring": _Ring}

    def _fits(self, state: _ParamState) -> bool:
        if not isinstance(state, _ParamState) or not all(isinstance(n, str) for n in state.names):
            return False
        width = len(state.names)
        return (
            ring_fits(state.window, (self.window, width))
            and state.ref_mean.shape == (width,)
            and (state.ref_rows is None or state.ref_rows.shape == (self.reference, width))
            and 0 <= state.seen <= self.reference
        )

    def add(self, key: Key, names: Sequence[str], values: Mapping[str, object]) -> Change | None:
        """Take one wafer's process parameters; a ``Change`` when the key's drift state flips, else None.

        A wafer with none of the parameters (missing, non-numeric or non-finite) is ignored.
        """
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _ParamState(list(dict.fromkeys(names)), self.reference, self.window)
        given = set(names)
        row = np.array([as_float(values.get(n)) if n in given else math.nan for n in state.names])
        if np.isnan(row).all():
            return None
        if state.ref_rows is not None:
            self._take_reference(state, row)
            return None
        state.window.push(row)
        if not state.window.full:
            return None
        self._evaluate(state)
        return self._settle(key, state)

    def _take_reference(self, state: _ParamState, row: npt.NDArray[np.float64]) -> None:
        assert state.ref_rows is not None
        state.ref_rows[state.seen] = row
        state.seen += 1
        if state.seen < self.reference:
            return
        count, mean, var = _column_stats(state.ref_rows)
        judged = count >= _enough(self.reference)
        state.ref_mean = np.where(judged, mean, np.nan)
        state.ref_std = np.where(judged, _floored_std(mean, var), np.nan)
        state.ref_rows = None  # the reference rows are not needed any more

    def _evaluate(self, state: _ParamState) -> None:
        count, mean, var = _column_stats(state.window.values())
        judged = (count >= _enough(self.window)) & ~np.isnan(state.ref_mean)
        with np.errstate(invalid="ignore"):
            state.shift = np.where(judged, np.abs(mean - state.ref_mean) / state.ref_std, np.nan)
            state.var_ratio = np.where(judged, var / (state.ref_std * state.ref_std), np.nan)
        state.window_mean = mean

    def _settle(self, key: Key, state: _ParamState) -> Change | None:
        top = self._top(state)
        largest = top[0]["shift"] if top else 0.0
        raised = next_state(state.raised, largest, self.shift_sigma, self.clear_ratio)
        if raised == state.raised:
            return None
        state.raised = raised
        detail = {"shift_sigma": self.shift_sigma, "clear_below": self.shift_sigma * self.clear_ratio, "top": top}
        return Change(key, PROCESS, raised, largest, detail)

    def _top(self, state: _ParamState) -> list[dict[str, Any]]:
        """The most shifted judged parameters, most shifted first, at most ``TOP_PARAMETERS``."""
        if state.shift is None or state.var_ratio is None or state.window_mean is None:
            return []
        shift = np.where(np.isnan(state.shift), -1.0, state.shift)
        order = [int(i) for i in np.argsort(-shift, kind="stable")[:TOP_PARAMETERS] if shift[i] >= 0]
        return [
            {
                "name": state.names[i],
                "shift": float(state.shift[i]),
                "var_ratio": float(state.var_ratio[i]),
                "reference_mean": float(state.ref_mean[i]),
                "window_mean": float(state.window_mean[i]),
            }
            for i in order
        ]

    def largest(self, key: Key) -> tuple[str, float] | None:
        """The most shifted parameter and its shift; None until the key's window has filled."""
        state = self._keys.get(key)
        top = self._top(state) if state is not None else []
        return (top[0]["name"], top[0]["shift"]) if top else None

    def _last_statistic(self, state: _ParamState) -> float:
        top = self._top(state)
        return top[0]["shift"] if top else 0.0
