"""A statistically grounded alternative to the seed controller, selectable per recipe.

After each lot the threshold becomes the lowest one (on a 0.01 grid inside the engineer bounds) whose exact upper
confidence bound on FPR, from the candidates' scores and dispositions in memory, is within the class's budget:

    FP(t) = candidates with score >= t not confirmed real, over the lots in memory
    UCB(t) = Clopper-Pearson upper bound of FP(t) false positives in N inspected negatives

The daemon knows every candidate's score, flagged or suppressed; only its label needs a reviewer. Flagged items are
all reviewed; a suppressed candidate has a label only when the AUDIT sample picked it, and one without a label counts
as a false positive, so FP(t) never under-counts and the bound holds below the current threshold too. A Bernoulli
CUSUM on the reviewed false positives at the current threshold detects a rise in FPR and then forgets every lot
before the current one, so the choice rests on data from after the shift. A move is limited to ``max_step`` per lot.
Stage 1 (escape-averse start while the first lots are reviewed), the bounds, locks and transfers are those of
``calibration.controller``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace

from calibration.controller import (
    ADJUSTING,
    CALIBRATING,
    DEFAULT_SETTINGS,
    DEFAULT_STAGES,
    LOCKED,
    REVALIDATING,
    ClassSettings,
    Stages,
    lock_holds,
    next_status,
)
from calibration.exact_tests import BernoulliCusum, clopper_pearson_upper


@dataclass(frozen=True)
class Reviewed:
    """A candidate of the class: its score and its disposition (None: not reviewed, counted as false)."""

    score: float
    real: bool | None
    lot: int = 0  # set by ``after_lot``


@dataclass(frozen=True)
class StatSettings:
    confidence: float = 0.95
    max_step: float = 0.02  # per-lot rate limit
    memory_lots: int = 30
    grid: float = 0.01
    cusum_h: float = 5.0
    cusum_shift: float = 3.0  # the CUSUM looks for a rise of FPR to this multiple of the budget


@dataclass(frozen=True)
class StatState:
    threshold: float
    settings: ClassSettings = field(default_factory=ClassSettings)
    stat: StatSettings = field(default_factory=StatSettings)
    status: str = CALIBRATING
    lots_seen: int = 0
    lock_until: int | None = None
    lots: tuple[tuple[int, int], ...] = ()  # (lot, inspected negatives) in memory
    items: tuple[Reviewed, ...] = ()
    cusum: float = 0.0
    changes: int = 0
    clean_lots: int = 0

    @classmethod
    def start(cls, settings: ClassSettings = DEFAULT_SETTINGS, stat: StatSettings | None = None) -> StatState:
        return cls(threshold=settings.initial_threshold, settings=settings, stat=stat or StatSettings())

    @property
    def negatives(self) -> int:
        return sum(n for _, n in self.lots)

    def false_positives_at(self, threshold: float) -> int:
        return sum(1 for i in self.items if i.real is not True and i.score >= threshold)

    def fpr_upper(self, threshold: float) -> float:
        return clopper_pearson_upper(self.false_positives_at(threshold), self.negatives, self.stat.confidence)

    @property
    def fpr_window(self) -> float:
        """False positives over inspected negatives at the threshold in force, over the lots kept in memory."""
        return self.false_positives_at(self.threshold) / self.negatives if self.negatives else 0.0

    def line(self, name: str) -> str:
        """The report line, e.g. ``PART-SM threshold=0.81 fpr_window=0.08% fpr_upper=0.19% status=stable``."""
        return (
            f"{name} threshold={self.threshold:.2f} fpr_window={100 * self.fpr_window:.2f}% "
            f"fpr_upper={100 * self.fpr_upper(self.threshold):.2f}% status={self.status}"
        )


def choose(state: StatState) -> float:
    """The lowest grid threshold inside the bounds whose FPR upper bound is within budget (else the upper bound)."""
    s = state.settings
    steps = round((s.upper - s.lower) / state.stat.grid)
    grid = [round(s.lower + i * state.stat.grid, 6) for i in range(steps + 1)]
    scores = sorted(i.score for i in state.items if i.real is not True)
    n = state.negatives
    for t in grid:
        fp = len(scores) - bisect_left(scores, t)
        if clopper_pearson_upper(fp, n, state.stat.confidence) <= s.fpr_budget:
            return t
    return s.upper


def after_lot(
    state: StatState, negatives: int, items: tuple[Reviewed, ...], stages: Stages = DEFAULT_STAGES
) -> StatState:
    """The state after one more lot with ``negatives`` inspected negatives and its candidates ``items`` (their
    ``lot`` is set here: the lot this call closes)."""
    lot = state.lots_seen + 1
    items = tuple(replace(i, lot=lot) for i in items)
    budget = state.settings.fpr_budget
    cusum = BernoulliCusum(budget, min(0.5, state.stat.cusum_shift * budget), state.stat.cusum_h)
    flagged_fp = sum(1 for i in items if i.real is False and i.score >= state.threshold)
    statistic, changed = cusum.update(state.cusum, flagged_fp, max(negatives, flagged_fp))
    lots = (*state.lots, (lot, negatives))
    kept = {n for n, _ in lots[-state.stat.memory_lots :]} if not changed else {lot}
    s = replace(
        state, lots_seen=lot, cusum=statistic, changes=state.changes + changed,
        lots=tuple(x for x in lots if x[0] in kept),
        items=tuple(i for i in (*state.items, *items) if i.lot in kept),
    )  # fmt: skip
    if lock_holds(s.status, s.lock_until, lot):
        return s
    if s.status == LOCKED:
        s = replace(s, status=ADJUSTING, lock_until=None)
    if s.status == CALIBRATING:
        return s if lot < stages.initial_lots else replace(s, status=ADJUSTING)
    target = choose(s)
    step = s.stat.max_step
    threshold = s.settings.clamp(min(s.threshold + step, max(s.threshold - step, target)))
    under = s.fpr_upper(threshold) <= budget
    clean = s.clean_lots + 1 if under else 0
    return replace(s, threshold=threshold, status=next_status(s.status, under, clean, stages), clean_lots=clean)


def transferred(state: StatState) -> StatState:
    """On the tool a profile is transferred to: same threshold and settings, no memory, revalidating."""
    status = CALIBRATING if state.status == CALIBRATING else REVALIDATING
    return replace(state, status=status, lots=(), items=(), cusum=0.0, clean_lots=0, lock_until=None)
