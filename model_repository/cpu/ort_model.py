"""ONNX Runtime on CPU behind Triton's Python backend, shared by the CPU models.

`tools/build_repository.py` copies this file into each model's version folder, beside `model.py`
and `model.onnx`; Triton puts that folder on `sys.path`. Input and output names and types come from
the model's config.pbtxt, so one class serves every model. All requests of one `execute` call run as
one ONNX Runtime batch and are split back per request.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULT_INTRA_OP_THREADS = 1


class OnnxRuntimeModel:
    """A Triton Python-backend model running `<version folder>/model.onnx` with ONNX Runtime."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", DEFAULT_INTRA_OP_THREADS))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave idle cores to others
        # INT8 forms: exact integer products on every x86 CPU. Without VNNI, ORT's default INT8 kernels sum pairs of
        # products in saturating 16-bit lanes and the same file scores differently (tools/quantize.py).
        options.add_session_config_entry("session.x64quantprecision", "1")
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [item["name"] for item in config["input"]]
        self.outputs = [(item["name"], pb_utils.triton_string_to_numpy(item["data_type"])) for item in config["output"]]
        onnx_inputs = sorted(node.name for node in self.session.get_inputs())
        onnx_outputs = sorted(node.name for node in self.session.get_outputs())
        if onnx_inputs != sorted(self.inputs) or not {name for name, _ in self.outputs} <= set(onnx_outputs):
            raise ValueError(f"{path} has inputs {onnx_inputs} and outputs {onnx_outputs}: config.pbtxt disagrees")

    def execute(self, requests: list) -> list:
        """One response per request; a failed batch is retried request by request to isolate the culprit."""
        try:
            return self._run(requests)
        except Exception:  # noqa: BLE001 - retried alone: _respond reports each request's own error
            return [self._respond(request) for request in requests]

    def _respond(self, request: object) -> object:
        try:
            return self._run([request])[0]
        except Exception as exc:  # noqa: BLE001 - an error response, never a dead stub
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))

    def _run(self, requests: list) -> list:
        arrays = {
            name: [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            for name in self.inputs
        }
        feeds = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in arrays.items()}
        results = self.session.run([name for name, _ in self.outputs], feeds)
        bounds = np.cumsum([0, *(len(part) for part in arrays[self.inputs[0]])])
        responses = []
        for start, end in itertools.pairwise(bounds):
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start:end], dtype=dtype))
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
