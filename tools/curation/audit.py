"""Suspect labels in a labelled pool (pure numpy; ``edge-inspect data audit``).

Two signals, each in 0..1, averaged where both exist:

- **Neighbours disagree**: the similarity-weighted share of a die's ``k`` nearest neighbours (cosine, in embedding
  space) that carry another label. A die labelled A that sits among B's is suspect; the neighbours' majority label
  is offered as the likely one.
- **The model confidently disagrees** (the confident-learning rule): each class j gets a threshold t_j, the model's
  mean probability of j over the dies labelled j. A die labelled y is suspect when for some other class j the model
  gives p_j >= t_j; its score is p_j - p_y for the most probable such j. Labels the model does not know (a fab's own
  class) have the neighbour signal only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tools.curation.geometry import neighbours, unit


@dataclass(frozen=True)
class Suspect:
    index: int
    score: float  # 0..1, higher is more suspect
    neighbour_disagreement: float  # weighted share of the neighbours labelled otherwise
    neighbour_label: str  # the neighbours' most common label (weighted)
    model_class: str | None  # the class the model confidently prefers, if any
    model_p: float | None  # its probability
    label_p: float | None  # the model's probability of the given label (None: a label the model does not know)
    neighbours: list[int]  # the k nearest, most similar first


def confident_thresholds(
    probs: npt.NDArray[np.float32], labels: Sequence[str], classes: Sequence[str]
) -> dict[str, float]:
    """Per class the model knows and the pool labels: the mean probability the model gives it on dies labelled so."""
    names = np.asarray(labels)
    return {c: float(probs[names == c, j].mean()) for j, c in enumerate(classes) if np.any(names == c)}


def audit(
    vectors: npt.NDArray[np.floating], labels: Sequence[str], probs: npt.NDArray[np.float32], classes: Sequence[str],
    k: int = 10,
) -> list[Suspect]:  # fmt: skip
    """Every die, most suspect first."""
    x = unit(vectors)
    index, similarity = neighbours(x, k)
    names = np.asarray(labels)
    weights = np.clip(similarity, 0.0, None) + 1e-6
    column = {c: j for j, c in enumerate(classes)}
    thresholds = confident_thresholds(probs, labels, classes) if len(probs) else {}
    out = []
    for i, label in enumerate(labels):
        near = names[index[i]]
        disagree = float(weights[i][near != label].sum() / weights[i].sum()) if len(near) else 0.0
        tally: Counter[str] = Counter()
        for name, w in zip(near, weights[i], strict=True):
            tally[str(name)] += float(w)
        majority = tally.most_common(1)[0][0] if tally else label
        model_class = model_p = label_p = None
        signals = [disagree]
        if label in column and len(probs):
            label_p = float(probs[i, column[label]])
            over = [(float(probs[i, j]), c) for c, j in column.items()
                    if c != label and c in thresholds and probs[i, j] >= thresholds[c]]  # fmt: skip
            model_score = 0.0
            if over:
                model_p, model_class = max(over)
                model_score = max(0.0, model_p - label_p)
            signals.append(model_score)
        out.append(Suspect(i, float(np.mean(signals)), disagree, majority, model_class, model_p, label_p,
                           [int(j) for j in index[i]]))  # fmt: skip
    return sorted(out, key=lambda s: (-s.score, s.index))
