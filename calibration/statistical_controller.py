"""The statistical controller: each class's whole FPR curve estimated from every candidate's score, aimed at the
budget with a margin that shrinks as evidence grows. Selectable per recipe (``calibration.controller``). Pure.

What it keeps (``Evidence``), per class, on bins of confidence (0.05 wide under 0.50, where the bulk of a class's
candidates shows a drift first; 0.01 from 0.50, finer above 0.99): the candidates labelled negative, labelled real,
and not labelled, and the inspected negatives they are counted against, all decayed by half every ``half_life``
lots. The daemon knows every candidate's score, flagged or suppressed; reviewers label every flagged one, the AUDIT
sample a share of the suppressed ones.

After each lot:

1. The lot's counts join the evidence; the older evidence fades by the half-life, which lengthens as volume falls
   (``target_negatives`` over the lot's negatives, between ``min_half_life`` and ``max_half_life`` lots), so a
   low-volume class remembers longer. A Bernoulli CUSUM on the reviewed false positives at the threshold in force
   detects a rise in FPR over the estimate and then keeps a tenth of the older evidence, so a step is followed at
   once.
2. P(negative | score) is the labelled share of "false" per bin made non-increasing in the score (pool adjacent
   violators; flagged candidates are all labelled, the audit sample speaks for the low bins), with reviewer error
   (``label_noise``) taken out. A candidate without a label counts as that probability of a false positive; a
   labelled one is corrected for reviewer error: a "false" among confirmed-real scores is likely a slip, so a
   mistaken disposition moves the estimate a little, not for many lots.
3. FP(t), the expected false positives at or above each bin's lower edge t, is summed from the top. Where the count
   is small (under ``tail_count``) the curve is also extrapolated from the highest edge with enough of them by an
   exponential tail on the logit scale (fitted by maximum likelihood to the scores above it) and the two are
   combined by their variances: the many scores just under the threshold inform the FPR far above it.
4. With little evidence of its own, a class borrows the same class's evidence on the recipe's other tools (``pool``,
   up to ``pool_negatives`` pseudo-negatives in all, less as its own evidence grows).
5. The level: the same counts over a short memory (``recent_negatives``) give the recent rate at the highest edge
   with ``level_count`` of them, and the whole curve moves along the logit axis until it passes there (a drift of
   the scores moves every threshold's FPR, most where the curve is steepest).
6. The forecast check (``Forecast``): the lot's histogram is fitted to the curve the previous lot ended with; the
   squared upward move beyond counting noise, remembered over ``forecast_half_life`` lots, is drift the memory
   does not follow, and adds (slope x move)^2 to the curve's variance. A CUSUM of the standardised upward moves
   (``shift_k``, ``shift_h``) is the second step detector (1.): the bulk of the scores shows a step long before
   the rare false positives at the threshold do.
7. The aim is the lowest grid value whose estimate plus ``margin_z`` standard deviations is within the budget; the
   threshold goes up to it at once (``gain_up``) and down ``gain`` of the way each lot (all the way after a
   detected change), at most ``max_step``, and stays inside the engineer's bounds.

The certified bound, the exact (Clopper-Pearson) one-sided ``confidence`` upper bound on FPR at the threshold in
force from the labelled false positives and negatives in memory (rounded), is reported beside the threshold for
auditors; it does not drive the threshold. Stage 1 (the escape-averse start while the first lots are reviewed),
bounds, locks and transfers are those of ``calibration.controller``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

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

METHOD = 2  # a state saved by an earlier method is read with today's StatSettings (its evidence is kept)
# bin edges: 0.00, 0.05, ... 0.45 (the bulk, where a drift of the whole distribution shows first), then thresholds
# 0.50, 0.51, ... 0.99, 0.995, 0.999 and the top
LOW_EDGES = tuple(round(0.05 * i, 2) for i in range(10))
EDGES = (*LOW_EDGES, *(round(0.5 + 0.01 * i, 2) for i in range(50)), 0.995, 0.999, 1.0 + 1e-9)
BINS = len(EDGES) - 1
Floats = npt.NDArray[np.float64]


def bin_of(score: float) -> int:
    """The evidence bin of a confidence."""
    return int(bins_of(np.array([score]))[0])


def _logit(p: Floats) -> Floats:
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(clipped / (1 - clipped)), np.float64)


_EDGES = np.array(EDGES)
_LOWER, _UPPER = _EDGES[:-1], _EDGES[1:]
_CENTRE_LOGIT = _logit((_LOWER + np.minimum(_UPPER, 1.0)) / 2)
_LOWER_LOGIT = _logit(_LOWER)
_FIRST = len(LOW_EDGES)  # the first bin whose lower edge is a threshold (0.50)
MISFIT_FLOOR = 0.1  # no tail is exactly exponential: the model is never trusted closer than ~30%


@dataclass(frozen=True)
class Reviewed:
    """A candidate of the class in a closing lot: its score and label (None: not reviewed)."""

    score: float
    real: bool | None
    lot: int = 0


@dataclass(frozen=True)
class StatSettings:
    confidence: float = 0.95  # the certified bound's level
    max_step: float = 0.05  # per-lot rate limit on a move
    gain: float = 0.5  # a lot moves this share of the way down to the aim (estimates are noisy) ...
    gain_up: float = 1.0  # ... and this share of the way up
    grid: float = 0.001  # thresholds the controller may set (the curve is interpolated between bins)
    margin_z: float = 1.1  # aim: estimate + margin_z x its standard deviation within budget
    label_noise: float = 0.015  # the share of dispositions a reviewer gets wrong, either way
    target_negatives: float = 6000.0  # memory sized to hold about this many negatives ...
    min_half_life: float = 12.0  # ... with a half-life (lots) within these bounds
    max_half_life: float = 100.0
    tail_count: float = 20.0  # expected false positives above which the counted curve is trusted alone
    pool_negatives: float = 20000.0  # at most this many pseudo-negatives borrowed from the recipe's other tools
    recent_negatives: float = 300.0  # the recent evidence (for the curve's level) holds about this many negatives
    level_count: float = 40.0  # recent false positives needed at a threshold to read the level there
    level_prior: float = 10.0  # pseudo-count that keeps the level ratio near 1 on thin recent evidence
    cusum_h: float = 3.0
    cusum_shift: float = 3.0  # the CUSUM looks for a rise of FPR to this multiple of the estimate
    after_change: float = 0.1  # the weight the evidence from before a detected change keeps
    forecast_half_life: float = 30.0  # lots over which the forecast's error is remembered
    shift_floor: float = 0.04  # squared logits: no lot's move is trusted as exactly known
    shift_k: float = 1.0  # the CUSUM of standardised upward moves: allowance per lot ...
    shift_h: float = 6.0  # ... and the sum that signals a step


@dataclass(frozen=True)
class Evidence:
    """Decayed counts: inspected negatives, and per bin the candidates labelled negative, real, and unlabelled."""

    negatives: float = 0.0
    neg: tuple[float, ...] = (0.0,) * BINS
    real: tuple[float, ...] = (0.0,) * BINS
    unlabelled: tuple[float, ...] = (0.0,) * BINS

    @classmethod
    def of(cls, negatives: float, items: Sequence[Reviewed]) -> Evidence:
        """One lot's counts: its inspected negatives and its candidates by label and bin."""
        scores = np.array([i.score for i in items], np.float64)
        labels = np.array([0 if i.real is None else 1 if i.real else 2 for i in items], np.int64)
        bins = bins_of(scores)
        unl, real, neg = (np.bincount(bins[labels == k], minlength=BINS).astype(np.float64) for k in (0, 1, 2))
        return cls(float(negatives), _floats(neg), _floats(real), _floats(unl))

    def scaled(self, factor: float) -> Evidence:
        neg, real, unl = self.arrays()
        return Evidence(self.negatives * factor, _floats(neg * factor), _floats(real * factor), _floats(unl * factor))

    def plus(self, other: Evidence) -> Evidence:
        (a, b, c), (x, y, z) = self.arrays(), other.arrays()
        return Evidence(self.negatives + other.negatives, _floats(a + x), _floats(b + y), _floats(c + z))

    @staticmethod
    def total(parts: Sequence[Evidence]) -> Evidence | None:
        """The sum of ``parts`` with any evidence at all (None when none has): the same class on other tools."""
        kept = [e for e in parts if e.negatives > 0]
        if not kept:
            return None
        out = kept[0]
        for e in kept[1:]:
            out = out.plus(e)
        return out

    def arrays(self) -> tuple[Floats, Floats, Floats]:
        return np.array(self.neg), np.array(self.real), np.array(self.unlabelled)


