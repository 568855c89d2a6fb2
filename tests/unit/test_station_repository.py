"""A GPU station serves the GPU repository while its NVIDIA GPU is usable and the CPU variant, marked as a fallback,
when it is gone (tools.gpu.station_repository): the choice from what the host shows, the probes against a fake
/dev and a fake nvidia-smi, and the served link, with tiny real models and the TensorRT layer faked."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from edge.inference.model_facts import Backend, backend_from
from edge.models.pbtxt import config_parameters, facts_for
from edge.models.repository import versions
from tools.gpu import build_engines, station_repository
from tools.gpu.station_repository import GpuSigns, look_for_gpu, main, missing_gpu, variant_folders
from tools.gpu.tensorrt_engine import EngineBuildError, EngineEnvironmentError, Gpu, GpuUnusable
from tools.tiny_models import tiny_models

SMI_OK = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1f0c3e-0000-0000-0000-000000000000)\n"
SMI_DRIVER_GONE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA "
    "driver is installed and running.\n"
)


# --- the choice -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signs", "reason"),
    [
        (GpuSigns(()), "no /dev/nvidia<N> device node"),
        (GpuSigns((), 0, SMI_OK), "no /dev/nvidia<N> device node"),  # nvidia-smi alone does not make a GPU usable here
        (GpuSigns(("/dev/nvidia0",), 9, SMI_DRIVER_GONE), "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because"),
        (GpuSigns(("/dev/nvidia0",), -1, "did not run: timed out"), "nvidia-smi failed (exit -1): did not run"),
        (GpuSigns(("/dev/nvidia0",), 0, "No devices were found\n"), "nvidia-smi lists no GPU"),
    ],
)
def test_a_host_without_a_usable_gpu_says_what_is_missing(signs: GpuSigns, reason: str) -> None:
    found = missing_gpu(signs)
    assert found is not None and found.startswith(reason)


@pytest.mark.parametrize("signs", [GpuSigns(("/dev/nvidia0",), 0, SMI_OK), GpuSigns(("/dev/nvidia0",))])
def test_a_device_node_and_a_listed_gpu_or_no_nvidia_smi_leave_the_choice_to_cuda(signs: GpuSigns) -> None:
    assert missing_gpu(signs) is None


def _fake_dev(tmp_path: Path, *names: str) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in names:
        (dev / name).touch()
    return dev


def _fake_smi(tmp_path: Path, status: int, output: str) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    script = f"import sys\nif sys.argv[1:] != ['-L']:\n    sys.exit(64)\nprint({output!r})\nsys.exit({status})\n"
    smi.write_text(f"#!{sys.executable}\n{script}")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    return folder


def test_the_probe_reads_numbered_device_nodes_and_nvidia_smis_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = _fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null")
    monkeypatch.setattr(station_repository, "DEV", dev)
    monkeypatch.setenv("PATH", str(_fake_smi(tmp_path, 9, SMI_DRIVER_GONE.strip())))
    signs = look_for_gpu()
    assert signs.device_nodes == (str(dev / "nvidia0"), str(dev / "nvidia1"))
    assert signs.smi_status == 9 and signs.smi_output.startswith("NVIDIA-SMI has failed")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert look_for_gpu() == GpuSigns(signs.device_nodes)  # not installed: not run


# --- the command ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    (folder / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.001, "reject_band": 0.002}))
    return tiny_models(folder)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The host as the command sees it: what the probes find (a GPU by default) and what CUDA says."""
    seen: dict = {"signs": GpuSigns(("/dev/nvidia0",), 0, SMI_OK), "cuda": None}

    def probe_gpu(device: int = 0) -> Gpu:
        if seen["cuda"] is not None:
            raise seen["cuda"]
        return Gpu("10.14.1.48", "NVIDIA H100 80GB HBM3", "9.0")

    monkeypatch.setattr(station_repository, "look_for_gpu", lambda: seen["signs"])
    monkeypatch.setattr(station_repository, "probe_gpu", probe_gpu)
    monkeypatch.setattr(build_engines, "probe_gpu", probe_gpu)
    monkeypatch.setattr(build_engines, "cuda_context", lambda device=0: contextlib.nullcontext())
    return seen


def _served(out: Path, name: str) -> dict[str, str]:
    """What the daemon reads for the served version of ``name`` (the model-level parameters, then its facts)."""
    params = config_parameters((out / name / "config.pbtxt").read_text())
    return facts_for(params, params.get("version", "1"))


