"""`anomaly` on CPU: the convolutional VAE's ONNX file under ONNX Runtime (see ort_model.py)."""

from ort_model import OnnxRuntimeModel


class TritonPythonModel(OnnxRuntimeModel):
    """IMAGE (UINT8 [B,1,256,256]) -> SCORE (FP32 [B,1]), HEATMAP (FP32 [B,32,32])."""
