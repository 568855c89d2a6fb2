"""Cosine geometry of embeddings, shared by selection and the label audit (pure numpy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BLOCK = 4096  # rows of the similarity matrix held at once


def unit(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Rows scaled to length 1 (a zero row stays zero)."""
    x = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def neighbours(x: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact ``k`` nearest neighbours of every row of unit vectors ``x`` among the others, by cosine similarity:
    (indices (N, k), similarities (N, k)), most similar first."""
    n = len(x)
    k = min(k, n - 1)
    index = np.zeros((n, max(k, 0)), np.int64)
    similarity = np.zeros((n, max(k, 0)), np.float32)
    if k <= 0:
        return index, similarity
    for start in range(0, n, BLOCK):
        sims = x[start : start + BLOCK] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # never one's own neighbour
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        index[start : start + BLOCK] = np.take_along_axis(top, order, axis=1)
        similarity[start : start + BLOCK] = np.take_along_axis(sims, index[start : start + BLOCK], axis=1)
    return index, similarity
