"""What Triton serves on a GPU station: the GPU repository while an NVIDIA GPU is usable, else the CPU variant.

    python -m tools.gpu.station_repository --models DIR --out REPOSITORY \
        [--precision anomaly=fp16 classifier=int8] [--max-batch 32] [--device 0] [--force]

Run before Triton starts (``systemd/edge-engines.service``, ``tools/container_start.sh``). REPOSITORY is the path
Triton serves: a link, replaced in one step, to one of two folders beside it.

    REPOSITORY.gpu/   the GPU repository: ``tools.gpu.build_engines`` builds and checks the TensorRT plans there (a
                      model whose plan is not installed is served by ONNX Runtime on the GPU, and says why)
    REPOSITORY.cpu/   the CPU variant, assembled from the same ONNX forms by ``tools.build_repository`` (Triton's
                      Python backend running ONNX Runtime on the CPU, FP32 forms; a new version only when they change)

A GPU is usable when a ``/dev/nvidia<N>`` device node exists, ``nvidia-smi -L`` (where installed) lists a GPU, and
CUDA initialises on ``--device``. Without one the CPU variant is served, its model-level configs marked with
``backend`` "onnxruntime_cpu" and ``backend_fallback`` "no_gpu: <what was missing>" (as plain parameters and in the
version's facts, which the daemon reads): ``/readyz``, ``edge_model_backend_info`` and the daemon's log say so. The
GPU repository stays for when the GPU is back; the marks are written into the served copy only, never into
``model_repository/``. A folder found at REPOSITORY (the layout before this command: plans that ``build_engines``
wrote there) becomes REPOSITORY.gpu.

Exit codes: 0 the GPU repository serves a verified plan for every model; 3 every model is served, on a fallback (a
model on ONNX Runtime on the GPU, or the CPU variant); 1 nothing could be prepared (REPOSITORY stays as it was); 2 the
GPU is there but TensorRT or pycuda is missing (a broken station image, not a degraded station).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelRepositoryError
from edge.inference.model_facts import NO_GPU, ONNXRUNTIME_CPU, fallback_reason
from edge.models.pbtxt import compose
from edge.models.repository import CONFIG, facts, own_config_text, stamped, write_atomic
from tools import build_repository
from tools.gpu import build_engines
from tools.gpu.tensorrt_engine import EngineEnvironmentError, GpuUnusable, probe_gpu

DEV = Path("/dev")
SMI_TIMEOUT_S = 20  # nvidia-smi answers in well under a second; a hung driver must not hold the station's start
GPU_SUFFIX, CPU_SUFFIX = ".gpu", ".cpu"


# --- pure parts: what the host shows -> which variant ----------------------------------------------------------------


@dataclass(frozen=True)
class GpuSigns:
    """What this host shows of an NVIDIA GPU (``look_for_gpu``)."""

    device_nodes: tuple[str, ...]  # /dev/nvidia0, /dev/nvidia1 ...
    smi_status: int | None = None  # exit status of `nvidia-smi -L`; None: nvidia-smi is not installed
    smi_output: str = ""  # what it printed, or why it did not run


def missing_gpu(signs: GpuSigns) -> str | None:
    """Why the host has no usable NVIDIA GPU, or None when it shows one (CUDA's own check comes next)."""
    if not signs.device_nodes:
        return "no /dev/nvidia<N> device node (no NVIDIA driver loaded, or no GPU given to this container)"
    if signs.smi_status is None:
        return None  # device nodes and no nvidia-smi: CUDA's initialisation decides
    lines = [line.strip() for line in signs.smi_output.strip().splitlines() if line.strip()]
    if signs.smi_status != 0:
        return f"nvidia-smi failed (exit {signs.smi_status}): {lines[0] if lines else 'no output'}"
    if not any(line.startswith("GPU ") for line in lines):  # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"
        return "nvidia-smi lists no GPU"
    return None


def variant_folders(out: Path) -> tuple[Path, Path]:
    """The GPU repository's and the CPU variant's folders beside the served path ``out``."""
    return out.with_name(out.name + GPU_SUFFIX), out.with_name(out.name + CPU_SUFFIX)


def marked_config(own: str, declared: Mapping[str, str], version: int, marks: Mapping[str, str]) -> str:
    """The model-level config serving ``version`` (``own``: its own config; ``declared``: its facts) with ``marks`` as
    parameters and in the version's facts, where the daemon reads them (``edge.models.pbtxt.facts_for``)."""
    return compose(stamped(own, marks), {version: {**declared, **marks}}, False)


def engine_arguments(args: argparse.Namespace, out: Path) -> list[str]:
    """``tools.gpu.build_engines``'s command line for this command's options, writing into ``out``."""
    argv = ["--models", str(args.models), "--out", str(out), "--max-batch", str(args.max_batch)]
    argv += ["--device", str(args.device)]
    if args.precision:
        argv += ["--precision", *args.precision]
    return argv + (["--force"] if args.force else [])


# --- I/O: the probes, the two variants, the served link -------------------------------------------------------------


def look_for_gpu() -> GpuSigns:
    """The NVIDIA device nodes in ``DEV`` and what ``nvidia-smi -L`` says, if it is installed."""
    nodes = tuple(sorted(str(p) for p in DEV.glob("nvidia*") if p.name.removeprefix("nvidia").isdigit()))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuSigns(nodes)
    try:
        run = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GpuSigns(nodes, -1, f"did not run: {exc}")
    return GpuSigns(nodes, run.returncode, run.stdout + run.stderr)


def cuda_problem(device: int) -> str | None:
    """Why CUDA cannot use ``device``, or None when it can; EngineEnvironmentError when TensorRT or pycuda is missing
    (then nothing tells whether the GPU works, and the station image is broken)."""
    try:
        probe_gpu(device)
    except GpuUnusable as exc:
        return f"CUDA: {exc}"
    return None


def adopt(out: Path, gpu: Path) -> None:
    """Move a folder found at ``out`` (a GPU repository that ``build_engines`` wrote there before) to ``gpu``."""
    if out.is_symlink() or not out.exists():
        return
    if gpu.exists():
        raise ModelRepositoryError(f"{out} is a folder and {gpu} exists too: move one of them out of the way")
    os.rename(out, gpu)
    print(f"station_repository: moved the GPU repository {out} to {gpu}", file=sys.stderr)


def serve(out: Path, target: Path) -> None:
    """Point ``out`` at its sibling ``target`` (a relative link), replacing the link there in one step."""
    link = out.with_name(f".{out.name}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(target.name, target_is_directory=True)
    os.replace(link, out)


def prepare_cpu_variant(models: Path, folder: Path, marks: Mapping[str, str], names: Sequence[str]) -> int:
    """The CPU variant of ``models`` in ``folder`` (a version added only when the forms changed), its model-level
    configs marked with ``marks``; the version served."""
    version, _, _ = build_repository.build(build_repository.SOURCE, models, folder, build_repository.DEFAULT_PRECISION)
    for name in names:
        text = marked_config(own_config_text(folder, name, version), facts(folder, name, version), version, marks)
        config = folder / name / CONFIG
        if not config.is_file() or config.read_text() != text:
            write_atomic(config, text)
    return version


def serve_gpu(args: argparse.Namespace, folder: Path) -> int:
    code = build_engines.main(engine_arguments(args, folder))
    if code not in (0, build_engines.EXIT_FALLBACK):
        print(f"station_repository: the GPU repository could not be prepared (build_engines exit {code}); "
              f"{args.out} stays as it was", file=sys.stderr)  # fmt: skip
        return code
    serve(args.out, folder)
    how = "TensorRT plans" if code == 0 else "on a fallback: ONNX Runtime on the GPU for a model, see above"
    print(f"station_repository: Triton serves the GPU repository {folder} ({how})", flush=True)
    return code


def serve_cpu(args: argparse.Namespace, folder: Path, why: str) -> int:
    reason = fallback_reason(NO_GPU, why)
    print(f"station_repository: NO USABLE NVIDIA GPU ({why}): serving the CPU variant", file=sys.stderr, flush=True)
    marks = {"backend": ONNXRUNTIME_CPU, "backend_fallback": reason}
    try:
        version = prepare_cpu_variant(args.models, folder, marks, build_repository.MODELS)
        serve(args.out, folder)
    except (ModelRepositoryError, OSError, json.JSONDecodeError) as exc:
        print(f"station_repository: the CPU variant could not be prepared: {exc}; {args.out} stays as it was",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"station_repository: Triton serves the CPU variant {folder} (version {version}): {reason}",
          file=sys.stderr, flush=True)  # fmt: skip
    return build_engines.EXIT_FALLBACK


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Prepare what Triton serves: the GPU repository, or the CPU variant without a usable GPU."
    )
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="ONNX forms and their metrics")
    parser.add_argument("--out", type=Path, required=True, help="the path Triton serves (a link this command sets)")
    parser.add_argument("--precision", nargs="*", default=[], metavar="MODEL=PRECISION", help="engine precisions")
    parser.add_argument(
        "--max-batch", type=int, default=build_engines.MAX_BATCH, help="largest batch the engines serve"
    )
    parser.add_argument("--device", type=int, default=0, help="CUDA device to build on and check")
    parser.add_argument("--force", action="store_true", help="rebuild the engines even when their fingerprints match")
    args = parser.parse_args(argv)
    try:
        build_engines.parse_precisions(args.precision)
        build_engines.profile_for(args.max_batch)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module's exit codes."""
    args = _arguments(argv)
    gpu_folder, cpu_folder = variant_folders(args.out)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        adopt(args.out, gpu_folder)
        why = missing_gpu(look_for_gpu()) or cuda_problem(args.device)
    except EngineEnvironmentError as exc:
        print(f"station_repository: an NVIDIA GPU is visible but engines cannot be built here: {exc}", file=sys.stderr)
        return 2
    except (ModelRepositoryError, OSError) as exc:
        print(f"station_repository: {exc}", file=sys.stderr)
        return 1
    return serve_gpu(args, gpu_folder) if why is None else serve_cpu(args, cpu_folder, why)


if __name__ == "__main__":
    sys.exit(main())
