"""GPU check: the daemon end to end against raw Triton, both on the GPU variant (TensorRT plans), in one run.

On a host without a usable NVIDIA GPU it prints ``skipped: no GPU`` with the reason it found and exits 0.

    python -m tools.gpu.check [--server BIN] [--frames 4000] [--inflight 64]

Steps on a GPU host: (1) when the ``tensorrt`` Python package imports, ``tools.gpu.build_engines`` builds the
stale engines of ``--repository`` from ``--models`` and checks each against ONNX Runtime (as ``make engines``);
without it, an existing GPU repository is served as it is. (2) A ``tritonserver`` that can load plans is chosen:
``--server``, else NVIDIA's container's, else the one on ``PATH``; the ``nvidia-pytriton`` wheel's server has only
the Python backend and is refused. (3) A station on it (``tools.station.station.Station``) is measured by
``tools.bench.e2e``: raw Triton, then the daemon, on the same models. One JSON result goes to stdout (``result``:
``measured``, ``skipped: no GPU`` or ``stopped`` with the reason); the build's own output goes to stderr.
Exit 0 when measured or skipped, 1 when stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.serving.tritonserver import TritonServerSettings, locate_wheel_server
from tools.bench.capture import add_decode_arguments, decode_settings
from tools.bench.e2e import daemon_e2e, pooled, raw_triton
from tools.build_repository import MODELS
from tools.gpu.build_engines import plan_path
from tools.station.station import Station

CONTAINER_SERVER = Path("/opt/tritonserver/bin/tritonserver")  # NVIDIA's Triton image (Dockerfile.edge)
DEVICE_NODES = "/dev/nvidia[0-9]*"
SMI_QUERY = ("--query-gpu=name,driver_version", "--format=csv,noheader")
SMI_TIMEOUT_S = 30
TENSORRT_IMPORT_TIMEOUT_S = 120
DEFAULT_FRAMES = 4000  # a GPU station answers thousands of frames a second: long enough for stable percentiles
DEFAULT_INFLIGHT = 64
SKIPPED = "skipped: no GPU"
SERVED_VERSION = "1"  # the version folder the GPU variant serves its plans from (model_repository/gpu/*/config.pbtxt)


class GpuCheckStopped(EdgeError):
    """The check cannot go on on this host; the message says why and what to do."""


# --- pure parts: what the probes found -> what to do ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuFindings:
    """What the GPU probe saw (``find_gpu``)."""

    device_nodes: tuple[str, ...]  # /dev/nvidia0, /dev/nvidia1 ...
    nvidia_smi: str | None  # its path, None when not on PATH
    smi_returncode: int | None = None  # None: not run
    smi_output: str = ""  # stdout, or the error that kept it from running


def gpus_or_reason(found: GpuFindings) -> tuple[list[dict[str, str]], str | None]:
    """The GPUs nvidia-smi lists (name, driver version), or why this host counts as having none."""
    problems = [] if found.device_nodes else ["no /dev/nvidia<N> device node (no NVIDIA driver, or no GPU given)"]
    if found.nvidia_smi is None:
        problems.append("nvidia-smi is not on PATH")
    elif found.smi_returncode != 0:
        detail = found.smi_output.strip().splitlines()[:1] or ["no output"]
        problems.append(f"nvidia-smi failed (exit {found.smi_returncode}): {detail[0]}")
    if problems:
        return [], "; ".join(problems)
    gpus = []
    for line in found.smi_output.splitlines():  # "NVIDIA H100 80GB HBM3, 570.86.15"
        name, _, driver = line.rpartition(",")
        if name.strip():
            gpus.append({"name": name.strip(), "driver_version": driver.strip()})
    return (gpus, None) if gpus else ([], "nvidia-smi lists no GPU")


def engines_step(tensorrt: str | None, import_error: str, missing_plans: Sequence[Path], repository: Path) -> bool:
    """True: build (or confirm) the engines with TensorRT; False: serve ``repository``'s existing plans as they are.
    GpuCheckStopped when TensorRT does not import and plans are missing."""
    if tensorrt is not None:
        return True
    if missing_plans:
        raise GpuCheckStopped(
            f"the tensorrt Python package does not import ({import_error}) and there is no GPU repository to serve "
            f"({', '.join(map(str, missing_plans))} missing): build one with `make engines` where TensorRT and "
            "pycuda are installed (NVIDIA's Triton container, Dockerfile.edge), then rerun, or pass --repository"
        )
    return False


def build_outcome(returncode: int) -> None:
    """GpuCheckStopped unless ``tools.gpu.build_engines`` exited 0 (its own message is above, on stderr)."""
    if returncode == 2:
        raise GpuCheckStopped("tools.gpu.build_engines cannot build here (exit 2): TensorRT, pycuda or a CUDA GPU is "
                              "missing, see its message above")  # fmt: skip
    if returncode == 3:
        raise GpuCheckStopped("tools.gpu.build_engines served a model by ONNX Runtime on the GPU (exit 3): its engine "
                              "did not build or did not match, see its message above; the station serves, but there "
                              "are no plans to measure")  # fmt: skip
    if returncode != 0:
        raise GpuCheckStopped(f"tools.gpu.build_engines failed (exit {returncode}): an engine did not build or did "
                              "not match ONNX Runtime, see its message above; nothing was measured")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ServerSearch:
    """Where a ``tritonserver`` that loads plans could be (``find_servers``); paths resolved, None when absent."""

    given: Path | None  # --server
    given_runs: bool  # --server names an executable file
    container: Path | None  # CONTAINER_SERVER, when executable
    on_path: Path | None  # `tritonserver` on PATH
    wheel: Path | None  # the nvidia-pytriton wheel's server, when installed


WHEEL_ONLY = (
    "the nvidia-pytriton wheel's tritonserver ({}) has only the Python backend and cannot load TensorRT plans: run "
    "the check in NVIDIA's Triton container (nvcr.io/nvidia/tritonserver, as Dockerfile.edge) or pass --server"
)


def choose_server(found: ServerSearch) -> Path:
    """``--server`` when given, else NVIDIA's container's server, else the one on PATH; never the wheel's."""

    def is_wheel(path: Path) -> bool:
        return path == found.wheel or "pytriton" in path.parts

    if found.given is not None:
        if not found.given_runs:
            raise GpuCheckStopped(f"--server {found.given} is not an executable file")
        if is_wheel(found.given):
            raise GpuCheckStopped(WHEEL_ONLY.format(found.given))
        return found.given
    for candidate in (found.container, found.on_path):
        if candidate is not None and not is_wheel(candidate):
            return candidate
    if found.wheel is not None or found.on_path is not None:
        raise GpuCheckStopped(WHEEL_ONLY.format(found.wheel or found.on_path))
    raise GpuCheckStopped(
        f"no tritonserver found (--server, {CONTAINER_SERVER}, PATH): run the check in NVIDIA's Triton container "
        "(nvcr.io/nvidia/tritonserver, as Dockerfile.edge) or pass --server"
    )