def _floats(values: Floats) -> tuple[float, ...]:
    return tuple(values.tolist())


def bins_of(scores: Floats) -> npt.NDArray[np.int64]:
    """The evidence bins of confidences."""
    found = np.searchsorted(_EDGES, scores, side="right") - 1
    return np.asarray(np.clip(found, 0, BINS - 1), np.int64)


@dataclass(frozen=True)
class Forecast:
    """How well the curve foretells the next lot. ``curve``: the FPR curve the last lot ended with, the forecast
    for the lot to come. Each lot's scores are matched to it by the move along the logit axis that fits their
    histogram best (maximum likelihood); that move's square beyond what counting explains, averaged with a memory
    of ``forecast_half_life`` lots (``excess`` over ``weight``), is the variance of the drift from one lot to the
    next that the curve does not follow: a drift faster than the memory, a cycle, a shape the model misses."""

    curve: tuple[float, ...] = ()
    excess: float = 0.0
    weight: float = 0.0
    rise: float = 0.0  # a CUSUM of the lots' standardised moves upward: the bulk of the scores stepped up

    @property
    def drift_variance(self) -> float:
        """Squared logits: the forecast's error beyond counting noise."""
        return max(0.0, self.excess / self.weight) if self.weight > 0 else 0.0

    def checked(self, lot: Evidence, q: Floats, stat: StatSettings) -> tuple[Forecast, bool]:
        """After a lot: its move against the forecast, and whether the moves upward add up to a step (then the
        step is what explains them, and they stay out of the drift variance)."""
        if not self.curve:
            return self, False
        m, _ = expected_negatives(lot, stat.label_noise, q)
        found = lot_shift(np.array(self.curve), m)
        if found is None:
            return self, False
        shift, variance = found
        rise = max(0.0, self.rise + shift / math.sqrt(variance + stat.shift_floor) - stat.shift_k)
        if rise >= stat.shift_h:
            return replace(self, rise=0.0), True
        decay = 0.5 ** (1 / stat.forecast_half_life)
        w = 1 / (variance + stat.shift_floor)
        upward = 2 * max(shift, 0.0) ** 2  # only a move up costs lots over budget: twice its semivariance
        return replace(self, excess=decay * self.excess + w * (upward - variance),
                       weight=decay * self.weight + w, rise=rise), False  # fmt: skip


