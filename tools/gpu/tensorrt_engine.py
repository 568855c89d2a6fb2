"""TensorRT plans on this machine's GPU: probe the GPU, build a plan from ONNX, run it on host batches.

The one place the project imports ``tensorrt`` and ``pycuda``. Both are imported inside the functions that use them,
so this module (and ``tools.gpu.build_engines``, which orchestrates it) imports on machines without either; there
:func:`probe_gpu` raises :class:`EngineEnvironmentError`. Plans are built from strongly typed networks (the types in
the ONNX file decide the precision) with one optimisation profile on every input, and run with pycuda device buffers
and ``execute_async_v3`` after the engine's I/O tensors are checked against the config's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError

WORKSPACE_BYTES = 2 << 30
NUMPY_TYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_INT64": np.int64}
TRT_TYPES = {"TYPE_UINT8": "uint8", "TYPE_FP32": "float32", "TYPE_INT64": "int64"}  # names in the tensorrt module


class EngineEnvironmentError(EdgeError):
    """TensorRT, pycuda or a CUDA GPU is missing: engines cannot be built on this machine."""


class GpuUnusable(EngineEnvironmentError):
    """TensorRT and pycuda are there but CUDA finds no usable GPU (the driver fails, or the device is not visible)."""


class EngineBuildError(EdgeError):
    """An engine cannot be built, or the engine built does not match ONNX Runtime."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a config.pbtxt declares; ``dims`` without the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Gpu:
    """The facts about this machine that a plan depends on."""

    tensorrt_version: str
    name: str
    compute_capability: str


def probe_gpu(device: int = 0) -> Gpu:
    """TensorRT version, name and compute capability of CUDA device ``device``; EngineEnvironmentError if TensorRT or
    pycuda is absent, GpuUnusable (one) when CUDA finds no such device or cannot initialise."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise EngineEnvironmentError(f"the tensorrt Python bindings cannot be imported ({exc})") from exc
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        raise EngineEnvironmentError(f"pycuda cannot be imported ({exc})") from exc
    try:
        cuda.init()
        count = cuda.Device.count()
        if not 0 <= device < count:
            raise GpuUnusable(f"no CUDA device {device}: {count} visible")
        gpu = cuda.Device(device)
        major, minor = gpu.compute_capability()
        return Gpu(trt.__version__, gpu.name(), f"{major}.{minor}")
    except cuda.Error as exc:
        raise GpuUnusable(f"no usable CUDA GPU ({exc})") from exc


@contextmanager
def cuda_context(device: int = 0) -> Iterator[None]:
    """The primary CUDA context of ``device`` made current (the one TensorRT's runtime calls use too)."""
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(device).retain_primary_context()
    context.push()
    try:
        yield
    finally:
        context.pop()


def build_plan(onnx: Path, profile: tuple[int, int, int]) -> bytes:
    """A serialized engine for ``onnx``: strongly typed network, one profile (min, opt, max batch) on every input."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 11: always, flag gone
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx.name}: the TensorRT ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    shapes = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        item = tuple(tensor.shape)[1:]
        if any(d < 0 for d in item):
            raise EngineBuildError(f"{onnx.name}: input {tensor.name} has dynamic dims besides the batch: {item}")
        shapes.set_shape(tensor.name, *[(batch, *item) for batch in profile])
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx.name}: TensorRT built no engine (its log above says why)")
    return bytes(plan)


def _check_interface(trt: Any, engine: Any, tensors: Mapping[str, list[TensorSpec]]) -> None:
    """The engine's I/O tensors are exactly the config's: names, direction, data type, dims after the batch."""
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    declared = {spec.name: (section, spec) for section, specs in tensors.items() for spec in specs}
    if names != set(declared):
        raise EngineBuildError(f"engine tensors {sorted(names)} are not the config's {sorted(declared)}")
    for name, (section, spec) in declared.items():
        mode = trt.TensorIOMode.INPUT if section == "input" else trt.TensorIOMode.OUTPUT
        shape = tuple(engine.get_tensor_shape(name))
        dims_fit = len(shape) == len(spec.dims) + 1 and all(s in (-1, d) for s, d in zip(shape[1:], spec.dims))
        dtype = engine.get_tensor_dtype(name)
        if engine.get_tensor_mode(name) != mode or dtype != getattr(trt, TRT_TYPES[spec.data_type]) or not dims_fit:
            raise EngineBuildError(f"engine {section} {name} is {dtype} {shape}; the config declares {spec}")


def run_plan(
    plan: bytes, batches: Sequence[Mapping[str, np.ndarray]], tensors: Mapping[str, list[TensorSpec]]
) -> list[dict[str, np.ndarray]]:
    """The engine's outputs for each input batch (pycuda device buffers, ``execute_async_v3``; context current)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the plan does not deserialize")
    _check_interface(trt, engine, tensors)
    try:
        return _run_batches(cuda, engine, batches, tensors)
    except cuda.Error as exc:  # out of device memory, a launch failure: this engine cannot be verified, so not served
        raise EngineBuildError(f"the engine failed on the GPU: {exc}") from exc


def _run_batches(
    cuda: Any, engine: Any, batches: Sequence[Mapping[str, np.ndarray]], tensors: Mapping[str, list[TensorSpec]]
) -> list[dict[str, np.ndarray]]:
    context, stream = engine.create_execution_context(), cuda.Stream()
    results = []
    for batch in batches:
        host: dict[str, np.ndarray] = {}
        for spec in tensors["input"]:
            host[spec.name] = cuda.pagelocked_empty(batch[spec.name].shape, NUMPY_TYPES[spec.data_type])
            host[spec.name][...] = batch[spec.name]
            if not context.set_input_shape(spec.name, host[spec.name].shape):
                raise EngineBuildError(f"input shape {host[spec.name].shape} of {spec.name} is outside the profile")
        for spec in tensors["output"]:
            shape = tuple(context.get_tensor_shape(spec.name))
            host[spec.name] = cuda.pagelocked_empty(shape, NUMPY_TYPES[spec.data_type])
        device = {name: cuda.mem_alloc(max(array.nbytes, 1)) for name, array in host.items()}
        try:
            for name in host:
                context.set_tensor_address(name, int(device[name]))
            for spec in tensors["input"]:
                cuda.memcpy_htod_async(device[spec.name], host[spec.name], stream)
            if not context.execute_async_v3(stream.handle):
                raise EngineBuildError("execute_async_v3 failed")
            for spec in tensors["output"]:
                cuda.memcpy_dtoh_async(host[spec.name], device[spec.name], stream)
            stream.synchronize()
        finally:
            for allocation in device.values():
                allocation.free()
        results.append({spec.name: np.array(host[spec.name]) for spec in tensors["output"]})
    return results
