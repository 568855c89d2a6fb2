"""Choosing a training subset of a labelled pool by its embeddings (pure numpy; ``edge-inspect data select``).

1. **Borderline cases are kept first**: a die the model scores near a class boundary (its two most probable classes
   within ``margin`` of each other), near a decision threshold (its top defect class's probability within
   ``margin`` of ``threshold``), or whose nearest neighbour in embedding space carries another label. They are the
   dies a threshold or a boundary is learnt from. They fill at most half of their class's share (step 2), and at
   most ``borderline_share`` of the budget, the most borderline first; the count left out is reported.
2. **Each class gets a share of the budget proportional to its spread**: the mean cosine distance of its dies to
   their centroid. A class of near-identical dies needs few of them; a varied one needs more. Every class gets at
   least ``floor`` dies (or all it has; 5 by default, what ``edge-inspect train`` asks of a class); shares beyond a
   class's size go to the others (water-filling). ``min_share`` promises a class a share whatever its spread: spread
   alone gives GOOD, the class a line sees most, about as much as any defect class (measured: "Benchmark").
3. **Within a class, k-center greedy fills its share**: starting from the borderline dies already chosen (or from the
   die nearest the class centroid), it adds the die farthest from everything chosen so far, so near-duplicates are
   skipped and the chosen set covers the class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.taxonomy import GOOD
from tools.curation.geometry import neighbours, unit

BORDERLINE = "borderline"
COVERAGE = "coverage"


@dataclass(frozen=True)
class Selection:
    chosen: list[int]  # indices into the pool, in the order they were chosen
    why: dict[int, str]  # chosen index -> BORDERLINE or COVERAGE
    allocation: dict[str, int]  # class -> dies chosen
    spread: dict[str, float]  # class -> mean cosine distance to its centroid
    borderline_found: int  # borderline dies in the pool
    borderline_left_out: int  # of those, not kept (over ``borderline_share`` of the budget)
    reasons: dict[int, list[str]] = field(default_factory=dict)  # borderline index -> what made it so


def class_spread(x: npt.NDArray[np.float32], labels: Sequence[str]) -> dict[str, float]:
    """Per class: the mean cosine distance of its (unit) embeddings to their normalised centroid."""
    spread = {}
    names = np.asarray(labels)
    for name in sorted(set(labels)):
        members = x[names == name]
        centroid = unit(members.mean(axis=0, keepdims=True))[0]
        spread[name] = float(np.mean(1.0 - members @ centroid)) if len(members) > 1 else 0.0
    return spread


def allocate(
    budget: int, sizes: Mapping[str, int], weights: Mapping[str, float], floor: int = 5,
    reserved: Mapping[str, int] | None = None,
) -> dict[str, int]:  # fmt: skip
    """``budget`` dies over the classes: ``floor`` each (or all a class has; less when the budget cannot give every
    class that many), the rest in proportion to ``weights`` (largest remainders first), never more than a class has;
    what a full class cannot take goes to the others. ``reserved``: dies promised to a class before the rest is
    shared (at most what it has)."""
    floor = min(floor, budget // max(len(sizes), 1))  # a budget too small for every class's floor: a lower one
    alloc = {c: min(sizes[c], floor) for c in sizes}
    for c, n in (reserved or {}).items():  # dies a class is promised whatever its spread
        if c in alloc:
            alloc[c] = max(alloc[c], min(sizes[c], n, budget - sum(alloc.values()) + alloc[c]))
    left = budget - sum(alloc.values())
    if floor == 0:  # fewer dies than classes: one each, the largest classes first
        alloc = dict.fromkeys(sizes, 0)
        for c in sorted(sizes, key=lambda c: (-sizes[c], c))[:budget]:
            alloc[c] = 1
        return alloc
    while left > 0:
        open_ = [c for c in sizes if alloc[c] < sizes[c]]
        if not open_:
            break
        total = sum(max(weights.get(c, 0.0), 1e-9) for c in open_)
        shares = {c: left * max(weights.get(c, 0.0), 1e-9) / total for c in open_}
        given = {c: min(int(shares[c]), sizes[c] - alloc[c]) for c in open_}
        if not any(given.values()):  # the remainders: one more each, largest first
            for c in sorted(open_, key=lambda c: (-(shares[c] - int(shares[c])), c))[:left]:
                given[c] = 1
        for c, n in given.items():
            alloc[c] += n
            left -= n
    return alloc


def borderline(
    x: npt.NDArray[np.float32], labels: Sequence[str], probs: npt.NDArray[np.float32], classes: Sequence[str],
    margin: float, threshold: float,
) -> dict[int, tuple[float, list[str]]]:  # fmt: skip
    """Borderline dies: index -> (how close, 0 the closest; what made it borderline)."""
    found: dict[int, tuple[float, list[str]]] = {}

    def add(i: int, closeness: float, reason: str) -> None:
        old = found.get(i, (np.inf, []))
        found[i] = (min(old[0], closeness), [*old[1], reason])

    if len(probs):
        top2 = np.sort(probs, axis=1)[:, -2:]
        gap = top2[:, 1] - top2[:, 0]
        for i in np.flatnonzero(gap < margin):
            add(int(i), float(gap[i]) / margin, "class boundary")
        defects = [j for j, c in enumerate(classes) if c != GOOD]
        if defects:
            best = probs[:, defects].max(axis=1)
            off = np.abs(best - threshold)
            for i in np.flatnonzero(off < margin):
                add(int(i), float(off[i]) / margin, "decision threshold")
    index, _ = neighbours(x, 1)
    names = np.asarray(labels)
    if index.shape[1]:
        for i in np.flatnonzero(names[index[:, 0]] != names):
            add(int(i), 0.5, "nearest neighbour labelled otherwise")
    return found


def k_center(x: npt.NDArray[np.float32], candidates: npt.NDArray[np.int64], start: Sequence[int], k: int) -> list[int]:
    """``k`` more of ``candidates`` (indices into unit vectors ``x``), each the farthest (cosine) from all chosen so
    far, beginning from ``start`` (or, when empty, the candidate nearest the candidates' centroid)."""
    chosen: list[int] = []
    if k <= 0 or len(candidates) == 0:
        return chosen
    pool = x[candidates]
    if start:
        nearest = np.max(pool @ x[list(start)].T, axis=1)
    else:
        first = int(np.argmax(pool @ unit(pool.mean(axis=0, keepdims=True))[0]))
        chosen.append(int(candidates[first]))
        nearest = pool @ pool[first]
    taken = np.isin(candidates, [*start, *chosen])
    while len(chosen) < k and not taken.all():
        distance = np.where(taken, -np.inf, 1.0 - nearest)
        pick = int(np.argmax(distance))
        chosen.append(int(candidates[pick]))
        taken[pick] = True
        nearest = np.maximum(nearest, pool @ pool[pick])
    return chosen


def select(
    vectors: npt.NDArray[np.floating], labels: Sequence[str], probs: npt.NDArray[np.float32], classes: Sequence[str],
    budget: int, margin: float = 0.15, threshold: float = 0.5, borderline_share: float = 0.5, floor: int = 5,
    min_share: Mapping[str, float] | None = None,
) -> Selection:  # fmt: skip
    """At most ``budget`` dies of the pool (see the module's description). ``min_share``: a class promised at least
    that share of the budget whatever its spread (e.g. GOOD at its share of the line, so the chosen set teaches
    what a good die looks like as often as the line shows one)."""
    if budget <= 0:
        raise ValueError("the budget must be a positive number of dies")
    x = unit(vectors)
    names = np.asarray(labels)
    sizes = {c: int(np.sum(names == c)) for c in sorted(set(labels))}
    spread = class_spread(x, labels)
    found = borderline(x, labels, probs, classes, margin, threshold)
    reserved = {c: round(share * budget) for c, share in (min_share or {}).items()}
    alloc = allocate(budget, sizes, spread, floor, reserved)
    ranked = sorted(found, key=lambda i: (found[i][0], i))
    room = {c: max(1, alloc[c] // 2) if alloc[c] else 0 for c in sizes}  # borderline: half a class's share at most
    kept: list[int] = []
    for i in ranked:
        if len(kept) < int(budget * borderline_share) and room[names[i]] > 0:
            kept.append(i)
            room[names[i]] -= 1
    per_class: dict[str, list[int]] = {c: [i for i in kept if names[i] == c] for c in sizes}
    chosen = list(kept)
    why = dict.fromkeys(kept, BORDERLINE)
    for c in sizes:
        members = np.flatnonzero(names == c)
        more = k_center(x, members, per_class[c], alloc[c] - len(per_class[c]))
        chosen.extend(more)
        why.update(dict.fromkeys(more, COVERAGE))
    return Selection(
        chosen=chosen,
        why=why,
        allocation={c: sum(1 for i in chosen if names[i] == c) for c in sizes},
        spread=spread,
        borderline_found=len(found),
        borderline_left_out=len(found) - len(kept),
        reasons={i: found[i][1] for i in kept},
    )