@dataclass(frozen=True)
class StatState:
    threshold: float
    settings: ClassSettings = field(default_factory=ClassSettings)
    stat: StatSettings = field(default_factory=StatSettings)
    status: str = CALIBRATING
    lots_seen: int = 0
    lock_until: int | None = None
    evidence: Evidence = field(default_factory=Evidence)
    recent: Evidence = field(default_factory=Evidence)  # the same counts with a short memory: the curve's level
    cusum: float = 0.0
    changes: int = 0
    clean_lots: int = 0
    estimate: float = 0.0  # the estimated FPR at the threshold in force after the last lot
    forecast: Forecast = field(default_factory=Forecast)

    @classmethod
    def start(cls, settings: ClassSettings = DEFAULT_SETTINGS, stat: StatSettings | None = None) -> StatState:
        return cls(threshold=settings.initial_threshold, settings=settings, stat=stat or StatSettings())

    @property
    def fpr_window(self) -> float:
        """The estimated FPR at the threshold in force, over the evidence in memory."""
        return self.estimate

    def labelled_false_positives(self, threshold: float) -> int:
        """False positives reviewers confirmed at or above ``threshold`` in memory (rounded decayed count)."""
        neg = np.array(self.evidence.neg)
        return round(float(neg[threshold + 1e-9 < _UPPER].sum()))  # the bin the threshold cuts counts whole

    def fpr_upper(self, threshold: float) -> float:
        """The certified bound: exact one-sided upper confidence bound on FPR at ``threshold``."""
        n = round(self.evidence.negatives)
        if n <= 0:
            return 1.0
        fp = self.labelled_false_positives(threshold)
        if fp > 2000:  # far over any budget: the normal approximation is exact enough and keeps this cheap
            rate = fp / n
            return min(1.0, rate + 1.645 * math.sqrt(rate * (1 - rate) / n))
        return clopper_pearson_upper(fp, n, self.stat.confidence)

    def line(self, name: str) -> str:
        """The report line, e.g. ``PART-SM threshold=0.874 fpr_3lot=0.08% certified=0.19% status=stable``."""
        return (
            f"{name} threshold={self.threshold:.3f} fpr_3lot={100 * self.fpr_window:.2f}% "
            f"certified={100 * self.fpr_upper(self.threshold):.2f}% status={self.status}"
        )


