"""`python -m tools.gpu.check`: the GPU probe's verdict, the engine step, the choice of server and its settings, the
ratios, and the command itself on a host without a GPU (it says `skipped: no GPU` and exits 0) or without the means to
go on (it stops with the reason and exits 1). No server is started here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.gpu import check
from tools.gpu.check import (
    SKIPPED,
    GpuCheckStopped,
    GpuFindings,
    ServerSearch,
    backend_dir_for,
    build_outcome,
    choose_server,
    engines_step,
    gpus_or_reason,
    plan_server_settings,
    ratios,
)

SMI = "/usr/bin/nvidia-smi"
H100 = GpuFindings(("/dev/nvidia0",), SMI, 0, "NVIDIA H100 80GB HBM3, 570.86.15\n")
CONTAINER = Path("/opt/tritonserver/bin/tritonserver")
WHEEL = Path("/venv/lib/python3.12/site-packages/pytriton/tritonserver/bin/tritonserver")
NOTHING = ServerSearch(given=None, given_runs=False, container=None, on_path=None, wheel=None)


def _stop_reason(call, *args) -> str:
    with pytest.raises(GpuCheckStopped) as stopped:
        call(*args)
    return str(stopped.value)


# --- the GPU probe's verdict ---------------------------------------------------------------------------------------


def test_a_gpu_listed_by_nvidia_smi_is_reported_with_its_driver():
    assert gpus_or_reason(H100) == ([{"name": "NVIDIA H100 80GB HBM3", "driver_version": "570.86.15"}], None)


def test_every_gpu_of_a_multi_gpu_host_is_listed():
    found = GpuFindings(("/dev/nvidia0", "/dev/nvidia1"), SMI, 0, "NVIDIA H200, 580.1\nNVIDIA H200, 580.1\n")
    gpus, reason = gpus_or_reason(found)
    assert reason is None and [g["name"] for g in gpus] == ["NVIDIA H200", "NVIDIA H200"]


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (GpuFindings((), None), ["no /dev/nvidia<N> device node", "nvidia-smi is not on PATH"]),
        (GpuFindings((), SMI, 0, "NVIDIA H100, 570.86.15\n"), ["no /dev/nvidia<N> device node"]),
        (GpuFindings(("/dev/nvidia0",), None), ["nvidia-smi is not on PATH"]),
        (
            GpuFindings(("/dev/nvidia0",), SMI, 9, "NVIDIA-SMI has failed because it couldn't communicate\nmore\n"),
            ["nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate"],
        ),
        (GpuFindings(("/dev/nvidia0",), SMI, -1, "timed out after 30 seconds"), ["exit -1): timed out"]),
        (GpuFindings(("/dev/nvidia0",), SMI, 0, "\n"), ["nvidia-smi lists no GPU"]),
    ],
)
def test_a_host_without_a_usable_gpu_gets_the_reason_found(found, expected):
    gpus, reason = gpus_or_reason(found)
    assert gpus == [] and reason is not None
    assert all(part in reason for part in expected), reason


# --- the engine step -----------------------------------------------------------------------------------------------


def test_engines_are_built_when_tensorrt_imports_even_with_plans_missing():
    assert engines_step("10.14.1", "", [Path("r/anomaly/1/model.plan")], Path("r")) is True


def test_without_tensorrt_existing_plans_are_served_as_they_are():
    assert engines_step(None, "No module named 'tensorrt'", [], Path("r")) is False


def test_without_tensorrt_or_plans_the_check_stops_and_says_how_to_build_them():
    reason = _stop_reason(engines_step, None, "No module named 'tensorrt'", [Path("r/anomaly/1/model.plan")], Path("r"))
    assert "No module named 'tensorrt'" in reason and "r/anomaly/1/model.plan" in reason
    assert "make engines" in reason and "Dockerfile.edge" in reason


def test_only_a_clean_engine_build_lets_the_check_go_on():
    build_outcome(0)
    assert "exit 2" in _stop_reason(build_outcome, 2) and "pycuda" in _stop_reason(build_outcome, 2)
    assert "did not match ONNX Runtime" in _stop_reason(build_outcome, 1)
    assert "ONNX Runtime on the GPU (exit 3)" in _stop_reason(build_outcome, 3)


# --- the server --------------------------------------------------------------------------------------------------


def test_a_given_server_is_used_over_the_ones_found():
    found = ServerSearch(Path("/srv/triton/bin/tritonserver"), True, CONTAINER, None, WHEEL)
    assert choose_server(found) == Path("/srv/triton/bin/tritonserver")


def test_a_given_server_that_cannot_run_stops_the_check_instead_of_falling_back():
    found = ServerSearch(Path("/nowhere/tritonserver"), False, CONTAINER, None, None)
    assert "--server /nowhere/tritonserver is not an executable file" in _stop_reason(choose_server, found)


def test_nvidia_containers_server_comes_before_the_one_on_path():
    found = ServerSearch(None, False, CONTAINER, Path("/usr/local/bin/tritonserver"), WHEEL)
    assert choose_server(found) == CONTAINER
    assert choose_server(ServerSearch(None, False, None, Path("/usr/local/bin/tritonserver"), WHEEL)) == Path(
        "/usr/local/bin/tritonserver"
    )


@pytest.mark.parametrize(
    "found",
    [
        ServerSearch(None, False, None, None, WHEEL),  # only the wheel installed
        ServerSearch(None, False, None, WHEEL, WHEEL),  # the wheel's server on PATH
        ServerSearch(WHEEL, True, CONTAINER, None, WHEEL),  # named with --server
    ],
)
def test_the_wheels_python_only_server_is_refused_with_the_reason(found):
    reason = _stop_reason(choose_server, found)
    assert str(WHEEL) in reason and "only the Python backend" in reason and "cannot load TensorRT plans" in reason


def test_no_server_at_all_stops_the_check_saying_where_it_looked():
    reason = _stop_reason(choose_server, NOTHING)
    assert "no tritonserver found" in reason and str(CONTAINER) in reason and "--server" in reason


def test_the_backends_are_looked_for_beside_the_server_unless_given():
    assert backend_dir_for(CONTAINER) == Path("/opt/tritonserver/backends")
    assert backend_dir_for(CONTAINER, Path("/srv/backends")) == Path("/srv/backends")


def test_the_plan_servers_command_names_its_binary_and_backends_and_keeps_gpu_memory_on(tmp_path):
    settings = plan_server_settings(CONTAINER, Path("/opt/tritonserver/backends"), tmp_path, 1, 2, 3, tmp_path / "x")
    command = settings.command()
    assert command[0] == str(CONTAINER)
    assert f"--model-repository={tmp_path.resolve()}" in command
    assert "--backend-directory=/opt/tritonserver/backends" in command
    assert {"--grpc-port=1", "--http-port=2", "--metrics-port=3"} <= set(command)
    assert "--pinned-memory-pool-byte-size=0" not in command and "--allow-gpu-metrics=false" not in command
    assert settings.environment({"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}  # no wheel libraries or Python put first


# --- the report ----------------------------------------------------------------------------------------------------


def test_ratios_are_daemon_over_raw_and_none_where_raw_measured_nothing():
    raw = {"frames_per_s": 2000.0, "latency_ms": {"p50": 4.0, "p95": 6.0, "p99": 8.0}}
    daemon = {"frames_per_s": 1500.0, "latency_ms": {"p50": 6.0, "p95": 9.0, "p99": 20.0}}
    assert ratios(raw, daemon) == {
        "throughput_ratio_daemon_over_raw": 0.75,
        "p50_ratio_daemon_over_raw": 1.5,
        "p99_ratio_daemon_over_raw": 2.5,
    }
    empty = {"frames_per_s": 0.0, "latency_ms": {"p50": 0.0, "p95": 0.0, "p99": 0.0}}
    assert set(ratios(empty, daemon).values()) == {None}


# --- the command ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(gpus_or_reason(check.find_gpu())[1] is None, reason="this host has a GPU: main([]) would measure")
def test_main_on_a_host_without_a_gpu_says_skipped_with_the_reason_and_exits_0(capsys):
    assert check.main([]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["result"] == SKIPPED == "skipped: no GPU"
    assert result["reason"] and result["host"]["cpus"] >= 1


def test_main_on_a_gpu_host_without_tensorrt_or_plans_stops_with_exit_1_and_how_to_build_them(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(check, "find_gpu", lambda: H100)
    monkeypatch.setattr(check, "tensorrt_version", lambda: (None, "No module named 'tensorrt'"))
    assert check.main(["--repository", str(tmp_path / "gpu"), "--workdir", str(tmp_path / "work")]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["result"] == "stopped" and "make engines" in result["reason"]
    assert result["gpu"] == [{"name": "NVIDIA H100 80GB HBM3", "driver_version": "570.86.15"}]
    assert not (tmp_path / "work").exists()  # nothing was started


def test_main_with_plans_but_only_the_wheels_server_stops_before_starting_anything(monkeypatch, capsys, tmp_path):
    for name in ("anomaly", "classifier"):
        (tmp_path / "gpu" / name / "1").mkdir(parents=True)
        (tmp_path / "gpu" / name / "1" / "model.plan").write_bytes(b"plan")
    monkeypatch.setattr(check, "find_gpu", lambda: H100)
    monkeypatch.setattr(check, "tensorrt_version", lambda: (None, "No module named 'tensorrt'"))
    monkeypatch.setattr(check, "find_servers", lambda given: ServerSearch(None, False, None, None, WHEEL))
    assert check.main(["--repository", str(tmp_path / "gpu"), "--workdir", str(tmp_path / "work")]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["result"] == "stopped" and "cannot load TensorRT plans" in result["reason"]
    assert result["engines"].startswith("existing plans") and result["tensorrt"] is None
    assert not (tmp_path / "work").exists()


def test_with_tensorrt_the_engines_are_built_as_make_engines_does_and_plans_must_then_be_there(
    monkeypatch, capsys, tmp_path
):
    commands = []

    def build(command, **_kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    (tmp_path / "models").mkdir()
    monkeypatch.setattr(check, "find_gpu", lambda: H100)
    monkeypatch.setattr(check, "tensorrt_version", lambda: ("10.14.1", ""))
    monkeypatch.setattr(check.subprocess, "run", build)
    argv = ["--models", str(tmp_path / "models"), "--repository", str(tmp_path / "gpu")]
    assert check.main([*argv, "--workdir", str(tmp_path / "work")]) == 1
    assert commands == [[sys.executable, "-m", "tools.gpu.build_engines", "--models", *argv[1:2], "--out", argv[3]]]
    result = json.loads(capsys.readouterr().out)
    assert result["result"] == "stopped" and "exited 0 but" in result["reason"]
    assert str(tmp_path / "gpu" / "anomaly" / "1" / "model.plan") in result["reason"]
