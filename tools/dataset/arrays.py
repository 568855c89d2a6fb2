"""A checked folder (``tools.dataset.folder``) as the arrays training takes, built by the rules serving applies: each
image through ``edge.contract.images`` (depth, channels, size), each wafer's process row through
``edge.process_params.process_vector`` in the data's parameter order (an empty cell, like a missing value on the
wire, becomes 0; a wafer without a row, or with only empty cells, has the modality absent), each note through
``edge.notes.tokenize``."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.contract.images import model_input, read
from edge.flow import Tensors
from edge.notes import tokenize
from edge.process_params import process_vector
from tools.dataset.folder import DataSet, Die

MODEL_SIZE = (256, 256)


@dataclass(frozen=True)
class Arrays:
    ids: tuple[str, ...]
    images: npt.NDArray[np.uint8]  # (N, 3, H, W) RGB at the models' size: the classifier's IMAGE
    grey: npt.NDArray[np.uint8]  # (N, 1, H, W): the anomaly model's IMAGE
    labels: npt.NDArray[np.int64]  # (N,) index into DataSet.classes
    process: npt.NDArray[np.float32]  # (N, P) raw values in DataSet.parameters order, 0 where absent
    present: npt.NDArray[np.float32]  # (N, 2): [process row present, note present]
    notes: npt.NDArray[np.int64]  # (N, 32) token ids
    tool: npt.NDArray[np.int64]  # (N,) index into ``tools``
    recipe: npt.NDArray[np.int64]  # (N,) index into ``recipes``
    tools: tuple[str, ...]  # every tool id of the set, sorted
    recipes: tuple[str, ...]  # every recipe id of the set, sorted

    def __len__(self) -> int:
        return len(self.ids)


def _image(die: Die, size: tuple[int, int]) -> Tensors:
    return model_input(read(str(die.path)), size)


def arrays(data: DataSet, split: str, size: tuple[int, int] = MODEL_SIZE, workers: int = 4) -> Arrays:
    """The dies of ``split`` (train, val or test) as arrays, in the folder's order."""
    dies = data.split(split)
    tools = tuple(sorted({d.tool_id for d in data.dies}))
    recipes = tuple(sorted({d.recipe_id for d in data.dies}))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # OpenCV decodes and resizes outside the GIL
        images = list(pool.map(lambda d: _image(d, size), dies))
    process, present, notes = [], [], []
    for die in dies:
        row = data.process.get(die.process_key, ())
        values = {name: v for name, v in zip(data.parameters, row, strict=False) if not math.isnan(v)}
        vector, has_process = process_vector(values, data.parameters)  # no row, or only empty cells: absent
        tokens, has_note = tokenize(data.notes.get(die.process_key))
        process.append(vector)
        present.append((float(has_process), float(has_note)))
        notes.append(tokens)
    n, width = len(dies), len(data.parameters)
    return Arrays(
        ids=tuple(d.id for d in dies),
        images=np.stack([t.rgb for t in images]) if images else np.zeros((0, 3, *size), np.uint8),
        grey=np.stack([t.grey for t in images]) if images else np.zeros((0, 1, *size), np.uint8),
        labels=np.array([data.classes.index(d.cls) for d in dies], np.int64),
        process=np.stack(process) if process else np.zeros((0, width), np.float32),
        present=np.array(present, np.float32).reshape(n, 2),
        notes=np.stack(notes) if notes else np.zeros((0, 32), np.int64),
        tool=np.array([tools.index(d.tool_id) for d in dies], np.int64),
        recipe=np.array([recipes.index(d.recipe_id) for d in dies], np.int64),
        tools=tools,
        recipes=recipes,
    )
