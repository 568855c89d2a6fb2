"""Threshold and band tables keyed by recipe x tool (x class), with wildcard fall-back.

Lookup order: (recipe, tool), (recipe, *), (*, tool), (*, *), then the table's default.
Pure data; the adaptive controller updates entries, the decision rule only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WILDCARD = "*"
MIN_THRESHOLD = 0.50
MAX_THRESHOLD = 0.95


def _candidates(recipe: str, tool: str) -> tuple[tuple[str, str], ...]:
    return ((recipe, tool), (recipe, WILDCARD), (WILDCARD, tool), (WILDCARD, WILDCARD))


@dataclass(frozen=True, slots=True)
class Bands:
    """Anomaly score bands: under ``pass_band`` is normal; at or over ``reject_band`` is anomalous."""

    pass_band: float
    reject_band: float

    def __post_init__(self) -> None:
        if not 0 <= self.pass_band < self.reject_band:
            raise ValueError(f"bands must satisfy 0 <= pass < reject, got {self.pass_band}, {self.reject_band}")

    def name(self, score: float) -> str:
        if score >= self.reject_band:
            return "REJECT"
        return "PASS" if score < self.pass_band else "MARGINAL"


@dataclass
class ThresholdTable:
    default: float
    entries: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for value in (self.default, *self.entries.values()):
            _check_threshold(value)

    def set(self, recipe: str, tool: str, defect_class: str, threshold: float) -> None:
        self.entries[(recipe, tool, defect_class)] = _check_threshold(threshold)

    def get(self, recipe: str, tool: str, defect_class: str) -> float:
        for r, t in _candidates(recipe, tool):
            value = self.entries.get((r, t, defect_class))
            if value is not None:
                return value
        return self.default


@dataclass
class BandTable:
    default: Bands
    entries: dict[tuple[str, str], Bands] = field(default_factory=dict)

    def get(self, recipe: str, tool: str) -> Bands:
        for key in _candidates(recipe, tool):
            if key in self.entries:
                return self.entries[key]
        return self.default


def _check_threshold(value: float) -> float:
    if not MIN_THRESHOLD <= value <= MAX_THRESHOLD:
        raise ValueError(f"threshold {value} is outside the hard bounds {MIN_THRESHOLD}..{MAX_THRESHOLD}")
    return value
