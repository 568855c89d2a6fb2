"""The classifier's embedding as a served output: ``EMBEDDING`` FP32 [B, 128], the attention-pooled representation
as the class head reads it: after the head's LayerNormalization (``/model/head/head.0``), so centred and scaled per
die, which keeps what all dies share from dominating a cosine similarity (before the normalisation, dies of
different classes lie much closer together by cosine).

Training exports PROBS and ATTENTION only (``tools.export``); the repository build adds this output to the ONNX form
it serves, so every served classifier version carries its embedding without retraining. The graph is otherwise
untouched: the new output is an ``Identity`` of a tensor the graph already computes, so PROBS and ATTENTION come out
bit for bit as before. FP32, FP16 and INT8 (Q/DQ) forms all compute that tensor in FP32 (the FP16 form runs the
LayerNormalization in FP32 and casts after it; the INT8 form quantises after it). The data tools (``edge-inspect
data``), the capture store and the similar-defect search read it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from edge.errors import ModelRepositoryError
from edge.models.pbtxt import without_output

EMBEDDING = "EMBEDDING"
HEAD_NODE = "/model/head/head.0/LayerNormalization"  # the head's first layer: its output is the embedding


def with_embedding(model: onnx.ModelProto, dim: int | None = None) -> onnx.ModelProto:
    """``model`` with an ``EMBEDDING`` output (FP32 [batch, dim]); ``dim`` found by ONNX shape inference when None
    (left symbolic where inference cannot tell)."""
    graph = model.graph
    if any(output.name == EMBEDDING for output in graph.output):
        return model
    head = next((node for node in graph.node if node.op_type == "LayerNormalization" and node.name.endswith(HEAD_NODE)),
                None)  # fmt: skip
    if head is None:
        raise ModelRepositoryError(f"the classifier graph has no node {HEAD_NODE}: cannot expose its embedding")
    if dim is None:
        dim = _width(model, head.output[0])
    graph.node.append(helper.make_node("Identity", [head.output[0]], [EMBEDDING], name="embedding_output"))
    graph.output.append(helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", dim or "width"]))
    onnx.checker.check_model(model)
    return model


def _width(model: onnx.ModelProto, tensor: str) -> int | None:
    """The last dimension of ``tensor`` by ONNX shape inference, if it is a known number."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        return None
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        if info.name == tensor:
            dims = info.type.tensor_type.shape.dim
            return int(dims[-1].dim_value) if dims and dims[-1].dim_value > 0 else None
    return None


def write_with_embedding(source: Path, target: Path) -> bool:
    """Copy the classifier ONNX ``source`` to ``target``, with its ``EMBEDDING`` output added where its graph has the
    head it is read from; whether it was (a graph of another shape, or a file ONNX cannot parse, is copied as it is
    and its config does not declare the output: ``declared``)."""
    try:
        model = with_embedding(onnx.load(str(source)))
    except (ModelRepositoryError, DecodeError, ValueError, onnx.checker.ValidationError):
        shutil.copyfile(source, target)
        return False
    onnx.save(model, str(target))
    return True


def declared(config: str, has_embedding: bool) -> str:
    """The config text with its ``EMBEDDING`` output entry removed when the served graph has none."""
    return config if has_embedding else without_output(config, EMBEDDING)
