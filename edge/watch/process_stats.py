"""Running statistics of MES process parameters per recipe x tool (pure): which parameters of a wafer are anomalous.

Each key, (recipe_id, tool_id), keeps a count, a mean and a sum of squared deviations per parameter
(Welford's algorithm, vectorised over the recipe's parameter names), so a wafer costs O(parameters)
and nothing of a wafer is kept once it has been judged. A wafer is judged against the statistics of
the wafers before it, then folded in.

Two choices keep the judgement honest:

* A value that was flagged is not folded into its parameter's statistics: one excursion must not
  widen the spread that judges the next wafers (a 10-sigma wafer would otherwise lift the standard
  deviation enough to hide a following 4-sigma one). The price is that a lasting step in a parameter
  stays flagged until the key is ``reset``; a lasting step is what process drift reports anyway.
* A parameter with no spread so far (a setpoint logged at the same value on every wafer) is flagged
  only when a value differs from it, and its z-score is then capped at ``Z_CAP``: an infinite z is
  not JSON, and any finite z past the cap says the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.watch.state_codec import Exportable

Key = tuple[str, str]

Z_CAP = 99.0  # |z| reported for a value off a parameter that has shown no spread so far
_SAME_RTOL = 1e-9  # values this close to a spread-free mean count as the same value (float round trips)


class _KeyStats:
    """Welford state of one recipe x tool: count, mean and M2 per parameter, in first-seen name order."""

    __slots__ = ("count", "index", "m2", "mean", "names", "wafers")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.count = np.zeros(0, dtype=np.int64)
        self.mean = np.zeros(0, dtype=np.float64)
        self.m2 = np.zeros(0, dtype=np.float64)
        self.wafers = 0

    def positions(self, names: Sequence[str]) -> npt.NDArray[np.intp]:
        """Slots of ``names`` in the state arrays, adding slots for names not seen before."""
        new = [name for name in dict.fromkeys(names) if name not in self.index]
        if new:
            for name in new:
                self.index[name] = len(self.names)
                self.names.append(name)
            grow = len(new)
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros(grow)])
            self.m2 = np.concatenate([self.m2, np.zeros(grow)])
        return np.fromiter((self.index[name] for name in names), dtype=np.intp, count=len(names))

    def std(self, pos: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """Sample standard deviation at ``pos`` (NaN under two values)."""
        count = self.count[pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(count >= 2, self.m2[pos] / np.maximum(count - 1, 1), np.nan)
        std: npt.NDArray[np.float64] = np.sqrt(np.maximum(var, 0.0))
        return std

    def fold(self, pos: npt.NDArray[np.intp], x: npt.NDArray[np.float64]) -> None:
        """One Welford step for the values ``x`` at slots ``pos`` (distinct slots)."""
        if not pos.size:
            return
        self.count[pos] += 1
        delta = x - self.mean[pos]
        self.mean[pos] += delta / self.count[pos]
        self.m2[pos] += delta * (x - self.mean[pos])


def _as_float(value: object) -> float:
    """A finite float, or NaN for a missing, non-numeric or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _z_scores(
    x: npt.NDArray[np.float64], mean: npt.NDArray[np.float64], std: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """(x - mean) / std, with a spread-free parameter at 0 when unchanged and +/- ``Z_CAP`` when not."""
    diff = x - mean
    with np.errstate(invalid="ignore", divide="ignore"):
        z = diff / std
    flat = std == 0
    same = np.isclose(x, mean, rtol=_SAME_RTOL, atol=0.0)
    z = np.where(flat, np.where(same, 0.0, np.sign(diff) * Z_CAP), z)
    return np.clip(z, -Z_CAP, Z_CAP)


class ProcessStats(Exportable):
    """Per recipe x tool running statistics of process parameters; flags values at or over ``sigma``.

    A parameter is judged once ``min_wafers`` of its values have been folded in (so never before
    ``min_wafers`` wafers of the key were seen). Memory is one small state per key, and keys are
    bounded by the configured recipes and tools.
    """

    def __init__(self, sigma: float, min_wafers: int) -> None:
        if sigma <= 0:
            raise ValueError("sigma must be positive")
        if min_wafers < 2:
            raise ValueError("min_wafers must be at least 2 (a spread needs two values)")
        self.sigma = float(sigma)
        self.min_wafers = int(min_wafers)
        self._keys: dict[Key, _KeyStats] = {}
        self._classes = {"_KeyStats": _KeyStats}

    def _fits(self, state: _KeyStats) -> bool:
        n = len(state.names) if isinstance(state, _KeyStats) else -1
        return (
            n >= 0
            and state.index == {name: i for i, name in enumerate(state.names)}
            and state.count.shape == state.mean.shape == state.m2.shape == (n,)
        )

    def __len__(self) -> int:
        return len(self._keys)

    def observe(self, key: Key, names: Sequence[str], values: Mapping[str, object]) -> list[dict[str, Any]]:
        """The anomalous parameters of this wafer, then the wafer folded into the key's statistics.

        Returns ``[{"name", "value", "z"}]`` for the parameters with |z| >= sigma against the wafers
        before this one, most deviant first, z rounded to 2 decimals. Parameters missing from
        ``values`` (or not finite numbers) are skipped; flagged values are not folded in.
        """
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyStats()
        names = list(dict.fromkeys(names))
        pos = state.positions(names)
        x = np.fromiter((_as_float(values.get(name)) for name in names), dtype=np.float64, count=len(names))
        present = ~np.isnan(x)
        z = _z_scores(x, state.mean[pos], state.std(pos))
        judged = present & (state.count[pos] >= self.min_wafers)
        flagged = judged & (np.abs(z) >= self.sigma)
        fold = present & ~flagged
        state.fold(pos[fold], x[fold])
        state.wafers += 1
        return _report(names, x, z, flagged)

    def snapshot(self, key: Key) -> dict[str, Any]:
        """Diagnostics of one key: wafers seen, and count, mean and std by parameter name."""
        state = self._keys.get(key)
        if state is None:
            return {"wafers": 0, "count": {}, "mean": {}, "std": {}}
        pos = np.arange(len(state.names), dtype=np.intp)
        std = state.std(pos)
        return {
            "wafers": state.wafers,
            "count": {name: int(state.count[i]) for i, name in enumerate(state.names)},
            "mean": {name: float(state.mean[i]) for i, name in enumerate(state.names) if state.count[i]},
            "std": {name: float(std[i]) for i, name in enumerate(state.names) if not np.isnan(std[i])},
        }

    def reset(self, key: Key) -> None:
        """Forget a key's statistics (after a tool service or a recipe change): it relearns from the next wafer."""
        self._keys.pop(key, None)


def _report(
    names: Sequence[str], x: npt.NDArray[np.float64], z: npt.NDArray[np.float64], flagged: npt.NDArray[np.bool_]
) -> list[dict[str, Any]]:
    """Flagged parameters as JSON-ready dicts, by |z| descending (name breaks ties)."""
    order = sorted(np.flatnonzero(flagged), key=lambda i: (-abs(float(z[i])), names[i]))
    return [{"name": names[i], "value": float(x[i]), "z": round(float(z[i]), 2)} for i in order]
