"""Lot-stream benchmark of the threshold controllers: static, the seed controller, the statistical one, an oracle.

    python -m tools.bench.calibration [--seeds 20] [--lots 250] [--scenario NAME ...]

One recipe x tool x class is simulated lot by lot. A share ``CANDIDATE_RATE`` of the inspected negatives are
candidates of the class, with confidence 0.5 + 0.5 U^k (U uniform): the smaller k, the heavier the tail of
confident false positives; ``hardness`` (drift, a resist step, a temperature cycle, another tool) divides k. Real
defects score 1 - 0.5 U^m. So at threshold t the true FPR is CANDIDATE_RATE x (1 - ((t - 0.5) / 0.5)^(1/k)) and the
escape rate is 1 - ((1 - t) / 0.5)^(1/m), both exact. Every flagged item is reviewed; 5% of suppressed candidates
are audited; reviewers may flip a label; dispositions may arrive a lot late. The seed controller sees the reviewed
counts, the statistical one also every candidate's score (as the daemon does); the oracle knows the true curve.
Figures are over production lots (after the initial calibration lots), as means over seeds with 95% intervals.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calibration import controller
from calibration import statistical_controller as statistical
from calibration.controller import ClassSettings, LotCounts, Stages
from calibration.exact_tests import clopper_pearson_upper

BUDGET = 0.001
CANDIDATE_RATE = 0.02
K0, M = 8.0, 20.0
REAL_RATE = 0.01  # real defects of the class per inspected negative
AUDIT = 0.05
STATIC = 0.75
GRID = np.round(np.arange(0.50, 0.9501, 0.01), 2)
STAGES = Stages()
SETTINGS = ClassSettings(fpr_budget=BUDGET)
CONTROLLERS = ("static", "seed", "statistical", "oracle")


@dataclass(frozen=True)
class Scenario:
    name: str
    hardness: Callable[[int], float] = lambda lot: 1.0
    negatives: int = 300
    label_noise: float = 0.0
    late: bool = False
    swap_at: int | None = None  # tool swap: the profile is transferred, the new tool is harder
    step_at: int | None = None  # lot of a step change (recovery lag is measured from it)


def scenarios(lots: int) -> list[Scenario]:
    step = lots * 3 // 5
    return [
        Scenario("stationary"),
        Scenario("tool aging", hardness=lambda lot: 1.0 + 0.6 * lot / lots),
        Scenario("resist step", hardness=lambda lot: 1.5 if lot >= step else 1.0, step_at=step),
        Scenario("temperature cycle", hardness=lambda lot: 1.0 + 0.3 * (1 + math.sin(2 * math.pi * lot / 24)) / 2),
        Scenario("tool swap + transfer", hardness=lambda lot: 1.3 if lot >= step else 1.0, swap_at=step, step_at=step),
        Scenario("30 negatives/lot", negatives=30),
        Scenario("3,000 negatives/lot", negatives=3000),
        Scenario("label noise 2%", label_noise=0.02),
        Scenario("dispositions a lot late", late=True),
    ]


def true_fpr(t: float | np.ndarray, hardness: float) -> float | np.ndarray:
    k = K0 / hardness
    return CANDIDATE_RATE * (1.0 - ((np.asarray(t) - 0.5) / 0.5) ** (1.0 / k))


def escape(t: float) -> float:
    return 1.0 - ((1.0 - t) / 0.5) ** (1.0 / M)


def oracle(hardness: float) -> float:
    ok = GRID[true_fpr(GRID, hardness) <= BUDGET]
    return float(ok[0]) if len(ok) else float(GRID[-1])


@dataclass(frozen=True)
class LotResult:
    threshold: float
    true_fpr: float
    measured_fpr: float
    escape: float
    false_positives: int


def _review(rng: np.random.Generator, scores: np.ndarray, real: np.ndarray, t: float, noise: float):
    """Every candidate's score; labels for the flagged (all reviewed) and the audited suppressed ones (a reviewer
    may flip one); the true false-positive count at ``t``."""
    flagged = scores >= t
    reviewed = flagged | (rng.random(len(scores)) < AUDIT)
    label = real ^ (rng.random(len(scores)) < noise)
    return scores, label, reviewed, int((flagged & ~real).sum())


def run(sc: Scenario, kind: str, seed: int, lots: int) -> list[LotResult]:
    rng = np.random.default_rng([seed, len(sc.name), CONTROLLERS.index(kind)])
    state = statistical.StatState.start(SETTINGS) if kind == "statistical" else controller.ClassState.start(SETTINGS)
    pending: list = []
    out = []
    for lot in range(1, lots + 1):
        h = sc.hardness(lot)
        if sc.swap_at == lot and kind in ("seed", "statistical"):
            state = (statistical if kind == "statistical" else controller).transferred(state)
        t = {"static": STATIC, "oracle": oracle(h)}.get(kind, state.threshold)
        n = sc.negatives
        n_cand, n_real = rng.binomial(n, CANDIDATE_RATE), rng.poisson(REAL_RATE * n)
        scores = np.r_[0.5 + 0.5 * rng.random(n_cand) ** (K0 / h), 1.0 - 0.5 * rng.random(n_real) ** M]
        real = np.r_[np.zeros(n_cand, bool), np.ones(n_real, bool)]
        lot_scores, labels, has_label, false_positives = _review(rng, scores, real, t, sc.label_noise)
        out.append(LotResult(t, float(true_fpr(t, h)), false_positives / n, escape(t), false_positives))
        if kind in ("static", "oracle"):
            continue
        pending.append((lot_scores, labels, has_label, t))
        if sc.late and lot == 1:
            continue
        lot_scores, labels, has_label, t_then = pending.pop(0)
        if kind == "seed":
            flagged = lot_scores >= t_then
            counts = LotCounts(n, int((flagged & ~labels).sum()), int((flagged & labels).sum()))
            state = controller.after_lot(state, counts, STAGES)
        else:
            items = tuple(statistical.Reviewed(float(sc), bool(lb) if known else None)
                          for sc, lb, known in zip(lot_scores, labels, has_label))  # fmt: skip
            state = statistical.after_lot(state, n, items, STAGES)
    return out


def summarise(results: list[list[LotResult]], oracle_runs: list[list[LotResult]], sc: Scenario) -> dict:
    start = STAGES.initial_lots
    per_seed = {"true_fpr": [], "over": [], "measured": [], "escape": [], "penalty": [], "certify": [], "lag": [],
                "tv": [], "violations": []}  # fmt: skip
    for run_, orc in zip(results, oracle_runs):
        prod = run_[start:]
        tf = np.array([r.true_fpr for r in prod])
        per_seed["true_fpr"].append(tf.mean())
        per_seed["over"].append((tf > BUDGET).mean())
        per_seed["measured"].append(np.mean([r.measured_fpr for r in prod]))
        per_seed["escape"].append(np.mean([r.escape for r in prod]))
        per_seed["penalty"].append(per_seed["escape"][-1] - np.mean([r.escape for r in orc[start:]]))
        fp, neg, certified = 0, 0, float("nan")
        for i, r in enumerate(prod, 1):
            fp, neg = fp + r.false_positives, neg + sc.negatives
            if clopper_pearson_upper(fp, neg) < BUDGET:
                certified = i
                break
        per_seed["certify"].append(certified)
        lag = float("nan")
        if sc.step_at:
            after = [i for i, r in enumerate(run_[sc.step_at - 1 :]) if r.true_fpr <= BUDGET]
            lag = after[0] if after else float("inf")
        per_seed["lag"].append(lag)
        thresholds = np.array([r.threshold for r in prod])
        per_seed["tv"].append(np.abs(np.diff(thresholds)).sum())
        per_seed["violations"].append(int(((thresholds < SETTINGS.lower) | (thresholds > SETTINGS.upper)).sum()))
    return {k: np.array(v, float) for k, v in per_seed.items()}


def _ci(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    v = values[np.isfinite(values)] * scale
    if len(v) == 0:
        return "never" if np.isinf(values).any() else "-"
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    missing = "" if len(v) == len(values) else f" ({len(values) - len(v)} never)"
    return f"{v.mean():.{digits}f}±{half:.{digits}f}{missing}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--lots", type=int, default=250)
    parser.add_argument("--scenario", nargs="*", help="names to run (default: all)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    chosen = [s for s in scenarios(args.lots) if not args.scenario or s.name in args.scenario]
    header = ("scenario", "controller", "true FPR %", "lots over %", "measured FPR %", "escape %",
              "escape - oracle pts", "lots to certify", "recovery lag", "threshold TV", "violations")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for sc in chosen:
        runs = {k: [run(sc, k, seed, args.lots) for seed in range(args.seeds)] for k in CONTROLLERS}
        for kind in CONTROLLERS:
            m = summarise(runs[kind], runs["oracle"], sc)
            lag = _ci(m["lag"], 1, 1) if sc.step_at else "-"
            row = (sc.name, kind, _ci(m["true_fpr"], 100, 3), _ci(m["over"], 100, 1), _ci(m["measured"], 100, 3),
                   _ci(m["escape"], 100, 2), _ci(m["penalty"], 100, 2), _ci(m["certify"], 1, 1), lag,
                   _ci(m["tv"], 1, 2), int(m["violations"].sum()))  # fmt: skip
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    print(
        f"\n{args.seeds} seeds x {args.lots} lots per run, budget {BUDGET:.1%}, production lots after "
        f"{STAGES.initial_lots} calibration lots; {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
