"""`classifier` on CPU: the multimodal classifier's ONNX file under ONNX Runtime (see ort_model.py)."""

from ort_model import OnnxRuntimeModel


class TritonPythonModel(OnnxRuntimeModel):
    """IMAGE, PROCESS, PRESENT, NOTES -> PROBS (FP32 [B,16]), ATTENTION (FP32 [B,64]), EMBEDDING (FP32 [B,128])."""
