"""Drift per recipe x tool (pure): PASS anomaly scores and process parameters against a reference.

Both detectors take the first values after start (or after ``reset``) of a key as its reference and
compare a sliding window of the latest values with it. Each reports a ``Change`` only when its state
flips: it raises at its threshold and clears only under ``threshold * clear_ratio``, so a statistic
that hovers at the threshold does not flap.

* ``ScoreDrift``: two-sample Kolmogorov-Smirnov statistic between the reference scores and the
  window. Distribution-free, so it needs no model of the score distribution, and it sees a change of
  shape as well as a shift.
* ``ParamDrift``: per process parameter, the shift of the window mean in reference standard
  deviations, and the window/reference variance ratio; the largest shift drives the state.

Memory per key is fixed: the reference and the window live in preallocated numpy arrays, the window
as a ring (KS and means do not depend on order). Keys are bounded by the configured recipes and tools.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.watch.state_codec import Exportable

Key = tuple[str, str]

SCORE = "score"
PROCESS = "process"

KS_EVERY = 10  # ScoreDrift recomputes KS on every this-many scores once its window is full
STD_REL_FLOOR = 1e-3  # reference std is at least this share of |reference mean| ...
STD_ABS_FLOOR = 1e-9  # ... and at least this, for a parameter constant at zero
TOP_PARAMETERS = 5  # parameters listed in a process drift change


@dataclass(frozen=True)
class Change:
    """A drift state flip of one key: ``raised`` True when drift starts, False when it clears."""

    key: Key
    kind: str  # SCORE or PROCESS
    raised: bool
    statistic: float  # KS statistic (score) or largest shift in reference sigmas (process)
    detail: dict[str, Any] = field(default_factory=dict)


def ks_statistic(
    a: Sequence[float] | npt.NDArray[np.floating[Any]], b: Sequence[float] | npt.NDArray[np.floating[Any]]
) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest distance between the empirical CDFs.

    Exact with ties (both CDFs are evaluated at every observed value, right-continuous), in
    O((n + m) log(n + m)). Both samples must be non-empty and finite.
    """
    x = np.sort(np.asarray(a, dtype=np.float64).ravel())
    y = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if not x.size or not y.size:
        raise ValueError("both samples must be non-empty")
    return _ks_sorted(x, y)


def _ks_sorted(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    """KS statistic of two sorted samples: the CDFs only step at observed values, so those suffice."""
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / x.size
    cdf_y = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(cdf_x - cdf_y)))


def _next_state(raised: bool, statistic: float, threshold: float, clear_ratio: float) -> bool:
    """Hysteresis: raise at ``threshold``, stay raised until under ``threshold * clear_ratio``."""
    if raised:
        return statistic >= threshold * clear_ratio
    return statistic >= threshold


def _check(reference: int, window: int, threshold: float, clear_ratio: float) -> None:
    if reference < 2 or window < 2:
        raise ValueError("reference and window need at least two values each")
    if threshold <= 0:
        raise ValueError("threshold must be positive")
    if not 0 < clear_ratio <= 1:
        raise ValueError("clear_ratio must be in (0, 1]")


