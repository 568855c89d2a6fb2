"""Lot-stream benchmark of the threshold controllers: static, the seed controller, the statistical one, an oracle.

    python -m tools.bench.calibration [--seeds 20] [--lots 300] [--model gaussian power] [--volume 30 300 3000]
                                      [--scenario NAME ...]
    python -m tools.bench.calibration --lot-end [--classes 16] [--tools 4]

``--lot-end`` times the calibration store instead: lot ends of every tool of a recipe with the statistical
controller on every class (``--candidates`` candidates per tool and lot, a tenth of them flagged and reviewed),
database time per lot end of all the tools together, p50/p95/max over ``--lots`` lots after ten of warm-up.

One recipe x tool x class is simulated lot by lot, fed to the controllers as the daemon feeds them: every
candidate's score, flagged ones all reviewed, ``AUDIT`` of the suppressed ones audited, a reviewer who flips a share
of labels both ways, dispositions possibly a lot late. The seed controller sees the reviewed counts, the statistical
one every candidate's score with its label where there is one; the oracle knows the lot's true curve and sits exactly
at the budget. Two score models:

- ``gaussian``: every inspected negative has a logit for the class ~ N(mu, 1), mu drawn per seed in [-2.3, -1.0]
  (shifted up by the drift, in logits: the oracle stays under the 0.95 hard bound), real defects ~ N(3, 1.2),
  Poisson(lam x n / 300) of them a lot with lam drawn per seed in [0.25, 6]; confidence = sigmoid(logit). True FPR
  and escape rate are exact normal tails; the oracle threshold is continuous.
- ``power``: a share ``CANDIDATE_RATE`` of the negatives are candidates with confidence 0.5 + 0.5 U^k (drift divides
  k), real defects 1 - 0.5 U^m: heavy tails of confident false positives.

FPR is the class's false positives over its inspected negatives. Figures are over steady-state lots (from
``--steady``), as means over seeds with 95% intervals; escape against the oracle is the headline.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calibration import controller
from calibration import statistical_controller as statistical
from calibration.controller import ClassSettings, LotCounts, Stages

BUDGET = 0.001
AUDIT = 0.05
STATIC = 0.75
STAGES = Stages(initial_lots=50)
SETTINGS = ClassSettings(fpr_budget=BUDGET)
CONTROLLERS = ("static", "seed", "statistical", "oracle")


def _phi_tail(z: np.ndarray | float) -> np.ndarray:
    """P(Z >= z) for a standard normal."""
    return np.asarray(0.5 * np.vectorize(math.erfc)(np.asarray(z, float) / math.sqrt(2)))


def _z(p: float) -> float:
    """The standard normal's 1 - p quantile (bisection on the tail)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(_phi_tail(mid)) > p else (lo, mid)
    return (lo + hi) / 2


def _logit(t: float) -> float:
    return math.log(t / (1 - t))


class Gaussian:
    name = "gaussian"

    def __init__(self, rng: np.random.Generator) -> None:
        self.mu = rng.uniform(-2.3, -1.0)
        self.lam = rng.uniform(0.25, 6.0)

    def shift(self, drift: float) -> float:
        return self.mu + drift

    def sample(self, rng: np.random.Generator, n: int, drift: float) -> tuple[np.ndarray, np.ndarray]:
        negatives = 1 / (1 + np.exp(-rng.normal(self.shift(drift), 1.0, n)))
        reals = 1 / (1 + np.exp(-rng.normal(3.0, 1.2, rng.poisson(self.lam * n / 300))))
        return negatives, reals

    def true_fpr(self, t: float, drift: float) -> float:
        return float(_phi_tail(_logit(t) - self.shift(drift)))

    def escape(self, t: float, drift: float) -> float:
        return float(1 - _phi_tail((_logit(t) - 3.0) / 1.2))

    def oracle(self, drift: float, budget: float = BUDGET) -> float:
        x = self.shift(drift) + _z(budget)
        return 1 / (1 + math.exp(-x))


class PowerLaw:
    name = "power"
    CANDIDATE_RATE, K0, M, REAL_RATE = 0.02, 8.0, 20.0, 0.01

    def __init__(self, rng: np.random.Generator) -> None:
        pass

    def sample(self, rng: np.random.Generator, n: int, drift: float) -> tuple[np.ndarray, np.ndarray]:
        k = self.K0 / (1 + drift)
        negatives = 0.5 + 0.5 * rng.random(rng.binomial(n, self.CANDIDATE_RATE)) ** k
        reals = 1.0 - 0.5 * rng.random(rng.poisson(self.REAL_RATE * n)) ** self.M
        return negatives, reals

    def true_fpr(self, t: float, drift: float) -> float:
        k = self.K0 / (1 + drift)
        return self.CANDIDATE_RATE * (1.0 - ((t - 0.5) / 0.5) ** (1.0 / k))

    def escape(self, t: float, drift: float) -> float:
        return 1.0 - ((1.0 - t) / 0.5) ** (1.0 / self.M)

    def oracle(self, drift: float, budget: float = BUDGET) -> float:
        lo, hi = 0.5, 0.999
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.true_fpr(mid, drift) <= budget else (mid, hi)
        return hi


