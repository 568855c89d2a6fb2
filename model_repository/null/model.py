"""A null model behind Triton's Python backend: the served model's tensors, almost no compute.

`tools.bench.null_repository` puts this file in place of each model's `model.py`, beside that model's own config, so
the daemon sees the same inputs, outputs and parameters and only the arithmetic is gone. Its answers follow a cheap mark
of each image (a strided sum of its pixels): about one die in ten comes out defective, so the daemon decides, keeps
captures and publishes events as it would on a line; the rest come out clean.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

DEFECT_EVERY = 10  # about one die in this many is marked defective


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.image = "IMAGE"
        self.outputs = {item["name"]: [int(d) for d in item["dims"]] for item in config["output"]}
        self.pass_band = float(params.get("pass_band", "0.1") or 0.1)
        self.reject_band = float(params.get("reject_band", "0.2") or 0.2)

    def execute(self, requests: list) -> list:
        return [self._respond(request) for request in requests]

    def _respond(self, request: object) -> object:
        image = pb_utils.get_input_tensor_by_name(request, self.image).as_numpy()
        marks = image.reshape(len(image), -1)[:, ::4099].sum(axis=1, dtype=np.int64)
        defective = marks % DEFECT_EVERY == 0
        tensors = [pb_utils.Tensor(name, self._output(name, dims, marks, defective))
                   for name, dims in self.outputs.items()]  # fmt: skip
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _output(self, name: str, dims: list[int], marks: np.ndarray, defective: np.ndarray) -> np.ndarray:
        n = len(marks)
        out = np.zeros((n, *dims), np.float32)
        if name == "SCORE":  # under the pass band, or over the reject band
            out[:, 0] = np.where(defective, 1.5 * self.reject_band, 0.5 * self.pass_band)
        elif name == "HEATMAP":  # the score in one cell
            cells = marks % (dims[0] * dims[1])
            out.reshape(n, -1)[np.arange(n), cells] = np.where(defective, 1.5 * self.reject_band, 0.0)
        elif name == "PROBS":  # GOOD, or one of the defect classes, at 0.97
            top = np.where(defective, 1 + marks % (dims[0] - 1), 0)
            out[:] = 0.03 / (dims[0] - 1)
            out[np.arange(n), top] = 0.97
        elif name == "ATTENTION":
            out[:] = 1.0 / dims[0]
        elif name == "EMBEDDING":  # one direction per mark
            out[np.arange(n), marks % dims[0]] = 1.0
        return out
