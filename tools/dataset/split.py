"""The split of a labelled set whose ``split`` column is empty (pure): grouped by wafer, so a wafer never straddles
two splits (its dies share a process history and an optics state; a model tested on dies of wafers it trained on
scores too well), and stratified, so every class is in train, val and test.

Rule, deterministic for a seed:
1. Wafers are keyed by (lot_id, wafer_id). Classes are visited rarest first (fewest wafers, then fewest dies).
2. For each class and each split that does not hold it yet, the unassigned wafer with the most dies of that class
   goes to that split (ties broken by the seeded order). A class needs at least as many wafers as there are splits.
3. Every other wafer goes, in the seeded order, to the split furthest under its share of dies
   (``SHARES``: train 70%, val 15%, test 15%).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

SPLITS = ("train", "val", "test")
SHARES = {"train": 0.70, "val": 0.15, "test": 0.15}

Wafer = Hashable  # (lot_id, wafer_id)


def split_by_wafer(dies: Iterable[tuple[Wafer, str]], seed: int = 0) -> dict[Wafer, str]:
    """``dies``: (wafer, class) per die. The split of every wafer; classes on too few wafers to be in every split
    are placed as far as they go (``missing`` tells which)."""
    per_wafer: dict[Wafer, Counter[str]] = defaultdict(Counter)
    for wafer, cls in dies:
        per_wafer[wafer][cls] += 1
    rng = random.Random(seed)
    order = sorted(per_wafer, key=repr)
    rng.shuffle(order)
    rank = {wafer: i for i, wafer in enumerate(order)}
    wafers_of: dict[str, list[Wafer]] = defaultdict(list)
    for wafer in order:
        for cls in per_wafer[wafer]:
            wafers_of[cls].append(wafer)
    die_count = Counter[str]()
    for counts in per_wafer.values():
        die_count.update(counts)
    assigned: dict[Wafer, str] = {}
    held: dict[str, set[str]] = defaultdict(set)  # split -> classes it holds

    def assign(wafer: Wafer, split: str) -> None:
        assigned[wafer] = split
        held[split].update(per_wafer[wafer])

    for cls in sorted(wafers_of, key=lambda c: (len(wafers_of[c]), die_count[c], c)):
        for split in SPLITS:
            if cls in held[split]:
                continue
            free = [w for w in wafers_of[cls] if w not in assigned]
            if free:
                assign(max(free, key=lambda w: (per_wafer[w][cls], -rank[w])), split)
    total = sum(die_count.values())
    dies_in: Counter[str] = Counter()
    for wafer, split in assigned.items():
        dies_in[split] += sum(per_wafer[wafer].values())
    for wafer in order:
        if wafer in assigned:
            continue
        split = min(SPLITS, key=lambda s: (dies_in[s] / total - SHARES[s], SPLITS.index(s)))
        assign(wafer, split)
        dies_in[split] += sum(per_wafer[wafer].values())
    return assigned


def missing(assignment: Mapping[Wafer, str], dies: Sequence[tuple[Wafer, str]]) -> dict[str, list[str]]:
    """Per class, the splits that hold none of its dies (empty when every class is in every split)."""
    present: dict[str, set[str]] = defaultdict(set)
    for wafer, cls in dies:
        present[cls].add(assignment[wafer])
    return {cls: [s for s in SPLITS if s not in splits] for cls, splits in sorted(present.items()) if len(splits) < 3}