def test_without_a_gpu_the_cpu_variant_is_served_and_marked_as_a_fallback(
    models: Path, tmp_path: Path, host: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    host["signs"] = GpuSigns(())
    out = tmp_path / "triton" / "model_repository"
    assert main(["--models", str(models), "--out", str(out)]) == 3
    gpu, cpu = variant_folders(out)
    assert out.is_symlink() and os.readlink(out) == "model_repository.cpu" and out.resolve() == cpu.resolve()
    assert not gpu.exists()
    for name in ("anomaly", "classifier"):
        assert (cpu / name / "1" / "model.onnx").is_file() and (cpu / name / "1" / "model.py").is_file()
        assert 'backend: "python"' in (out / name / "config.pbtxt").read_text()
        facts = _served(out, name)
        assert backend_from(facts) == Backend("onnxruntime_cpu", "no_gpu: " + missing_gpu(GpuSigns(())))  # type: ignore[operator]
        assert facts["precision"] == "fp32"  # the CPU variant's default form
        own = config_parameters((cpu / name / "1" / "config.pbtxt").read_text())
        assert "backend" not in own  # the version as built stays as built: only the served config is marked
    assert "NO USABLE NVIDIA GPU (no /dev/nvidia<N> device node" in capsys.readouterr().err
    before = (out / "anomaly" / "config.pbtxt").stat().st_mtime_ns
    assert main(["--models", str(models), "--out", str(out)]) == 3
    assert versions(cpu, "anomaly") == [1]  # the same forms: no new version, the marked config left alone
    assert (out / "anomaly" / "config.pbtxt").stat().st_mtime_ns == before


def test_a_gpu_that_cuda_cannot_use_also_gets_the_cpu_variant(models: Path, tmp_path: Path, host: dict) -> None:
    host["cuda"] = GpuUnusable("no usable CUDA GPU (cuInit failed: unknown error)")
    out = tmp_path / "model_repository"
    assert main(["--models", str(models), "--out", str(out)]) == 3
    reason = backend_from(_served(out, "classifier")).fallback  # type: ignore[union-attr]
    assert reason == "no_gpu: CUDA: no usable CUDA GPU (cuInit failed: unknown error)"


def test_with_a_gpu_the_engines_are_built_and_a_failed_plan_is_served_by_onnxruntime(
    models: Path, tmp_path: Path, host: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build_plan(onnx_file: Path, profile: tuple[int, int, int]) -> bytes:
        raise EngineBuildError(f"{onnx_file.name}: TensorRT built no engine")

    monkeypatch.setattr(build_engines, "build_plan", build_plan)
    out = tmp_path / "model_repository"
    assert main(["--models", str(models), "--out", str(out), "--max-batch", "8"]) == 3
    gpu, cpu = variant_folders(out)
    assert os.readlink(out) == "model_repository.gpu" and not cpu.exists()
    for name in ("anomaly", "classifier"):
        assert (gpu / name / "1" / "model.onnx").is_file()
        backend = backend_from(_served(out, name))
        assert backend is not None and backend.served == "onnxruntime" and backend.cause == "engine_build_failed"


def test_the_link_follows_the_gpu_when_it_comes_back(
    models: Path, tmp_path: Path, host: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_engines, "build_plan", lambda onnx_file, profile: b"plan")
    monkeypatch.setattr(build_engines, "verify_plan", lambda *args: build_engines.Parity({"SCORE": 0.0}, None, ()))
    out = tmp_path / "model_repository"
    host["signs"] = GpuSigns(())
    assert main(["--models", str(models), "--out", str(out)]) == 3
    host["signs"] = GpuSigns(("/dev/nvidia0",), 0, SMI_OK)
    assert main(["--models", str(models), "--out", str(out)]) == 0
    assert os.readlink(out) == "model_repository.gpu"
    assert backend_from(_served(out, "anomaly")) == Backend("tensorrt")
    assert (variant_folders(out)[1] / "anomaly" / "1" / "model.onnx").is_file()  # the CPU variant stays for next time


def test_a_gpu_repository_from_before_moves_beside_the_link(
    models: Path, tmp_path: Path, host: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model_repository"
    (out / "anomaly" / "1").mkdir(parents=True)
    (out / "anomaly" / "1" / "model.plan").write_bytes(b"old plan")
    host["signs"] = GpuSigns(())
    assert main(["--models", str(models), "--out", str(out)]) == 3
    assert (variant_folders(out)[0] / "anomaly" / "1" / "model.plan").read_bytes() == b"old plan"
    assert out.is_symlink()


def test_nothing_changes_when_the_old_folder_and_the_gpu_repository_both_exist(
    models: Path, tmp_path: Path, host: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model_repository"
    out.mkdir()
    variant_folders(out)[0].mkdir()
    assert main(["--models", str(models), "--out", str(out)]) == 1
    assert out.is_dir() and not out.is_symlink()
    assert "move one of them out of the way" in capsys.readouterr().err


def test_a_gpu_without_tensorrt_is_a_broken_image_not_a_fallback(
    models: Path, tmp_path: Path, host: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    host["cuda"] = EngineEnvironmentError("the tensorrt Python bindings cannot be imported (No module named 'x')")
    out = tmp_path / "model_repository"
    assert main(["--models", str(models), "--out", str(out)]) == 2
    assert not out.exists() and not any(p.exists() for p in variant_folders(out))
    assert "an NVIDIA GPU is visible but engines cannot be built here" in capsys.readouterr().err


def test_missing_forms_leave_the_served_link_as_it_was(models: Path, tmp_path: Path, host: dict) -> None:
    out = tmp_path / "model_repository"
    host["signs"] = GpuSigns(())
    assert main(["--models", str(models), "--out", str(out)]) == 3
    assert main(["--models", str(tmp_path / "no-models"), "--out", str(out)]) == 1
    assert os.readlink(out) == "model_repository.cpu"