MODELS: dict[str, Callable[[np.random.Generator], Gaussian | PowerLaw]] = {"gaussian": Gaussian, "power": PowerLaw}


@dataclass(frozen=True)
class Scenario:
    name: str
    drift: Callable[[int], float] = lambda lot: 0.0  # 0: as calibrated; 0.5: noticeably harder
    label_noise: float = 0.015
    late: bool = False
    swap_at: int | None = None  # tool swap: the profile is transferred, the new tool is harder
    step_at: int | None = None  # lot of a step change (recovery lag is measured from it)
    volume: Callable[[int], float] = lambda lot: 1.0  # share of the table's negatives per lot
    noise_burst: tuple[int, int] | None = None  # lots during which the reviewer flips 10% of labels
    tools: int = 1  # tools of the recipe with this class; the statistical controller pools their evidence
    tool_spread: float = 0.0  # drift units between neighbouring tools' score distributions


def scenarios(lots: int) -> list[Scenario]:
    step = lots * 2 // 5
    swap = lots // 2
    return [
        Scenario("stationary"),
        Scenario("tool aging", drift=lambda lot: 0.6 * lot / lots),
        Scenario("step", drift=lambda lot: 0.5 if lot >= step else 0.0, step_at=step),
        Scenario("temperature cycle", drift=lambda lot: 0.15 * (1 + math.sin(2 * math.pi * lot / 24))),
        Scenario("tool swap + transfer", drift=lambda lot: 0.3 if lot >= swap else 0.0, swap_at=swap, step_at=swap),
        Scenario("fast sawtooth", drift=lambda lot: 0.4 * (lot % 12) / 12),
        Scenario("step back down", drift=lambda lot: 0.5 if lot < step else 0.0),
        Scenario("volume drops 10x", volume=lambda lot: 1.0 if lot < swap else 0.1),
        Scenario("sloppy reviewer", noise_burst=(step, step + 20)),
        Scenario("dispositions a lot late", late=True),
        Scenario("4 tools pooled, aging", drift=lambda lot: 0.6 * lot / lots, tools=4, tool_spread=0.15),
    ]


@dataclass(frozen=True)
class LotResult:
    threshold: float
    true_fpr: float
    escape: float
    oracle_escape: float


def _labels(rng: np.random.Generator, scores: np.ndarray, real: np.ndarray, t: float, noise: float):
    """Labels as reviewers give them: every flagged candidate, ``AUDIT`` of the suppressed ones; a reviewer flips
    ``noise`` of them. None where there is no label."""
    reviewed = (scores >= t) | (rng.random(len(scores)) < AUDIT)
    said = real ^ (rng.random(len(scores)) < noise)
    return [bool(x) if r else None for x, r in zip(said, reviewed, strict=True)]


