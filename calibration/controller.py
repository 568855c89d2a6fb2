"""The seed methodology's threshold controller for one recipe x tool x class, as pure functions of its state.

Stages (every number lives in ``ClassSettings`` / ``Stages``):

1. ``calibrating``: the first ``Stages.initial_lots`` lots run at the escape-averse ``initial_threshold``; every flagged
   item is reviewed, and the confirmed-real rate seen meanwhile becomes the class's baseline.
2. ``adjusting``: after each lot, a class whose ``fpr_3lot`` is over its budget rises by ``step_up``; a class with no
   false positive in the lot and a confirmed-real rate above its baseline falls by ``step_down``. The rate is read per
   inspected die or per reviewed event (``Stages.real_rate``): the methodology leaves the denominator open.
3. ``stable``: under budget; the same rule keeps running as drift correction, inside the engineer's bounds.
4. ``revalidating``: a profile transferred from another tool adjusts as above until ``Stages.window_lots`` lots in a
   row are under budget.

``locked``: an engineer override holds the threshold until the lock's lot; then the class goes back to adjusting.
Thresholds never leave the engineer bounds, which never leave the hard bounds 0.50..0.95.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from calibration.table import MAX_THRESHOLD, MIN_THRESHOLD

CALIBRATING, ADJUSTING, STABLE, LOCKED, REVALIDATING = "calibrating", "adjusting", "stable", "locked", "revalidating"
STATUSES = (CALIBRATING, ADJUSTING, STABLE, LOCKED, REVALIDATING)


@dataclass(frozen=True)
class ClassSettings:
    """What a process engineer sets per class; defaults are the methodology's."""

    initial_threshold: float = 0.55  # escape-averse start
    lower: float = MIN_THRESHOLD  # engineer bounds, inside the hard bounds
    upper: float = MAX_THRESHOLD
    step_up: float = 0.02  # per lot, when over budget
    step_down: float = 0.01  # per lot, when clean and finding more real defects than the baseline
    fpr_budget: float = 0.001  # false positives / inspected negatives over the window

    def __post_init__(self) -> None:
        if not MIN_THRESHOLD <= self.lower <= self.upper <= MAX_THRESHOLD:
            raise ValueError(
                f"bounds must satisfy {MIN_THRESHOLD} <= lower <= upper <= {MAX_THRESHOLD}, "
                f"got {self.lower}..{self.upper}"
            )
        if not self.lower <= self.initial_threshold <= self.upper:
            raise ValueError(f"initial_threshold {self.initial_threshold} is outside {self.lower}..{self.upper}")
        if self.step_up <= 0 or self.step_down < 0 or not 0 < self.fpr_budget < 1:
            raise ValueError("step_up must be > 0, step_down >= 0 and fpr_budget in (0, 1)")

    def clamp(self, threshold: float) -> float:
        return round(min(self.upper, max(self.lower, threshold)), 6)


PER_DIE, PER_REVIEWED = "die", "reviewed"  # readings of the confirmed-real rate


@dataclass(frozen=True)
class Stages:
    initial_lots: int = 50
    window_lots: int = 3
    # the confirmed-real rate the seed rule compares with its baseline: confirmed real defects per inspected die,
    # or per reviewed (flagged) event; the methodology does not fix the denominator
    real_rate: str = PER_DIE

    def __post_init__(self) -> None:
        if self.real_rate not in (PER_DIE, PER_REVIEWED):
            raise ValueError(f"real_rate must be {PER_DIE!r} or {PER_REVIEWED!r}, got {self.real_rate!r}")


DEFAULT_SETTINGS = ClassSettings()
DEFAULT_STAGES = Stages()


@dataclass(frozen=True)
class LotCounts:
    """One lot of one class: inspected negatives of the recipe x tool, and the class's reviewed events."""

    negatives: int
    false_positives: int = 0
    confirmed_real: int = 0

    def __post_init__(self) -> None:
        if min(self.negatives, self.false_positives, self.confirmed_real) < 0:
            raise ValueError(f"lot counts cannot be negative: {self}")

    def real_rate(self, per: str = PER_DIE) -> float:
        """Confirmed-real defects per inspected die, or per reviewed event (``per``)."""
        reviewed = per == PER_REVIEWED
        base = (self.false_positives if reviewed else self.negatives) + self.confirmed_real
        return self.confirmed_real / base if base else 0.0