def backend_dir_for(server: Path, given: Path | None = None) -> Path:
    """The backends beside a Triton install (``<prefix>/bin/tritonserver`` -> ``<prefix>/backends``) unless given."""
    return given if given is not None else server.parent.parent / "backends"


def plan_server_settings(
    server: Path, backend_dir: Path, repository: Path, grpc_port: int, http_port: int, metrics_port: int, _scratch: Path
) -> TritonServerSettings:
    """``Station``'s server settings for a Triton with the TensorRT backend (``wheel_settings``'s signature; the
    scratch backend folder is not needed): GPU metrics and the pinned memory pool left on."""
    return TritonServerSettings(
        model_repository=repository.resolve(),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        backend_dir=backend_dir,
        binary=server,
        gpu=True,
    )


def ratios(raw: dict[str, Any], daemon: dict[str, Any]) -> dict[str, float | None]:
    """Daemon over raw Triton: throughput, p50 and p99 latency (None where raw measured zero)."""

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "throughput_ratio_daemon_over_raw": ratio(daemon["frames_per_s"], raw["frames_per_s"]),
        "p50_ratio_daemon_over_raw": ratio(daemon["latency_ms"]["p50"], raw["latency_ms"]["p50"]),
        "p99_ratio_daemon_over_raw": ratio(daemon["latency_ms"]["p99"], raw["latency_ms"]["p99"]),
    }


# --- I/O: probes, the engine build, the measurement -----------------------------------------------------------------


def find_gpu() -> GpuFindings:
    nodes = tuple(sorted(str(p) for p in Path("/dev").glob(DEVICE_NODES.removeprefix("/dev/"))))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuFindings(nodes, None)
    try:
        run = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GpuFindings(nodes, smi, -1, str(exc))
    return GpuFindings(nodes, smi, run.returncode, run.stdout if run.returncode == 0 else run.stderr + run.stdout)