def run(model_name: str, sc: Scenario, kind: str, seed: int, lots: int, negatives: int,
        stat: statistical.StatSettings | None = None, per_class: int = 1) -> list[LotResult]:  # fmt: skip
    """One seed of a scenario on tool 0: its threshold, true FPR and escapes lot by lot. ``per_class``: the FPR
    denominator holds that many times the class's own negatives (1: the class denominator; K: all inspected
    negatives of a recipe x tool whose K classes share them). With ``sc.tools`` > 1 the statistical controller on
    every tool borrows the same class's evidence from the others, as the store does."""
    model = MODELS[model_name](np.random.default_rng([seed, 7]))
    rng = np.random.default_rng([seed, len(sc.name), CONTROLLERS.index(kind), negatives, per_class])
    tools = sc.tools if kind == "statistical" else 1  # the seed controller reads no other tool
    offsets = [sc.tool_spread * ((k + 1) // 2) * (-1) ** k for k in range(tools)]  # tool 0 as the model says
    states: list[controller.ClassState | statistical.StatState] = [
        statistical.StatState.start(SETTINGS, stat) if kind == "statistical" else controller.ClassState.start(SETTINGS)
        for _ in range(tools)
    ]
    pending: list[list[tuple[np.ndarray, list[bool | None], float, int]]] = [[] for _ in range(tools)]
    out = []
    for lot in range(1, lots + 1):
        drift = sc.drift(lot)
        if sc.swap_at == lot and kind in ("seed", "statistical"):
            states = [(statistical if isinstance(x, statistical.StatState) else controller).transferred(x)
                      for x in states]  # fmt: skip
        budget = BUDGET * per_class  # the same budget in the class's own terms
        t = {"static": STATIC, "oracle": model.oracle(drift, budget)}.get(kind, states[0].threshold)
        out.append(LotResult(t, model.true_fpr(t, drift) / per_class, model.escape(t, drift),
                             model.escape(model.oracle(drift, budget), drift)))  # fmt: skip
        if kind in ("static", "oracle"):
            continue
        n = max(1, round(negatives * sc.volume(lot)))
        noise = 0.10 if sc.noise_burst and sc.noise_burst[0] <= lot < sc.noise_burst[1] else sc.label_noise
        lots_now = []
        for k, state in enumerate(states):
            neg_scores, real_scores = model.sample(rng, n, drift + offsets[k])
            scores = np.r_[neg_scores, real_scores]
            real = np.r_[np.zeros(len(neg_scores), bool), np.ones(len(real_scores), bool)]
            lots_now.append(
                (scores, _labels(rng, scores, real, state.threshold, noise), state.threshold, n * per_class)
            )
        evidence = [x.evidence for x in states if isinstance(x, statistical.StatState)]
        for k, state in enumerate(states):
            pending[k].append(lots_now[k])
            pool = statistical.Evidence.total(evidence[:k] + evidence[k + 1 :]) if len(evidence) > 1 else None
            states[k] = _feed(state, pending[k], sc.late, pool)
    return out


def _feed(state: controller.ClassState | statistical.StatState,
          pending: list[tuple[np.ndarray, list[bool | None], float, int]], late: bool,
          pool: statistical.Evidence | None) -> controller.ClassState | statistical.StatState:  # fmt: skip
    """Close a lot on one tool: the seed controller gets the lot's reviewed counts (a lot late: the previous lot's),
    the statistical one every candidate with its label (a lot late: unlabelled now, labels as corrections next)."""
    if isinstance(state, controller.ClassState):
        if late and len(pending) < 2:
            return state
        scores, labels, t_then, n_then = pending.pop(0)
        flagged = scores >= t_then
        fp = sum(1 for f, x in zip(flagged, labels, strict=True) if f and x is False)
        confirmed = sum(1 for f, x in zip(flagged, labels, strict=True) if f and x is True)
        return controller.after_lot(state, LotCounts(n_then, fp, confirmed), STAGES)
    scores, labels, _, n = pending[-1]
    if not late:
        pending.clear()
        items = [statistical.Reviewed(float(x), y) for x, y in zip(scores, labels, strict=True)]
        return statistical.after_lot(state, n, items, STAGES, pool=pool)
    items = [statistical.Reviewed(float(x), None) for x in scores]
    corrections = None
    if len(pending) > 1:
        old_scores, old_labels, _, n_then = pending.pop(0)
        known = [
            statistical.Reviewed(float(x), y) for x, y in zip(old_scores, old_labels, strict=True) if y is not None
        ]
        corrections = statistical.late_labels(known, [1] * len(known), statistical.half_life(state.stat, n_then))
    return statistical.after_lot(state, n, items, STAGES, pool=pool, corrections=corrections)


def summarise(results: list[list[LotResult]], sc: Scenario, steady: int) -> dict[str, np.ndarray]:
    per_seed: dict[str, list[float]] = {k: [] for k in ("true_fpr", "over", "escape", "penalty", "lag", "tv")}
    for run_ in results:
        prod = run_[steady:]
        tf = np.array([r.true_fpr for r in prod])
        per_seed["true_fpr"].append(float(tf.mean()))
        per_seed["over"].append(float((tf > BUDGET * 1.0001).mean()))
        per_seed["escape"].append(float(np.mean([r.escape for r in prod])))
        per_seed["penalty"].append(per_seed["escape"][-1] - float(np.mean([r.oracle_escape for r in prod])))
        lag = float("nan")
        if sc.step_at:
            after = [i for i, r in enumerate(run_[sc.step_at - 1 :]) if r.true_fpr <= BUDGET * 1.0001]
            lag = after[0] if after else float("inf")
        per_seed["lag"].append(lag)
        per_seed["tv"].append(float(np.abs(np.diff([r.threshold for r in prod])).sum()))
    return {k: np.array(v, float) for k, v in per_seed.items()}


def violations(results: list[list[LotResult]]) -> int:
    return sum(1 for r in results for x in r if not SETTINGS.lower - 1e-9 <= x.threshold <= SETTINGS.upper + 1e-9)


def _ci(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    v = values[np.isfinite(values)] * scale
    if len(v) == 0:
        return "never" if np.isinf(values).any() else "-"
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    missing = "" if len(v) == len(values) else f" ({len(values) - len(v)} never)"
    return f"{v.mean():.{digits}f}±{half:.{digits}f}{missing}"


def lot_end_timing(classes: int, tools: int, lots: int, candidates: int) -> dict[str, float]:
    """Milliseconds of store time per lot end of all ``tools`` (each ``close_lot`` of the recipe's tools)."""
    import tempfile
    from pathlib import Path

    from calibration.codec import STATISTICAL
    from calibration.store import CalibrationStore

    rng = np.random.default_rng(0)
    names = [f"C{i:02d}" for i in range(classes)]
    totals = []
    with tempfile.TemporaryDirectory() as root:
        store = CalibrationStore(Path(root) / "c.sqlite", stages=Stages(initial_lots=5))
        for t in range(tools):
            store.ensure_profile("R", f"T{t}", names, STATISTICAL)
        for lot in range(lots + 10):
            spent = 0.0
            for t in range(tools):
                tool, lot_id = f"T{t}", f"L{lot}"
                scores = 1 / (1 + np.exp(-rng.normal(-1.5, 1.0, candidates)))
                rows = [(f"{tool}-{lot}-{i}", "R", tool, lot_id, names[i % classes], float(sc), bool(sc >= 0.8))
                        for i, sc in enumerate(scores)]  # fmt: skip
                store.record([("R", tool, lot_id)] * 3000, rows)
                for event_id, *_rest, flagged in rows:
                    if flagged:
                        store.review(event_id, "false", "bench")
                t0 = time.perf_counter()
                store.close_lot("R", tool, lot_id)
                spent += time.perf_counter() - t0
            if lot >= 10:
                totals.append(spent * 1000)
        store.close()
    ms = np.array(totals)
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "max": round(float(ms.max()), 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--lots", type=int, default=300)
    parser.add_argument("--steady", type=int, default=80, help="first lot counted (after calibration and settling)")
    parser.add_argument("--model", nargs="*", default=["gaussian", "power"], choices=sorted(MODELS))
    parser.add_argument("--volume", nargs="*", type=int, default=[30, 300, 3000], help="negatives per lot")
    parser.add_argument("--scenario", nargs="*", help="names to run (default: all)")
    parser.add_argument("--controller", nargs="*", default=list(CONTROLLERS), choices=CONTROLLERS)
    parser.add_argument(
        "--stat",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="statistical controller settings to try (fields of StatSettings)",
    )
    parser.add_argument(
        "--denominator",
        nargs="*",
        default=["class"],
        choices=["class", "all"],
        help="FPR over the class's own negatives, or over all inspected negatives of the recipe x tool",
    )
    parser.add_argument(
        "--sharing",
        type=int,
        default=8,
        help="classes whose negatives make up 'all' (the class's own are 1/SHARING of them)",
    )
    parser.add_argument("--lot-end", action="store_true", help="time the store's lot ends instead")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--tools", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=300, help="per tool and lot (--lot-end)")
    args = parser.parse_args(argv)
    if args.lot_end:
        lots = min(args.lots, 40)
        timing = lot_end_timing(args.classes, args.tools, lots, args.candidates)
        print(f"lot end of {args.classes} classes x {args.tools} tools (statistical controller, {args.candidates} "
              f"candidates per tool and lot), store time in ms over {lots} lots: {timing}")  # fmt: skip
        return 0
    started = time.monotonic()
    chosen = [s for s in scenarios(args.lots) if not args.scenario or s.name in args.scenario]
    stat = statistical.StatSettings(**{k: float(v) for k, v in (kv.split("=", 1) for kv in args.stat)})
    header = ("scenario", "controller", "true FPR %", "class-lots over %", "escape %", "escape - oracle pts",
              "recovery lag", "threshold TV", "violations")  # fmt: skip
    for model, denominator, volume in itertools.product(args.model, args.denominator, args.volume):
        per_class = args.sharing if denominator == "all" else 1
        print(
            f"\n### {model} score model, {volume} negatives per class per lot, FPR over "
            + ("the class's negatives" if per_class == 1 else f"all negatives ({per_class} classes' worth)")
            + "\n"
        )
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for sc in chosen:
            for kind in args.controller:
                runs = [run(model, sc, kind, seed, args.lots, volume, stat, per_class) for seed in range(args.seeds)]
                m = summarise(runs, sc, args.steady)
                lag = _ci(m["lag"], 1, 1) if sc.step_at else "-"
                row = (sc.name, kind, _ci(m["true_fpr"], 100, 3), _ci(m["over"], 100, 1),
                       _ci(m["escape"], 100, 2), _ci(m["penalty"], 100, 2), lag, _ci(m["tv"], 1, 2),
                       violations(runs))  # fmt: skip
                print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    print(
        f"\n{args.seeds} seeds x {args.lots} lots per run, budget {BUDGET:.1%}, steady state from lot {args.steady} "
        f"({STAGES.initial_lots} calibration lots); reviewer flips {Scenario('x').label_noise:.1%} of labels; "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