def _as_float(value: object) -> float:
    """A finite float, or NaN for a missing, non-numeric or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


class _Ring:
    """The last ``size`` values (or rows of ``width``) in a preallocated array, in no particular order."""

    __slots__ = ("data", "filled", "next")

    def __init__(self, size: int, width: int | None = None) -> None:
        self.data = np.empty(size if width is None else (size, width), dtype=np.float64)
        self.filled = 0
        self.next = 0

    @property
    def full(self) -> bool:
        return self.filled == len(self.data)

    def push(self, value: float | npt.NDArray[np.float64]) -> None:
        self.data[self.next] = value
        self.next = (self.next + 1) % len(self.data)
        self.filled = min(self.filled + 1, len(self.data))

    def values(self) -> npt.NDArray[np.float64]:
        return self.data if self.full else self.data[: self.filled]


def _ring_fits(ring: _Ring, shape: tuple[int, ...]) -> bool:
    return (
        isinstance(ring, _Ring)
        and ring.data.shape == shape
        and 0 <= ring.filled <= shape[0]
        and 0 <= ring.next < shape[0]
    )


# --- anomaly scores ---------------------------------------------------------------------------------


class _ScoreState:
    __slots__ = ("raised", "reference", "seen", "since", "statistic", "window")

    def __init__(self, reference: int, window: int) -> None:
        self.reference = np.empty(reference, dtype=np.float64)  # sorted once full
        self.seen = 0  # reference scores taken so far
        self.window = _Ring(window)
        self.since = 0  # window scores since the last KS
        self.statistic: float | None = None
        self.raised = False


class _Detector(Exportable):
    """What both detectors share: per-key state with a ``raised`` flag, re-baselining, and states that
    outlive a restart (``export`` / ``restore``), so a restart does not quietly take a drifted tool
    as its new reference."""

    kind = ""
    _keys: dict[Key, Any]

    def raised(self, key: Key) -> bool:
        state = self._keys.get(key)
        return state is not None and state.raised

    def reset(self, key: Key) -> Change | None:
        """Re-baseline ``key`` (after a tool service): what comes next forms a new reference.

        Returns a clearing ``Change`` when the key was raised, so the caller can publish the clear.
        """
        state = self._keys.pop(key, None)
        if state is None or not state.raised:
            return None
        return Change(key, self.kind, False, self._last_statistic(state), {"reset": True})

    def _last_statistic(self, state: Any) -> float:
        raise NotImplementedError


class ScoreDrift(_Detector):
    """KS drift of PASS anomaly scores per key: the first ``reference`` scores against the last ``window``.

    Feed it the scores of PASS frames only: defects would move the distribution by themselves. Once
    the window is full, KS is recomputed on every ``every``-th score (O(window log window) each), so
    a raise or a clear comes at most ``every - 1`` scores late; ``statistic`` is the last computed value.
    """

    kind = SCORE

    def __init__(
        self, reference: int, window: int, threshold: float, clear_ratio: float, every: int = KS_EVERY
    ) -> None:
        _check(reference, window, threshold, clear_ratio)
        if every < 1:
            raise ValueError("every must be at least 1")
        self.reference, self.window, self.every = int(reference), int(window), int(every)
        self.threshold, self.clear_ratio = float(threshold), float(clear_ratio)
        self._keys: dict[Key, _ScoreState] = {}
        self._classes = {"_ScoreState": _ScoreState, "_Ring": _Ring}

    def _fits(self, state: _ScoreState) -> bool:
        return (
            isinstance(state, _ScoreState)
            and state.reference.shape == (self.reference,)
            and 0 <= state.seen <= self.reference
            and _ring_fits(state.window, (self.window,))
        )

    def add(self, key: Key, score: float) -> Change | None:
        """Take one PASS score; a ``Change`` when the key's drift state flips, else None.

        Non-finite scores are ignored. Scores taken into the reference are not in the window.
        """
        if not math.isfinite(score):
            return None
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _ScoreState(self.reference, self.window)
        if state.seen < self.reference:
            state.reference[state.seen] = score
            state.seen += 1
            if state.seen == self.reference:
                state.reference.sort()
            return None
        state.window.push(score)
        state.since += 1
        if not state.window.full or (state.statistic is not None and state.since < self.every):
            return None
        state.since = 0
        window = np.sort(state.window.values())
        state.statistic = _ks_sorted(state.reference, window)
        return self._settle(key, state, window)

    def _settle(self, key: Key, state: _ScoreState, window: npt.NDArray[np.float64]) -> Change | None:
        assert state.statistic is not None
        raised = _next_state(state.raised, state.statistic, self.threshold, self.clear_ratio)
        if raised == state.raised:
            return None
        state.raised = raised
        detail = {
            "threshold": self.threshold,
            "clear_below": self.threshold * self.clear_ratio,
            "reference_median": float(np.median(state.reference)),
            "window_median": float(np.median(window)),
            "reference": self.reference,
            "window": self.window,
        }
        return Change(key, SCORE, raised, state.statistic, detail)

    def statistic(self, key: Key) -> float | None:
        """KS statistic as last computed for ``key``; None until its window has filled."""
        state = self._keys.get(key)
        return None if state is None else state.statistic

    def _last_statistic(self, state: _ScoreState) -> float:
        return state.statistic or 0.0


# --- process parameters -----------------------------------------------------------------------------


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


class ParamDrift(_Detector):
    """Process-parameter drift per key: the first ``reference`` wafers against the last ``window``.

    The shift of a parameter is |mean_window - mean_ref| / std_ref (std_ref floored, see
    ``_floored_std``); its variance ratio is var_window / std_ref². A parameter is judged when it is
    present in at least half of the reference and of the window. The parameter list of a key is the
    ``names`` of its first wafer; names added later are ignored until ``reset``. Evaluation runs on
    every wafer once the window is full, O(window * parameters): wafers come minutes apart.
    """

    kind = PROCESS

    def __init__(self, reference: int, window: int, shift_sigma: float, clear_ratio: float) -> None:
        _check(reference, window, shift_sigma, clear_ratio)
        self.reference, self.window = int(reference), int(window)
        self.shift_sigma, self.clear_ratio = float(shift_sigma), float(clear_ratio)
        self._keys: dict[Key, _ParamState] = {}
        self._classes = {"_ParamState": _ParamState, "_Ring": _Ring}

    def _fits(self, state: _ParamState) -> bool:
        if not isinstance(state, _ParamState) or not all(isinstance(n, str) for n in state.names):
            return False
        width = len(state.names)
        return (
            _ring_fits(state.window, (self.window, width))
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
        row = np.array([_as_float(values.get(n)) if n in given else math.nan for n in state.names])
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
        raised = _next_state(state.raised, largest, self.shift_sigma, self.clear_ratio)
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
