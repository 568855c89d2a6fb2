"""Offline tooling: synthetic fab data, model training and ONNX export, simulators, benchmarks."""