def negative_probability(neg: Floats, real: Floats, noise: float) -> Floats:
    """P(negative | score bin): the labelled share of "false" per bin, made non-increasing in the score (pool
    adjacent violators, weighted by the labels; a bin without labels takes its neighbours' pooled share), then with
    the reviewers' slips taken out (a slip rate e makes the observed share e + (1 - 2e) x the true one). Monotone
    and free of any assumed shape: real defects may crowd at the top or spread wide, the audit sample under the
    threshold speaks for the low bins."""
    weight = neg + real + 1e-6  # a bin without labels leans on its neighbours; the lowest ones start from "false"
    share = (neg + 1e-6 * (_CENTRE_LOGIT < 0)) / weight
    said_false = _non_increasing(share, weight)
    if 0 < noise < 0.5:
        said_false = (said_false - noise) / (1 - 2 * noise)
    return np.asarray(np.clip(said_false, 1e-4, 1 - 1e-4), np.float64)


def _non_increasing(values: Floats, weights: Floats) -> Floats:
    """The weighted least-squares non-increasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, length]
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([v, w, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks[-1]
            blocks[-1] = [(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2]
    return np.repeat([b[0] for b in blocks], [int(b[2]) for b in blocks]).astype(np.float64)


def expected_negatives(evidence: Evidence, noise: float, q: Floats | None = None) -> tuple[Floats, Floats]:
    """Per bin: expected true negatives among the candidates (labels corrected for reviewer error) and their
    variance; ``q``: P(negative | bin) when known already (else fitted on this evidence)."""
    neg, real, unl = evidence.arrays()
    q = negative_probability(neg, real, noise) if q is None else q
    keep_neg = (1 - noise) * q / ((1 - noise) * q + noise * (1 - q))  # a "false" that is truly negative
    flip_real = noise * q / (noise * q + (1 - noise) * (1 - q))  # a "real" that is truly negative
    m = neg * keep_neg + real * flip_real + unl * q
    var = neg * keep_neg * (1 - keep_neg) + real * flip_real * (1 - flip_real) + unl * q * (1 - q) + m
    return m, var


def fpr_curve(evidence: Evidence, stat: StatSettings, pool: Evidence | None = None,
              recent: Evidence | None = None, forecast: Forecast | None = None,
              q: Floats | None = None) -> tuple[Floats, Floats]:  # fmt: skip
    """Per bin's lower edge: the estimated FPR at that threshold and its standard deviation. The curve's shape comes
    from ``evidence`` (and ``pool``); ``recent``, the same counts over a short memory, sets its level where the
    recent false positives are many enough to read it, so a drift is followed within a few lots; ``forecast``'s
    error widens the spread. ``q``: P(negative | bin) when fitted already."""
    if q is None:
        neg, real, _ = evidence.arrays()
        q = negative_probability(neg, real, stat.label_noise)  # fitted once: the recent counts are read with it too
    rate, sd = _curve(evidence, stat, pool, q)
    if not np.isfinite(sd).all():
        return rate, sd
    if recent is not None and recent.negatives > 0:
        rate, sd = _levelled(rate, sd, recent, stat, q)
    if forecast is not None and forecast.drift_variance > 0:
        # a move of the scores by d logits changes the FPR at a threshold by its slope there times d
        sd = np.sqrt(sd**2 + (rate * _slope(rate, _LOWER_LOGIT)) ** 2 * forecast.drift_variance)
    return rate, sd


def _levelled(rate: Floats, sd: Floats, recent: Evidence, stat: StatSettings, q: Floats) -> tuple[Floats, Floats]:
    """The long curve moved along the logit axis to the recent level, read at the highest bin with
    ``level_count`` recent false positives."""
    m_recent, _ = expected_negatives(recent, stat.label_noise, q)
    fp_recent = np.cumsum(m_recent[::-1])[::-1]
    readable = np.nonzero((fp_recent >= stat.level_count) & (rate > 0))[0]
    if len(readable) == 0:
        return rate, sd
    v = int(readable[-1])
    k = stat.level_prior
    level = rate[v] * (fp_recent[v] + k) / (rate[v] * recent.negatives + k)  # the recent rate, shrunk to the curve's
    shifted = _LOWER_LOGIT - _shift(rate, v, level)
    out = _log_interp(shifted, rate)
    relative = np.interp(shifted, _LOWER_LOGIT, sd / np.maximum(rate, 1e-15))
    # an error in the shift grows in the tail by the ratio of the curve's slopes (log rate per logit) there and at v
    slope = _slope(rate, shifted)
    leverage = slope / max(float(slope[v]), 0.2)
    return out, out * np.sqrt(relative**2 + leverage**2 / (fp_recent[v] + k))


MAX_SHIFT = 4.0  # logits


def _log_interp(x: Floats, rate: Floats) -> Floats:
    """The long curve at logits ``x``: log-linear between the bins' lower edges."""
    log_rate = np.log(np.maximum(rate, 1e-15))
    return np.asarray(np.exp(np.interp(x, _LOWER_LOGIT, log_rate)), np.float64)


