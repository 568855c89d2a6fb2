"""Server command line, environment and model repository assembly, checked without starting a server."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from edge.errors import ModelRepositoryError
from edge.models.pbtxt import facts_for
from edge.models.repository import digest
from edge.serving.tritonserver import ServerDist, TritonServerSettings, assemble_backend_dir, locate_wheel_server
from tools.build_repository import (
    DEFAULT_PRECISION,
    MODELS,
    SOURCE,
    band_parameters,
    build,
    build_model,
    config_parameters,
    config_text,
)

SETTINGS = TritonServerSettings(
    model_repository=Path("/srv/models"),
    grpc_port=18001,
    http_port=18000,
    metrics_port=18002,
    backend_dir=Path("/opt/backends"),
    binary=Path("/opt/tritonserver/bin/tritonserver"),
    library_dirs=(Path("/py/lib"), Path("/wheel/libs")),
    python_bin_dir=Path("/venv/bin"),
)

# model_repository/README.md: (tensor, data type, dims without the batch dimension)
README_INTERFACE = {
    "anomaly": {
        "input": [("IMAGE", "TYPE_UINT8", [1, 256, 256])],
        "output": [("SCORE", "TYPE_FP32", [1]), ("HEATMAP", "TYPE_FP32", [32, 32])],
    },
    "classifier": {
        "input": [
            ("IMAGE", "TYPE_UINT8", [3, 256, 256]),
            ("PROCESS", "TYPE_FP32", [48]),
            ("PRESENT", "TYPE_FP32", [2]),
            ("NOTES", "TYPE_INT64", [32]),
        ],
        "output": [("PROBS", "TYPE_FP32", [16]), ("ATTENTION", "TYPE_FP32", [64]), ("EMBEDDING", "TYPE_FP32", [128])],
    },
}
TENSOR = re.compile(r'\{\s*name:\s*"(\w+)",\s*data_type:\s*(\w+),\s*dims:\s*\[([\d,\s]+)\]\s*\}')


def test_command_starts_with_the_binary_and_names_ports_repository_and_backends() -> None:
    command = SETTINGS.command()
    assert command[0] == "/opt/tritonserver/bin/tritonserver"
    for flag in (
        "--model-repository=/srv/models",
        "--backend-directory=/opt/backends",
        "--grpc-port=18001",
        "--http-port=18000",
        "--metrics-port=18002",
        "--model-control-mode=none",
        "--http-address=127.0.0.1",
        "--log-verbose=0",
    ):
        assert flag in command
    assert not any(arg.startswith("--load-model") for arg in command)


def test_cpu_command_turns_off_gpu_metrics_and_pinned_memory() -> None:
    assert "--allow-gpu-metrics=false" in SETTINGS.command()
    assert "--allow-gpu-metrics=false" not in dataclasses.replace(SETTINGS, gpu=True).command()


def test_explicit_model_control_loads_the_named_models_and_extra_args_come_last() -> None:
    settings = dataclasses.replace(
        SETTINGS, model_control="explicit", load_models=("anomaly", "classifier"), extra_args=("--id=edge",)
    )
    command = settings.command()
    assert "--model-control-mode=explicit" in command
    assert [a for a in command if a.startswith("--load-model")] == ["--load-model=anomaly", "--load-model=classifier"]
    assert command[-1] == "--id=edge"


def test_environment_puts_server_libraries_and_python_bin_first_and_keeps_the_rest() -> None:
    base = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/usr/local/lib", "HOME": "/home/edge"}
    env = SETTINGS.environment(base)
    assert env["LD_LIBRARY_PATH"] == "/py/lib:/wheel/libs:/usr/local/lib"
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"
    assert env["HOME"] == "/home/edge"
    assert base["PATH"] == "/usr/bin:/bin"  # not mutated


def test_environment_without_previous_library_path_has_only_the_server_libraries() -> None:
    env = SETTINGS.environment({"PATH": "/usr/bin"})
    assert env["LD_LIBRARY_PATH"] == "/py/lib:/wheel/libs"


def test_locate_wheel_server_finds_binary_stub_and_libraries() -> None:
    dist = locate_wheel_server()
    assert dist.binary.is_file() and dist.stub.is_file()
    assert (dist.python_backend_dir / "libtriton_python.so").is_file()
    assert dist.library_dirs[-1].name == "nvidia_pytriton.libs"


def test_assemble_backend_dir_puts_the_stub_beside_the_backend_and_is_idempotent(tmp_path: Path) -> None:
    backend = tmp_path / "wheel" / "python"
    backend.mkdir(parents=True)
    (backend / "libtriton_python.so").write_bytes(b"so")
    (backend / "triton_python_backend_utils.py").write_text("# utils")
    (tmp_path / "triton_python_backend_stub").write_bytes(b"stub")
    dist = ServerDist(tmp_path / "tritonserver", backend, tmp_path / "triton_python_backend_stub", ())

    dest = assemble_backend_dir(tmp_path / "backends", dist)
    first = {p.name: p.stat().st_ino for p in (dest / "python").iterdir()}
    assemble_backend_dir(tmp_path / "backends", dist)
    second = {p.name: p.stat().st_ino for p in (dest / "python").iterdir()}

    assert set(first) == {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"}
    assert first == second  # nothing copied again


def parse_tensors(config: str, section: str) -> list[tuple[str, str, list[int]]]:
    block = re.search(rf"^{section} \[(.*?)^\]", config, re.S | re.M)
    assert block, f"no {section} block"
    return [(n, t, [int(d) for d in dims.split(",")]) for n, t, dims in TENSOR.findall(block.group(1))]


@pytest.mark.parametrize("model", sorted(README_INTERFACE))
def test_cpu_configs_follow_the_readme_interface(model: str) -> None:
    config = (SOURCE / model / "config.pbtxt").read_text()
    assert f'name: "{model}"' in config and 'backend: "python"' in config
    assert "max_batch_size: 32" in config and "KIND_CPU" in config and "dynamic_batching" in config
    for section, tensors in README_INTERFACE[model].items():
        assert parse_tensors(config, section) == tensors


def test_config_text_appends_bands_as_string_parameters() -> None:
    text = config_text('name: "anomaly"\n', {"pass_band": 0.0125, "reject_band": 0.031})
    assert text == (
        'name: "anomaly"\n'
        'parameters { key: "pass_band", value: { string_value: "0.0125" } }\n'
        'parameters { key: "reject_band", value: { string_value: "0.031" } }\n'
    )


def test_band_parameters_reads_floats_in_order() -> None:
    assert band_parameters({"pass_band": 0.01, "reject_band": 0.02, "auc": 0.9}) == {
        "pass_band": 0.01,
        "reject_band": 0.02,
    }


@pytest.mark.parametrize(
    "metrics",
    [
        {"pass_band": 0.01},
        {"pass_band": "x", "reject_band": 0.2},
        {"pass_band": 0.3, "reject_band": 0.2},
        {"pass_band": 0.1, "reject_band": math.nan},
    ],
)
def test_band_parameters_rejects_missing_bad_or_inverted_bands(metrics: dict[str, object]) -> None:
    with pytest.raises(ModelRepositoryError):
        band_parameters(metrics)


def stand_in_models(tmp_path: Path, content: bytes = b"onnx") -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name in MODELS:
        (models / f"{name}.onnx").write_bytes(content + name.encode())
    (models / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.01, "reject_band": 0.02}))
    return models


def test_a_build_lays_out_a_numbered_version_with_its_facts(tmp_path: Path) -> None:
    models, repo = stand_in_models(tmp_path), tmp_path / "repo"

    version, new, choices = build(SOURCE, models, repo, DEFAULT_PRECISION)

    assert (version, new) == (1, True) and (choices["anomaly"].served, choices["anomaly"].fallback) == ("fp32", None)
    target = repo / "anomaly"
    files = sorted(p.name for p in (target / "1").iterdir())
    assert files == ["config.pbtxt", "model.onnx", "model.py", "ort_model.py"]
    own = config_parameters((target / "1" / "config.pbtxt").read_text())
    assert own["pass_band"] == "0.01" and own["reject_band"] == "0.02" and own["precision"] == "fp32"
    assert own["version"] == "1" and own["digest"] == digest(target / "1")
    served = facts_for(config_parameters((target / "config.pbtxt").read_text()), "1")
    assert served == own  # what Triton hands the daemon for version 1


def test_every_build_is_a_new_version_and_an_identical_one_none(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert build(SOURCE, stand_in_models(tmp_path, b"first"), repo, DEFAULT_PRECISION)[:2] == (1, True)
    assert build(SOURCE, stand_in_models(tmp_path, b"first"), repo, DEFAULT_PRECISION)[:2] == (1, False)
    assert build(SOURCE, stand_in_models(tmp_path, b"second"), repo, DEFAULT_PRECISION)[:2] == (2, True)
    assert (repo / "anomaly" / "1" / "model.onnx").read_bytes() == b"firstanomaly"  # never overwritten
    assert (repo / "anomaly" / "2" / "model.onnx").read_bytes() == b"secondanomaly"
    assert (
        not list(repo.glob("*/*.partial")) and "version_policy" not in (repo / "anomaly" / "config.pbtxt").read_text()
    )


def test_build_model_without_the_onnx_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match=r"classifier\.onnx"):
        build_model("classifier", SOURCE, tmp_path, tmp_path / "repo", 1)
