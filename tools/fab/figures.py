"""The model card's pictures, drawn with OpenCV (already a dependency; no plotting library needed for three
figures): the confusion matrix, per-class recall with and without the process log, and the worst errors on
``test`` with their anomaly heatmap and the classifier's attention."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
BLUE, ORANGE = (180, 110, 30), (40, 140, 240)  # BGR


def _text(img: npt.NDArray[np.uint8], text: str, org: tuple[int, int], scale: float = 0.45,
          color: tuple[int, int, int] = BLACK) -> None:  # fmt: skip
    cv2.putText(img, text, org, FONT, scale, color, 1, cv2.LINE_AA)


def confusion_png(path: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], cell: int = 56) -> None:
    """Rows: true class; columns: predicted; shade: the share of the row; number: the count."""
    m = np.asarray(matrix, float)
    n, left, top = len(classes), 120, 110
    img = np.full((top + n * cell + 20, left + n * cell + 20, 3), 255, np.uint8)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    for i in range(n):
        _text(img, classes[i][:14], (6, top + i * cell + cell // 2 + 5))
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            shade = int(255 * (1 - share[i, j]))
            color = (255, shade, shade) if i == j else (shade, shade, 255)
            cv2.rectangle(img, (x, y), (x + cell - 2, y + cell - 2), color, -1)
            label = str(int(m[i, j]))
            ink = WHITE if share[i, j] > 0.6 else BLACK
            _text(img, label, (x + cell // 2 - 5 * len(label), y + cell // 2 + 5), color=ink)
    for j in range(n):
        org = (left + j * cell + cell // 2, top - 8)
        rotated = np.full((cell, 100, 3), 255, np.uint8)
        _text(rotated, classes[j][:14], (4, cell // 2 + 5))
        rotated = cv2.rotate(rotated, cv2.ROTATE_90_COUNTERCLOCKWISE)
        img[top - 100 - 4 : top - 4, org[0] - cell // 2 : org[0] + cell // 2] = rotated
    _text(img, "true \\ predicted", (6, 20), 0.5)
    cv2.imwrite(str(path), img)


def recall_png(path: Path, recall: dict[str, float], recall_no_log: dict[str, float]) -> None:
    """Per class, recall with the process log (blue) and with it marked missing (orange), 0..1."""
    classes = list(recall)
    row, left, width = 34, 120, 400
    img = np.full((len(classes) * row + 60, left + width + 80, 3), 255, np.uint8)
    for k, c in enumerate(classes):
        y = 30 + k * row
        _text(img, c[:14], (6, y + 16))
        for off, value, color in ((0, recall[c], BLUE), (13, recall_no_log.get(c, 0.0), ORANGE)):
            cv2.rectangle(img, (left, y + off), (left + int(width * value), y + off + 11), color, -1)
            _text(img, f"{value:.2f}", (left + int(width * value) + 4, y + off + 10), 0.38)
    for frac in (0.8, 1.0):
        x = left + int(width * frac)
        cv2.line(img, (x, 24), (x, 30 + len(classes) * row), GREY, 1)
    _text(img, "recall: with the process log (blue), without it (orange)", (6, 16), 0.45)
    cv2.imwrite(str(path), img)


def _overlay(grey: npt.NDArray[np.uint8], values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """``values`` (a coarse grid) stretched over the die, coloured (JET), blended 50/50 with it."""
    size = grey.shape[::-1]
    v = values.astype(np.float32)
    v = (v - v.min()) / max(float(v.max() - v.min()), 1e-12)
    heat = cv2.applyColorMap(cv2.resize((v * 255).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST),
                             cv2.COLORMAP_JET)  # fmt: skip
    return cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.5, heat, 0.5, 0)


def worst_errors_png(
    path: Path, grey: npt.NDArray[np.uint8], heatmap: npt.NDArray[np.float32], attention: npt.NDArray[np.float32],
    captions: Sequence[str],
) -> None:  # fmt: skip
    """One row per die: the die, its anomaly HEATMAP, the classifier's ATTENTION over the 8x8 patches."""
    tile, caption = 192, 22
    rows = []
    for k, text in enumerate(captions):
        die = cv2.resize(grey[k, 0], (tile, tile), interpolation=cv2.INTER_AREA)
        side = round(float(np.sqrt(attention.shape[1])))
        panels = [cv2.cvtColor(die, cv2.COLOR_GRAY2BGR), _overlay(die, heatmap[k]),
                  _overlay(die, attention[k].reshape(side, side))]  # fmt: skip
        row = np.full((tile + caption, 3 * tile + 8, 3), 255, np.uint8)
        for i, panel in enumerate(panels):
            row[caption:, i * (tile + 4) : i * (tile + 4) + tile] = panel
        _text(row, text, (4, 16))
        rows.append(row)
    if not rows:
        rows = [np.full((40, 3 * tile + 8, 3), 255, np.uint8)]
        _text(rows[0], "no errors on test", (4, 24))
    header = np.full((24, 3 * tile + 8, 3), 255, np.uint8)
    _text(header, "die | anomaly heatmap | classifier attention", (4, 16))
    cv2.imwrite(str(path), np.vstack([header, *rows]))


def worst_errors(probs: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], n: int = 8) -> npt.NDArray[np.int64]:
    """The misclassified dies the model was surest about, surest first."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    return wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]