def _shift(rate: Floats, v: int, level: float) -> float:
    """The move of the curve along the logit axis that brings its rate at bin ``v``'s edge to ``level``: a drift of
    the scores moves the whole curve, so the recent level read where counts are many sets it where they are few."""
    falling = -np.log(np.maximum(rate, 1e-15))  # non-decreasing in the logit: the curve read backwards
    where = float(np.interp(-math.log(max(level, 1e-15)), falling, _LOWER_LOGIT))
    return min(MAX_SHIFT, max(-MAX_SHIFT, float(_LOWER_LOGIT[v]) - where))


def _slope(rate: Floats, x: Floats, h: float = 0.1) -> Floats:
    """-d log FPR / d logit of the long curve at logits ``x``."""
    return np.asarray((np.log(_log_interp(x - h, rate)) - np.log(_log_interp(x + h, rate))) / (2 * h), np.float64)


COARSE_SHIFTS = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.2), 2)
FINE_STEP = 0.02


def lot_shift(curve: Floats, counts: Floats) -> tuple[float, float] | None:
    """The move along the logit axis that best fits a lot's negatives per bin (``counts``) to ``curve`` (maximum
    likelihood over the candidates' histogram, coarse then fine) and its variance (the likelihood's curvature);
    None with too few."""
    if float(counts.sum()) < 3 or curve[0] <= 0:
        return None
    coarse = _loglik(curve, counts, COARSE_SHIFTS)
    best = int(np.argmax(coarse))
    if best in (0, len(COARSE_SHIFTS) - 1):
        return float(COARSE_SHIFTS[best]), 1.0  # off the grid: a move of that size at least, uncertain
    fine = np.round(COARSE_SHIFTS[best] + FINE_STEP * np.arange(-5, 6), 3)
    loglik = _loglik(curve, counts, fine)
    i = min(max(int(np.argmax(loglik)), 1), len(fine) - 2)
    curvature = -(loglik[i - 1] - 2 * loglik[i] + loglik[i + 1]) / (FINE_STEP * FINE_STEP)
    return float(fine[i]), 1 / max(curvature, 1e-6)


def _loglik(curve: Floats, counts: Floats, shifts: Floats) -> Floats:
    """Log-likelihood of the binned counts under the curve moved by each of ``shifts``."""
    at_edges = _log_interp(_LOWER_LOGIT[None, :] - shifts[:, None], curve)
    mass = np.maximum(at_edges - np.append(at_edges[:, 1:], np.zeros((len(shifts), 1)), axis=1), 1e-12)
    return np.asarray((counts[None, :] * np.log(mass / mass.sum(axis=1, keepdims=True))).sum(axis=1), np.float64)


def _curve(evidence: Evidence, stat: StatSettings, pool: Evidence | None, q: Floats) -> tuple[Floats, Floats]:
    m, var = expected_negatives(evidence, stat.label_noise, q)
    negatives = evidence.negatives
    if pool is not None and pool.negatives > 0 and negatives < stat.pool_negatives:
        weight = min(1.0, (stat.pool_negatives - negatives) / pool.negatives)
        pm, pvar = expected_negatives(pool, stat.label_noise)
        m, var, negatives = m + weight * pm, var + weight * weight * pvar, negatives + weight * pool.negatives
    if negatives <= 0:
        return np.zeros(BINS), np.full(BINS, np.inf)
    fp = np.cumsum(m[::-1])[::-1]  # at or above each bin's lower edge
    fp_var = np.cumsum(var[::-1])[::-1]
    fp, fp_var = _with_tail(fp, fp_var, m, stat.tail_count)
    return fp / negatives, np.sqrt(fp_var) / negatives


