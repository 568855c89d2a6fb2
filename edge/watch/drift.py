"""Drift per recipe x tool (pure): PASS anomaly scores and process parameters against a reference.

Both detectors take the first values after start (or after ``reset``) of a key as its reference and
compare a sliding window of the latest values with it. Each reports a ``Change`` only when its state
flips: it raises at its threshold and clears only under ``threshold * clear_ratio``, so a statistic
that hovers at the threshold does not flap.

* ``ScoreDrift``: two-sample Kolmogorov-Smirnov statistic between the reference scores and the
  window. Distribution-free, so it needs no model of the score distribution, and it sees a change of
  shape as well as a shift.
* ``ParamDrift`` (``edge.watch.param_drift``): per process parameter, the shift of the window mean in reference standard
  deviations, and the window/reference variance ratio; the largest shift drives the state.

Memory per key is fixed: the reference and the window live in preallocated numpy arrays, the window
as a ring (KS and means do not depend on order). Keys are bounded by the configured recipes and tools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.watch.state_codec import Exportable

Key = tuple[str, str]

SCORE = "score"
PROCESS = "process"

KS_EVERY = 10  # ScoreDrift recomputes KS on every this-many scores once its window is full


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


def next_state(raised: bool, statistic: float, threshold: float, clear_ratio: float) -> bool:
    """Hysteresis: raise at ``threshold``, stay raised until under ``threshold * clear_ratio``."""
    if raised:
        return statistic >= threshold * clear_ratio
    return statistic >= threshold


def check_sizes(reference: int, window: int, threshold: float, clear_ratio: float) -> None:
    if reference < 2 or window < 2:
        raise ValueError("reference and window need at least two values each")
    if threshold <= 0:
        raise ValueError("threshold must be positive")
    if not 0 < clear_ratio <= 1:
        raise ValueError("clear_ratio must be in (0, 1]")


def as_float(value: object) -> float:
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


def ring_fits(ring: _Ring, shape: tuple[int, ...]) -> bool:
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


class Detector(Exportable):
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


class ScoreDrift(Detector):
    """KS drift of PASS anomaly scores per key: the first ``reference`` scores against the last ``window``.

    Feed it the scores of PASS frames only: defects would move the distribution by themselves. Once
    the window is full, KS is recomputed on every ``every``-th score (O(window log window) each), so
    a raise or a clear comes at most ``every - 1`` scores late; ``statistic`` is the last computed value.
    """

    kind = SCORE

    def __init__(
        self, reference: int, window: int, threshold: float, clear_ratio: float, every: int = KS_EVERY
    ) -> None:
        check_sizes(reference, window, threshold, clear_ratio)
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
            and ring_fits(state.window, (self.window,))
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
        raised = next_state(state.raised, state.statistic, self.threshold, self.clear_ratio)
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
