"""The 2-D map of a pool's embeddings as a PNG: one dot per die coloured by its label, chosen or suspect dies ringed.

The projection is scikit-learn's t-SNE (cosine distances, on the first 50 principal components, seeded so the same
pool draws the same map); over ``TSNE_LIMIT`` dies the map is the first two principal components, since t-SNE's
cost grows faster than a station's CPU allows. OpenCV (already the project's imaging library) draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from tools.curation.geometry import unit

TSNE_LIMIT = 20000
SIZE = (900, 1240)  # height, width: the map on the left, the legend on the right
MAP = 880
MARGIN = 20
# 20 well-separated colours (BGR), then they repeat
PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23), (232, 199, 174), (120, 187, 255),
           (138, 223, 152), (150, 152, 255), (213, 176, 197), (148, 156, 196), (210, 182, 247), (199, 199, 199),
           (141, 219, 219), (229, 218, 158)]  # fmt: skip


def project(vectors: npt.NDArray[np.floating], seed: int = 0) -> npt.NDArray[np.float32]:
    """(N, 2) coordinates of the (N, D) embeddings."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = unit(vectors)
    n = len(x)
    if n < 3:
        return np.zeros((n, 2), np.float32)
    reduced = PCA(n_components=min(50, n - 1, x.shape[1]), random_state=seed).fit_transform(x)
    if n > TSNE_LIMIT:
        return reduced[:, :2].astype(np.float32)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", metric="cosine", random_state=seed)
    return tsne.fit_transform(reduced).astype(np.float32)


def draw(
    xy: npt.NDArray[np.float32], labels: Sequence[str], marked: Sequence[int], title: str, marked_as: str, path: Path,
) -> None:  # fmt: skip
    """Write the map to ``path`` (PNG): dots by label, ``marked`` ringed in black, a legend with each label's count."""
    canvas = np.full((*SIZE, 3), 255, np.uint8)
    names = sorted(set(labels))
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    if len(xy):
        low, high = xy.min(axis=0), xy.max(axis=0)
        scaled = (xy - low) / np.where(high > low, high - low, 1.0)
        points = (MARGIN + scaled * (MAP - 2 * MARGIN)).astype(int) + np.array([0, SIZE[0] - MAP])
        for (px, py), label in zip(points, labels, strict=True):
            cv2.circle(canvas, (int(px), int(py)), 3, colour[label], -1, cv2.LINE_AA)
        for i in marked:
            cv2.circle(canvas, (int(points[i][0]), int(points[i][1])), 6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (MARGIN, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    x0, y = MAP + 20, 50
    counts = {name: sum(1 for label in labels if label == name) for name in names}
    for name in names:
        cv2.circle(canvas, (x0, y - 4), 5, colour[name], -1, cv2.LINE_AA)
        cv2.putText(canvas, f"{name} ({counts[name]})", (x0 + 12, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
        y += 20
    cv2.circle(canvas, (x0, y + 6), 6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"{marked_as} ({len(marked)})", (x0 + 12, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0),
                1, cv2.LINE_AA)  # fmt: skip
    ok, data = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError(f"cannot encode the map for {path}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.tobytes())
    tmp.replace(path)
