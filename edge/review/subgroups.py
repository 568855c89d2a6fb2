"""The subgroup audit (pure): escape and false-positive rates from reviewed dies, sliced by tool, chamber, shift,
wafer zone, note present, process log present and model version, each slice with a Wilson 95% interval and an exact
test against the rest of its dimension.

Two rates, each over the reviews that can show it (the reader, ``edge.review.subgroup_records``, sorts them):

- **escape rate** per reviewed AUDIT sample (a suppressed pass sent for review, DESIGN 3.5): an error is a sample
  the reviewer says shows a defect (any label but GOOD: real, a relabel to a defect class, novel);
- **false-positive rate** per reviewed flagged die (a DEFECT or REVIEW event): an error is a die the reviewer says
  shows no defect (label GOOD: a ``false`` disposition or a relabel to GOOD).

Both are per die, as the reviewer's label says, not per class: a flagged die relabelled to another defect class is
a wrong class but a real defect, so it is no false positive here (the per-class controller counts it against its
class, DESIGN 3.7).

Each slice with at least ``min_n`` reviews, whose rest of the dimension has as many, is tested against that rest
with a two-sided Fisher exact test (the ``minlike`` p of ``scipy.stats.fisher_exact``, computed here in pure Python
so the station needs no SciPy; the tests check it against SciPy). The p values of every slice tested, both rates and
every dimension together, are corrected for multiple testing (Holm by default, which holds the chance of any false
flag under ``alpha``; Benjamini-Hochberg on request, which holds the expected share of false flags). A slice is
flagged when its corrected p is under ``alpha``. In a dimension of two slices both test the same table: it counts
once. Smaller slices are shown with their interval, untested.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from edge.watch.wafer_map import CENTER_ZONE, EDGE_ZONE

ESCAPE, FALSE_POSITIVE = "escape", "false_positive"
RATES = {
    ESCAPE: "escape rate: reviewed AUDIT samples (suppressed passes) the reviewer says show a defect",
    FALSE_POSITIVE: "false-positive rate: reviewed flagged dies (DEFECT, REVIEW) the reviewer says show none (GOOD)",
}
DIMENSIONS = ("tool", "chamber", "shift", "zone", "notes", "process_log", "model")
UNKNOWN = "unknown"  # a slice attribute nothing recorded
PRESENT, ABSENT = "present", "absent"
CENTRE, MIDDLE, EDGE = "centre", "middle", "edge"
ZONES = (  # a die's zone by its normalised radius (0 centre, about 1 the outermost dies): the wafer map's zones
    f"centre: r < {CENTER_ZONE}",
    f"middle: {CENTER_ZONE} <= r <= {EDGE_ZONE}",
    f"edge: r > {EDGE_ZONE}",
)
HOLM, BH = "holm", "bh"
CORRECTIONS = (HOLM, BH)
DEFAULT_SHIFTS = "06:00,14:00,22:00"  # three 8-hour shifts, the first at 06:00 local time
Z95 = 1.959963984540054  # the standard normal quantile of 0.975
_TIES = 1e-7  # relative tolerance of "as or less likely" in the exact test (SciPy's)


@dataclass(frozen=True, slots=True)
class Reviewed:
    """One reviewed die: the rate it counts in, whether it is an error of that rate, and its slice per dimension."""

    kind: str  # ESCAPE (an AUDIT sample) or FALSE_POSITIVE (a flagged die)
    error: bool
    slices: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Rate:
    """``errors`` of ``n`` with the Wilson 95% interval (None for no review)."""

    n: int
    errors: int

    @property
    def rate(self) -> float | None:
        return self.errors / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.errors, self.n) if self.n else None

    def as_dict(self) -> dict[str, Any]:
        interval = self.interval
        return {"n": self.n, "errors": self.errors, "rate": self.rate,
                "interval": list(interval) if interval else None}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Slice:
    """One slice of a dimension against the rest of it."""

    kind: str
    dimension: str
    value: str
    counts: Rate
    rest: Rate
    p: float | None = None  # the exact test's p; None: not tested (too few reviews here or in the rest)
    p_adjusted: float | None = None
    flagged: bool = False

    @property
    def untested(self) -> str | None:
        """Why the slice was not tested (None: it was)."""
        if self.p is not None:
            return None
        return "the only slice" if self.rest.n == 0 else "under min_n here or in the rest"

    @property
    def direction(self) -> str | None:
        """``higher`` or ``lower`` than the rest (None when either has no review or they are equal)."""
        mine, rest = self.counts.rate, self.rest.rate
        if mine is None or rest is None or mine == rest:
            return None
        return "higher" if mine > rest else "lower"

    def as_dict(self) -> dict[str, Any]:
        return {"slice": self.value, **self.counts.as_dict(), "rest_rate": self.rest.rate, "p": self.p,
                "p_adjusted": self.p_adjusted, "tested": self.p is not None, "untested": self.untested,
                "flagged": self.flagged, "direction": self.direction}  # fmt: skip


@dataclass(frozen=True)
class Audit:
    alpha: float
    min_n: int
    correction: str
    overall: dict[str, Rate]  # per rate
    slices: list[Slice]  # per rate, per dimension, slices by value
    dimensions: tuple[str, ...] = DIMENSIONS
    tests: int = 0  # the size of the corrected family
    notes: dict[str, str] = field(default_factory=dict)  # what the reader says of its sources

    def of(self, kind: str, dimension: str) -> list[Slice]:
        return [s for s in self.slices if s.kind == kind and s.dimension == dimension]

    @property
    def flagged(self) -> list[Slice]:
        return [s for s in self.slices if s.flagged]

    def as_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "min_n": self.min_n, "correction": self.correction, "tests": self.tests,
            "test": "two-sided Fisher exact, each slice against the rest of its dimension",
            "interval": "Wilson 95%", "definitions": dict(RATES), "zones": list(ZONES), "notes": dict(self.notes),
            "rates": {kind: {**self.overall[kind].as_dict(), "dimensions": {
                d: [s.as_dict() for s in self.of(kind, d)] for d in self.dimensions}} for kind in RATES},
            "flagged": [{"rate": s.kind, "dimension": s.dimension, **s.as_dict()} for s in self.flagged],
        }  # fmt: skip


def wilson(errors: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (95% by default)."""
    if n <= 0:
        raise ValueError("a rate of no trial has no interval")
    p, z2 = errors / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p of Fisher's exact test on [[a, b], [c, d]]: the chance, with the margins fixed, of a table as or
    less likely than this one (what ``scipy.stats.fisher_exact(..., alternative="two-sided")`` answers)."""
    if min(a, b, c, d) < 0:
        raise ValueError("a count is never negative")
    row, col, total = a + b, a + c, a + b + c + d
    if total == 0 or row in (0, total) or col in (0, total):
        return 1.0
    base = _log_choose(total, row)

    def log_p(x: int) -> float:  # hypergeometric: x errors in the slice
        return _log_choose(col, x) + _log_choose(total - col, row - x) - base

    seen = log_p(a) + math.log1p(_TIES)
    support = range(max(0, row + col - total), min(row, col) + 1)
    return min(1.0, math.fsum(math.exp(lp) for lp in map(log_p, support) if lp <= seen))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given."""
    m, adjusted, running = len(ps), [0.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(m), key=ps.__getitem__)):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(ps: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p values (q values), in the order given."""
    m, adjusted, running = len(ps), [0.0] * len(ps), 1.0
    for rank, i in reversed(list(enumerate(sorted(range(m), key=ps.__getitem__), start=1))):
        running = min(running, m * ps[i] / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def audit(records: Iterable[Reviewed], alpha: float = 0.05, min_n: int = 20, correction: str = HOLM,
          dimensions: Sequence[str] = DIMENSIONS) -> Audit:  # fmt: skip
    """Every rate's slices per dimension, tested and corrected as the module says."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is between 0 and 1, not {alpha}")
    if min_n < 1:
        raise ValueError(f"min_n is at least 1, not {min_n}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction is one of {', '.join(CORRECTIONS)}, not {correction!r}")
    rows = list(records)
    overall, slices = {}, []
    tests: dict[tuple[str, ...], float] = {}  # one p per distinct table
    keys: list[tuple[str, ...] | None] = []
    for kind in RATES:
        mine = [r for r in rows if r.kind == kind]
        total = Rate(len(mine), sum(r.error for r in mine))
        overall[kind] = total
        for dimension in dimensions:
            groups: dict[str, list[int]] = {}
            for r in mine:
                counts = groups.setdefault(r.slices.get(dimension, UNKNOWN), [0, 0])
                counts[0] += 1
                counts[1] += r.error
            for value in sorted(groups):
                n, errors = groups[value]
                here, rest = Rate(n, errors), Rate(total.n - n, total.errors - errors)
                key: tuple[str, ...] | None = None
                if n >= min_n and rest.n >= min_n:
                    key = (kind, dimension) if len(groups) == 2 else (kind, dimension, value)
                    tests.setdefault(key, fisher_exact(errors, n - errors, rest.errors, rest.n - rest.errors))
                slices.append(Slice(kind, dimension, value, here, rest))
                keys.append(key)
    family = list(tests)
    adjusted = dict(zip(family, (holm if correction == HOLM else benjamini_hochberg)([tests[k] for k in family])))
    done = []
    for s, key in zip(slices, keys, strict=True):
        if key is None:
            done.append(s)
            continue
        p, q = tests[key], adjusted[key]
        done.append(Slice(s.kind, s.dimension, s.value, s.counts, s.rest, p, q, q < alpha))
    return Audit(alpha, min_n, correction, overall, done, tuple(dimensions), len(family))


# --- slice attributes (pure: the reader hands in what the stores hold) ---------------------------------------------


def parse_shifts(text: str) -> tuple[int, ...]:
    """``"06:00,14:00,22:00"`` -> the shifts' start minutes of the day, sorted; ``ValueError`` says what is wrong."""
    starts = []
    for part in text.split(","):
        hours, sep, minutes = part.strip().partition(":")
        if not (sep and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
            raise ValueError(f"shift start {part.strip()!r} is not HH:MM (00:00 to 23:59)")
        starts.append(int(hours) * 60 + int(minutes))
    if len(set(starts)) != len(starts):
        raise ValueError(f"shift starts {text!r} repeat a time")
    return tuple(sorted(starts))


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def shift_names(starts: Sequence[int]) -> list[str]:
    """``06:00-14:00`` per shift: its start and the next one's (the last runs past midnight to the first)."""
    return [f"{_hhmm(s)}-{_hhmm(starts[(i + 1) % len(starts)])}" for i, s in enumerate(starts)]


def shift_of(ts: float | None, starts: Sequence[int], zone: tzinfo | None = None) -> str:
    """The shift of an epoch time, in ``zone`` (None: the host's local time)."""
    if ts is None:
        return UNKNOWN
    local = datetime.fromtimestamp(ts, zone) if zone is not None else datetime.fromtimestamp(ts, UTC).astimezone()
    minute = local.hour * 60 + local.minute
    names = shift_names(starts)
    earlier = [i for i, s in enumerate(starts) if s <= minute]
    return names[earlier[-1] if earlier else len(starts) - 1]


def parse_when(text: str, zone: tzinfo | None = None) -> float:
    """An ISO 8601 date or date and time as epoch seconds; one without an offset is in ``zone`` (None: local)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date (2026-03-01) or a date and time (2026-03-01T06:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone) if zone is not None else when.astimezone()
    return when.timestamp()


def zone_of(r_norm: float | None) -> str:
    """centre, middle or edge by the die's normalised radius (``ZONES``)."""
    if r_norm is None:
        return UNKNOWN
    if r_norm < CENTER_ZONE:
        return CENTRE
    return EDGE if r_norm > EDGE_ZONE else MIDDLE


def presence(value: bool | None) -> str:
    return UNKNOWN if value is None else PRESENT if value else ABSENT


def model_slice(models: Mapping[str, str] | None) -> str:
    """``anomaly:3 classifier:5``: the versions that decided the die."""
    return " ".join(f"{name}:{models[name]}" for name in sorted(models)) if models else UNKNOWN
