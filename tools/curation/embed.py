"""Embeddings of a labelled folder's dies by a served classifier version, the same way serving computes them.

Each die goes through the serving image rule (``edge.contract.images``), its wafer's process row through the serving
vector in the model's own parameter order (``edge.process_params``; parameters the model does not know are left
out, a wafer without a row has the modality absent), its note through ``edge.notes``. The version's ``model.onnx``
runs in ONNX Runtime on the CPU with the ``EMBEDDING`` output the repository build adds (``tools.embedding_output``;
added here in memory for a version built before it). Out: per die its embedding, the model's class probabilities
and the classes in their order.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from edge.contract.images import model_input, read
from edge.errors import ModelRepositoryError
from edge.models.pbtxt import config_parameters
from edge.models.repository import own_config_text, versions
from edge.notes import tokenize
from edge.process_params import process_vector
from tools.dataset.folder import DataSet, Die
from tools.embedding_output import EMBEDDING, with_embedding

CLASSIFIER = "classifier"
BATCH = 32
_IMAGE_DIMS = re.compile(r'"IMAGE"[^\n]*?dims: \[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]')


@dataclass(frozen=True)
class Embedded:
    """One embedding and the model's probabilities per die, in the order the dies were given."""

    ids: tuple[str, ...]
    labels: tuple[str, ...]  # each die's class in the folder
    vectors: npt.NDArray[np.float32]  # (N, D)
    probs: npt.NDArray[np.float32]  # (N, C) over ``classes``
    classes: tuple[str, ...]  # the model's classes, in its output order
    model: str  # "<repository> classifier version N"


class Embedder:
    """Version ``version`` (default: the newest) of the classifier in ``repository``, in ONNX Runtime."""

    def __init__(self, repository: Path, version: int | None = None, threads: int = 2) -> None:
        import onnxruntime as ort

        found = versions(repository, CLASSIFIER)
        if not found:
            raise ModelRepositoryError(f"{repository} holds no {CLASSIFIER} version")
        self.version = found[-1] if version is None else version
        if self.version not in found:
            raise ModelRepositoryError(f"{repository} has no {CLASSIFIER} version {self.version} (it has {found})")
        folder = repository / CLASSIFIER / str(self.version)
        path = folder / "model.onnx"
        if not path.is_file():
            raise ModelRepositoryError(f"{folder} has no model.onnx: the data tools need the ONNX (CPU) variant")
        config = own_config_text(repository, CLASSIFIER, self.version)
        params = config_parameters(config)
        try:
            self.classes = tuple(json.loads(params["classes"]))
            self.parameters = tuple(json.loads(params["process_parameters"]))
        except (KeyError, ValueError) as exc:
            raise ModelRepositoryError(f"{folder}/config.pbtxt does not declare its classes and parameters") from exc
        dims = _IMAGE_DIMS.search(config)
        self.size = (int(dims.group(2)), int(dims.group(3))) if dims else (256, 256)
        model = with_embedding(onnx.load(str(path)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.name = f"{repository} {CLASSIFIER} version {self.version}"

    def embed(self, data: DataSet, dies: list[Die] | None = None) -> Embedded:
        """Every die of ``data`` (or ``dies``), in that order."""
        dies = list(data.dies) if dies is None else dies
        vectors, probs = [], []
        with ThreadPoolExecutor(max_workers=2) as pool:  # OpenCV decodes outside the GIL
            for start in range(0, len(dies), BATCH):
                chunk = dies[start : start + BATCH]
                images = list(pool.map(lambda d: model_input(read(str(d.path)), self.size).rgb, chunk))
                feeds = self._feeds(data, chunk, images)
                p, e = self._session.run(["PROBS", EMBEDDING], feeds)
                probs.append(p)
                vectors.append(e)
        width = len(self.classes)
        return Embedded(
            ids=tuple(d.id for d in dies),
            labels=tuple(d.cls for d in dies),
            vectors=np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32),
            probs=np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, width), np.float32),
            classes=self.classes,
            model=self.name,
        )

    def _feeds(
        self, data: DataSet, dies: list[Die], images: list[npt.NDArray[np.uint8]]
    ) -> dict[str, npt.NDArray[np.generic]]:
        process, present, notes = [], [], []
        for die in dies:
            row = data.process.get(die.process_key, ())
            values = {name: v for name, v in zip(data.parameters, row, strict=False) if not math.isnan(v)}
            vector, has_process = process_vector(values, self.parameters)
            tokens, has_note = tokenize(data.notes.get(die.process_key))
            process.append(vector)
            present.append((float(has_process), float(has_note)))
            notes.append(tokens)
        return {
            "IMAGE": np.stack(images),
            "PROCESS": np.stack(process).astype(np.float32),
            "PRESENT": np.array(present, np.float32),
            "NOTES": np.stack(notes).astype(np.int64),
        }