def _with_tail(fp: Floats, fp_var: Floats, m: Floats, enough: float) -> tuple[Floats, Floats]:
    """Where few false positives are counted, combine the count with an exponential tail on the logit scale fitted
    above the highest threshold that still counts ``enough`` of them (inverse-variance weights)."""
    usable = np.nonzero((fp >= enough) & (_LOWER > 0))[0]
    if len(usable) == 0:
        return fp, fp_var
    u = int(usable[-1])
    above = slice(u, BINS)
    excess = _CENTRE_LOGIT[above] - _LOWER_LOGIT[u]
    mass = m[above]
    if mass.sum() <= 0:
        return fp, fp_var
    scale = max(float((mass * excess).sum() / mass.sum()), 0.05)  # MLE of the exponential's scale
    n_tail = float(mass.sum())
    distance = _LOWER_LOGIT[u + 1 :] - _LOWER_LOGIT[u]
    model = fp[u] * np.exp(-distance / scale)
    # how far the model strays where the counts can still say (a tail heavier or lighter than exponential):
    # its log error beyond what counting explains, as a relative variance the model carries everywhere above u
    counts = fp[u + 1 :]
    checked = counts >= 5
    misfit = 0.0
    if checked.any():
        log_error = np.log(counts[checked] / np.maximum(model[checked], 1e-12)) ** 2 - 1 / counts[checked]
        misfit = float(max(0.0, log_error.max()))
    misfit = max(misfit, MISFIT_FLOOR)
    # relative variance of the model: the count at u, the scale (relative variance 1 / n), the misfit
    model_var = model * model * (1 / max(fp[u], 1.0) + (distance / scale) ** 2 / n_tail + misfit) + 1e-12
    count_var = np.maximum(fp_var[u + 1 :], model) + 1.0  # counting noise as the model expects it, never nil
    w = model_var / (model_var + count_var)  # the weight of the count
    out, out_var = fp.copy(), fp_var.copy()
    out[u + 1 :] = w * counts + (1 - w) * model
    out_var[u + 1 :] = 1 / (1 / model_var + 1 / count_var)
    return out, out_var


def at(rate: Floats, sd: Floats, thresholds: Floats) -> tuple[Floats, Floats]:
    """The curve between the bins' edges: log-linear in the logit (a tail's local exponential), the standard
    deviation in proportion."""
    lo = _LOWER_LOGIT[_FIRST:]
    log_rate = np.log(np.maximum(rate[_FIRST:], 1e-15))
    x = _logit(np.asarray(thresholds, np.float64))
    found = np.asarray(np.exp(np.interp(x, lo, log_rate)), np.float64)
    relative = np.interp(x, lo, sd[_FIRST:] / np.maximum(rate[_FIRST:], 1e-15))
    return found, np.asarray(found * relative, np.float64)


def aim(state: StatState, rate: Floats, sd: Floats) -> float:
    """The lowest grid threshold inside the bounds whose estimate + margin is within budget (else the upper bound)."""
    s = state.settings
    steps = round((s.upper - s.lower) / state.stat.grid)
    grid = np.round(s.lower + state.stat.grid * np.arange(steps + 1), 6)
    found, spread = at(rate, sd, grid)
    ok = np.nonzero(found + state.stat.margin_z * spread <= s.fpr_budget)[0]
    return float(grid[ok[0]]) if len(ok) else s.upper