def tensorrt_version() -> tuple[str | None, str]:
    """TensorRT's version when ``import tensorrt`` works, else None and why; tried in a child interpreter, so the
    only module importing it stays ``tools.gpu.tensorrt_engine``."""
    code = "import tensorrt; print(tensorrt.__version__)"
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=TENSORRT_IMPORT_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if run.returncode != 0:
        return None, (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    return run.stdout.strip(), ""


def prepare_engines(args: argparse.Namespace) -> dict[str, str | None]:
    """Build and check the engines when TensorRT imports, else make sure plans exist; what was done, for the report."""
    version, error = tensorrt_version()
    if not engines_step(version, error, missing_plans(args.repository), args.repository):
        print(f"gpu check: TensorRT does not import ({error}): serving the plans in {args.repository} as they are",
              file=sys.stderr)  # fmt: skip
        return {"tensorrt": None, "engines": f"existing plans, not rebuilt or checked (TensorRT: {error})"}
    if not args.models.is_dir():
        raise GpuCheckStopped(f"no trained models at {args.models} to build engines from: run `make models` first")
    command = [sys.executable, "-m", "tools.gpu.build_engines", "--models", str(args.models), "--out",
               str(args.repository)]  # fmt: skip
    build_outcome(subprocess.run(command, stdout=sys.stderr, check=False).returncode)
    if missing := missing_plans(args.repository):
        raise GpuCheckStopped(f"tools.gpu.build_engines exited 0 but {', '.join(map(str, missing))} is missing")
    return {"tensorrt": version, "engines": "built or confirmed and checked against ONNX Runtime (build_engines)"}


def missing_plans(repository: Path) -> list[Path]:
    plans = (plan_path(repository, name, SERVED_VERSION) for name in MODELS)
    return [plan for plan in plans if not plan.is_file()]


def find_servers(given: Path | None) -> ServerSearch:
    def executable(path: Path) -> bool:
        return path.is_file() and os.access(path, os.X_OK)

    try:
        wheel: Path | None = locate_wheel_server().binary.resolve()
    except EdgeError:
        wheel = None
    on_path = shutil.which("tritonserver")
    return ServerSearch(
        given=given.resolve() if given is not None else None,
        given_runs=given is not None and executable(given),
        container=CONTAINER_SERVER.resolve() if executable(CONTAINER_SERVER) else None,
        on_path=Path(on_path).resolve() if on_path else None,
        wheel=wheel,
    )


def measure(args: argparse.Namespace, server: Path) -> dict[str, Any]:
    """A station on ``server`` serving ``args.repository``: raw Triton, then the daemon, in one run."""
    backend_dir = backend_dir_for(server, args.backend_dir)
    if not (backend_dir / "tensorrt").is_dir():
        raise GpuCheckStopped(f"{server} has no TensorRT backend in {backend_dir}: pass --backend-dir")
    settings = functools.partial(plan_server_settings, server, backend_dir)
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh outbox: a frame seen before is answered from it
    try:
        with Station(args.workdir, args.repository, server_settings=settings, ingest_extra=decode_settings(args)) as st:
            assert st.triton is not None
            raw = pooled([asyncio.run(raw_triton(st.triton.grpc_url, args.frames, args.inflight))])
            daemon = pooled([daemon_e2e(st, args.frames, args.inflight)])
            broker = st.with_broker
    except (EdgeError, RuntimeError, TimeoutError, OSError) as exc:
        raise GpuCheckStopped(f"the station on {server} did not run (logs in {args.workdir}): {exc}") from exc
    return {"broker": broker, "raw_triton": raw, "daemon_e2e": daemon, **ratios(raw, daemon)}


def host_facts() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu_model": cpu or platform.processor() or None,
            "python": platform.python_version(), "system": platform.platform()}  # fmt: skip


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu.check", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="ONNX forms to build engines from")
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository_gpu"),
                        help="the GPU repository: engines built into it, then served")  # fmt: skip
    parser.add_argument("--server", type=Path, default=None, help="a tritonserver with the TensorRT backend")
    parser.add_argument("--backend-dir", type=Path, default=None, help="its backends (default: ../backends of it)")
    parser.add_argument("--workdir", type=Path, default=Path("build/gpu-check"), help="station state and logs")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"frames per run (default {DEFAULT_FRAMES})")
    parser.add_argument("--inflight", type=int, default=DEFAULT_INFLIGHT,
                        help=f"frames in flight (default {DEFAULT_INFLIGHT})")  # fmt: skip
    add_decode_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    report: dict[str, Any] = {"host": host_facts()}
    gpus, reason = gpus_or_reason(find_gpu())
    if reason is not None:
        print(json.dumps({"result": SKIPPED, "reason": reason, **report}, indent=1))
        return 0
    report.update(
        gpu=gpus,
        frames=args.frames,
        inflight=args.inflight,
        repository=str(args.repository),
        decode_processes=args.decode_processes,
    )
    try:
        report.update(prepare_engines(args))
        server = choose_server(find_servers(args.server))
        report["server"] = str(server)
        report.update(measure(args, server))
    except GpuCheckStopped as exc:
        print(json.dumps({"result": "stopped", "reason": str(exc), **report}, indent=1))
        return 1
    print(json.dumps({"result": "measured", **report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
