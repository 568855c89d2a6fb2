"""How far a candidate version agrees with the version that decided the same frames (pure).

Per candidate version x recipe x tool: decision agreement (PASS / DEFECT / REVIEW), top-class agreement, the rank
correlation of the anomaly scores (Spearman, on the most recent pairs), the disagreements counted by class pair, and
the candidate's latency. The frames that disagree most are kept (ids and both verdicts) for an engineer to review.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.flow import Outcome

SCORE_PAIRS = 1000  # anomaly-score pairs kept per version x recipe x tool for the rank correlation
LATENCIES = 1000


@dataclass(frozen=True, slots=True)
class Verdicts:
    """One frame as both versions saw it."""

    tool_id: str
    frame_id: str
    recipe_id: str
    lot_id: str
    wafer_id: str
    die: tuple[int, int]
    decided: dict[str, Any]  # the version whose verdict the tool got
    compared: dict[str, Any]  # the candidate's

    def to_json(self) -> dict[str, Any]:
        return {"tool_id": self.tool_id, "frame_id": self.frame_id, "recipe_id": self.recipe_id,
                "lot_id": self.lot_id, "wafer_id": self.wafer_id, "die": list(self.die),
                "decided": self.decided, "compared": self.compared}  # fmt: skip


def verdict_of(outcome: Outcome) -> dict[str, Any]:
    v = outcome.verdict
    return {
        "version": next(iter(outcome.models.values()), None), "decision": outcome.decision,
        "class": v.defect_class if v else None, "confidence": round(v.confidence, 4) if v else None,
        "anomaly": round(outcome.score, 5), "reason": outcome.reason,
    }  # fmt: skip


def severity(decided: Outcome, compared: Outcome) -> float:
    """How much two verdicts on one frame differ: a decision apart outranks a class apart, which outranks a
    confidence gap; 0 when they agree on both."""
    a, b = decided.verdict, compared.verdict
    if a is None or b is None:
        return 0.0
    gap = abs(a.confidence - b.confidence)
    if a.decision != b.decision:
        return 2.0 + gap
    return 1.0 + gap if a.defect_class != b.defect_class else 0.0


@dataclass
class Tally:
    """One candidate version on one recipe x tool."""

    frames: int = 0
    decisions_agreed: int = 0
    classes_agreed: int = 0
    failed: int = 0  # copies the candidate could not score
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (decided class, candidate class) apart
    scores: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=SCORE_PAIRS))

    def report(self) -> dict[str, Any]:
        n = max(self.frames, 1)
        return {
            "frames": self.frames, "failed": self.failed,
            "decision_agreement": round(self.decisions_agreed / n, 4) if self.frames else None,
            "top_class_agreement": round(self.classes_agreed / n, 4) if self.frames else None,
            "score_rank_correlation": rank_correlation(self.scores),
            "disagreements": [{"decided": a, "candidate": b, "frames": c} for (a, b), c in self.pairs.most_common()],
        }  # fmt: skip


def rank_correlation(pairs: deque[tuple[float, float]] | list[tuple[float, float]]) -> float | None:
    """Spearman's rho of the pairs (ties broken by order), or None under 3 pairs or with a constant side."""
    if len(pairs) < 3:
        return None
    a, b = (np.asarray(side, dtype=np.float64) for side in zip(*pairs, strict=True))
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (a, b))
    if ra.std() == 0 or rb.std() == 0 or a.std() == 0 or b.std() == 0:
        return None
    return round(float(np.corrcoef(ra, rb)[0, 1]), 4)


class Agreement:
    """The tallies of every candidate version, and the frames that disagree most."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self.tallies: dict[tuple[str, str, str], Tally] = {}  # (candidate version, recipe, tool)
        self.latency: dict[str, deque[float]] = {}  # candidate version -> seconds per copy batch
        self.dropped: Counter[str] = Counter()  # candidate version -> frames not compared (the queue was full)
        self._worst: list[tuple[float, int, Verdicts]] = []  # min-heap of the most severe disagreements
        self._seq = 0

    def add(self, decided: Outcome, compared: Outcome) -> bool | None:
        """Tally one frame; whether the two decisions disagree (None: the candidate could not score it)."""
        version = next(iter(compared.models.values()), "?")
        h = decided.frame.header
        tally = self.tallies.setdefault((version, h.recipe_id, h.tool_id), Tally())
        if decided.verdict is None:
            return None
        if compared.verdict is None:
            tally.failed += 1
            return None
        tally.frames += 1
        a, b = decided.verdict, compared.verdict
        tally.decisions_agreed += a.decision == b.decision
        tally.classes_agreed += a.defect_class == b.defect_class
        if a.defect_class != b.defect_class:
            tally.pairs[(a.defect_class, b.defect_class)] += 1
        tally.scores.append((decided.score, compared.score))
        worst = severity(decided, compared)
        if worst > 0:
            self._seq += 1
            entry = (worst, self._seq, Verdicts(h.tool_id, h.frame_id, h.recipe_id, h.lot_id, h.wafer_id, h.die,
                                                verdict_of(decided), verdict_of(compared)))  # fmt: skip
            if len(self._worst) < self._kept:
                heapq.heappush(self._worst, entry)
            elif entry[:2] > self._worst[0][:2]:
                heapq.heapreplace(self._worst, entry)
        return a.decision != b.decision

    def timed(self, version: str, seconds: float) -> None:
        self.latency.setdefault(version, deque(maxlen=LATENCIES)).append(seconds)

    def forget(self, version: str) -> None:
        """A version's trial ended: its tallies go (a new trial starts from none)."""
        self.tallies = {k: t for k, t in self.tallies.items() if k[0] != version}
        self.latency.pop(version, None)
        self.dropped.pop(version, None)
        self._worst = [e for e in self._worst if e[2].compared.get("version") != version]
        heapq.heapify(self._worst)

    def report(self, top: int) -> dict[str, Any]:
        versions: dict[str, dict[str, Any]] = {}

        def entry(version: str) -> dict[str, Any]:
            return versions.setdefault(version, {"by_recipe_tool": [], "dropped": self.dropped.get(version, 0)})

        for (version, recipe, tool), tally in sorted(self.tallies.items()):
            entry(version)["by_recipe_tool"].append({"recipe_id": recipe, "tool_id": tool, **tally.report()})
        for version, seconds in self.latency.items():
            ms = 1000 * np.asarray(seconds)
            entry(version)["latency_ms"] = {"p50": round(float(np.percentile(ms, 50)), 2),
                                   "p99": round(float(np.percentile(ms, 99)), 2), "batches": len(ms)}  # fmt: skip
        worst = [e[2].to_json() for e in sorted(self._worst, key=lambda e: (-e[0], e[1]))[:top]]
        return {"versions": versions, "most_disagreeing": worst}