@dataclass(frozen=True)
class ClassState:
    threshold: float
    status: str = CALIBRATING
    lots_seen: int = 0
    lock_until: int | None = None  # lot number (lots_seen) up to which an override holds
    settings: ClassSettings = field(default_factory=ClassSettings)
    window: tuple[LotCounts, ...] = ()
    baseline_real_rate: float | None = None
    calibration_counts: LotCounts = LotCounts(0)  # summed over the initial calibration lots
    clean_lots: int = 0  # consecutive lots under budget (revalidation)

    @classmethod
    def start(cls, settings: ClassSettings = DEFAULT_SETTINGS) -> ClassState:
        return cls(threshold=settings.initial_threshold, settings=settings)

    @property
    def fpr_window(self) -> float:
        negatives = sum(c.negatives for c in self.window)
        return sum(c.false_positives for c in self.window) / negatives if negatives else 0.0

    def line(self, name: str) -> str:
        """The engine's report line, e.g. ``PART-SM threshold=0.81 fpr_3lot=0.08% status=stable``."""
        return f"{name} threshold={self.threshold:.2f} fpr_3lot={100 * self.fpr_window:.2f}% status={self.status}"


def _add(a: LotCounts, b: LotCounts) -> LotCounts:
    return LotCounts(
        a.negatives + b.negatives, a.false_positives + b.false_positives, a.confirmed_real + b.confirmed_real
    )


def lock_holds(status: str, lock_until: int | None, lot: int) -> bool:
    """Whether an engineer's lock still holds at ``lot``."""
    return status == LOCKED and lock_until is not None and lot < lock_until


def next_status(status: str, under_budget: bool, clean_lots: int, stages: Stages) -> str:
    """Status after a controlled lot: revalidation ends after ``stages.window_lots`` clean lots in a row."""
    if status == REVALIDATING:
        return STABLE if clean_lots >= stages.window_lots else REVALIDATING
    return STABLE if under_budget else ADJUSTING


def after_lot(state: ClassState, counts: LotCounts, stages: Stages = DEFAULT_STAGES) -> ClassState:
    """The class's state after one more lot with ``counts``."""
    lot = state.lots_seen + 1
    window = (*state.window, counts)[-stages.window_lots :]
    s = replace(state, lots_seen=lot, window=window)
    if lock_holds(s.status, s.lock_until, lot):
        return s
    if s.status == LOCKED:
        s = replace(s, status=ADJUSTING, lock_until=None)
    if s.status == CALIBRATING:
        total = _add(s.calibration_counts, counts)
        if lot < stages.initial_lots:
            return replace(s, calibration_counts=total)
        return replace(s, calibration_counts=total, baseline_real_rate=total.real_rate(stages.real_rate),
                       status=ADJUSTING)  # fmt: skip
    budget = s.settings.fpr_budget
    threshold = s.threshold
    if s.fpr_window > budget:
        threshold = s.settings.clamp(threshold + s.settings.step_up)
    elif counts.false_positives == 0 and counts.real_rate(stages.real_rate) > (s.baseline_real_rate or 0.0):
        threshold = s.settings.clamp(threshold - s.settings.step_down)
    under = s.fpr_window <= budget
    clean = s.clean_lots + 1 if under else 0
    return replace(s, threshold=threshold, status=next_status(s.status, under, clean, stages), clean_lots=clean)


def transferred(state: ClassState) -> ClassState:
    """The class's state on the tool a profile is transferred to: same threshold, settings and baseline, a fresh
    window, revalidating until it proves itself under budget there (a class still calibrating goes on calibrating)."""
    status = CALIBRATING if state.status == CALIBRATING else REVALIDATING
    return replace(state, status=status, window=(), clean_lots=0, lock_until=None)