def after_lot(
    state: StatState,
    negatives: int,
    items: Sequence[Reviewed],
    stages: Stages = DEFAULT_STAGES,
    pool: Evidence | None = None,
    corrections: Evidence | None = None,
) -> StatState:
    """The state after one more lot: ``negatives`` inspected, its candidates ``items``; ``corrections``: labels
    that arrived late for candidates of earlier lots (labelled counts added, the unlabelled ones they replace
    subtracted); ``pool``: the same class's evidence on the recipe's other tools."""
    lot = state.lots_seen + 1
    st = state.stat
    budget = state.settings.fpr_budget
    # a rise over what the controller believes (at least the budget) is news; sitting near the budget is not
    expected = min(0.1, max(budget, state.estimate))
    cusum = BernoulliCusum(expected, min(0.5, st.cusum_shift * expected), st.cusum_h)
    flagged_fp = sum(1 for i in items if i.real is False and i.score >= state.threshold)
    statistic, alarmed = cusum.update(state.cusum, flagged_fp, max(negatives, flagged_fp))
    fresh = Evidence.of(negatives, items)
    kept = state.evidence.scaled(0.5 ** (1 / half_life(st, negatives)))
    evidence = kept.plus(fresh)
    neg, real, _ = evidence.arrays()
    q = negative_probability(neg, real, st.label_noise)  # a uniform cut of the old evidence leaves it as it is
    forecast, stepped = state.forecast.checked(fresh, q, st)
    changed = alarmed or stepped  # the confirmed false positives rose, or the whole histogram stepped up
    recent = state.recent.scaled(st.after_change if changed else 0.5 ** (1 / half_life(st, negatives, recent=True)))
    if changed:
        evidence = state.evidence.scaled(st.after_change).plus(fresh)
    elif corrections is not None:
        evidence = _nonnegative(kept.plus(corrections)).plus(fresh)
        recent = _nonnegative(recent.plus(corrections))
    recent = recent.plus(fresh)
    rate, sd = fpr_curve(evidence, st, pool, recent, forecast, q)
    s = replace(state, lots_seen=lot, cusum=statistic, changes=state.changes + changed, evidence=evidence,
                recent=recent, forecast=replace(forecast, curve=_floats(rate)),
                estimate=float(at(rate, sd, np.array([state.threshold]))[0][0]))  # fmt: skip
    if lock_holds(s.status, s.lock_until, lot):
        return s
    if s.status == LOCKED:
        s = replace(s, status=ADJUSTING, lock_until=None)
    if s.status == CALIBRATING:
        return s if lot < stages.initial_lots else replace(s, status=ADJUSTING)
    gap = aim(s, rate, sd) - s.threshold
    # up at once (the curve says FPR is over: every lot spent getting there is a lot over budget), down by ``gain``
    # of the way (estimates are noisy; a lower threshold can wait a lot), and straight to it after a detected change
    gain = 1.0 if s.changes > state.changes else st.gain_up if gap > 0 else st.gain
    move = gap if abs(gap) <= 2 * st.grid else min(st.max_step, max(-st.max_step, gain * gap))
    threshold = s.settings.clamp(round(s.threshold + move, 6))
    estimate = float(at(rate, sd, np.array([threshold]))[0][0])
    under = estimate <= budget
    clean = s.clean_lots + 1 if under else 0
    return replace(s, threshold=threshold, estimate=estimate, status=next_status(s.status, under, clean, stages),
                   clean_lots=clean)  # fmt: skip


def half_life(stat: StatSettings, negatives: float, recent: bool = False) -> float:
    """Lots over which evidence fades by half: long enough to hold about ``target_negatives`` (the recent
    evidence: ``recent_negatives``, from one lot up), within bounds."""
    held, shortest = (stat.recent_negatives, 1.0) if recent else (stat.target_negatives, stat.min_half_life)
    return min(stat.max_half_life, max(shortest, held / max(negatives, 1.0)))


def _nonnegative(e: Evidence) -> Evidence:
    neg, real, unl = (np.maximum(a, 0.0) for a in e.arrays())
    return Evidence(max(0.0, e.negatives), _floats(neg), _floats(real), _floats(unl))


def late_labels(labels: Sequence[Reviewed], age_lots: Sequence[int], half_life: float) -> Evidence:
    """Corrections for labels that arrived after their lot closed: each adds its labelled count and takes back the
    unlabelled one it was counted as, both at the weight its lot has now (``age_lots`` lots later)."""
    neg, real, unl = np.zeros(BINS), np.zeros(BINS), np.zeros(BINS)
    for item, age in zip(labels, age_lots, strict=True):
        if item.real is None:
            continue
        w = 0.5 ** (age / half_life)
        b = bin_of(item.score)
        (real if item.real else neg)[b] += w
        unl[b] -= w
    return Evidence(0.0, _floats(neg), _floats(real), _floats(unl))


def transferred(state: StatState) -> StatState:
    """On the tool a profile is transferred to: same threshold and settings, no evidence, revalidating."""
    status = CALIBRATING if state.status == CALIBRATING else REVALIDATING
    return replace(state, status=status, evidence=Evidence(), recent=Evidence(), cusum=0.0, clean_lots=0,
                   lock_until=None, estimate=0.0, forecast=Forecast())  # fmt: skip
