"""The GPU variant of the repository without a GPU: its configs, the config writer, the parity rule and the CLI's
refusal to run without TensorRT (tools.gpu.build_engines, tools.gpu.tensorrt_engine)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelRepositoryError
from tests.unit.test_dataset import make_folder
from tests.unit.test_fab_training import stand_in_forms
from tools.build_repository import SOURCE as CPU_SOURCE
from tools.build_repository import config_parameters, contract_parameters
from tools.dataset.folder import load
from tools.fab.version import write_version
from tools.gpu.build_engines import (
    DEFAULT_PRECISION,
    MODELS,
    SOURCE,
    TOLERANCES,
    _arguments,
    compare_outputs,
    declared_tensors,
    gpu_config,
    main,
    model_state,
    onnx_path,
    parse_precisions,
    profile_for,
    sample_inputs,
    version_dies,
    with_max_batch,
    write_config,
)
from tools.gpu.tensorrt_engine import Gpu, TensorSpec

BANDS = {"pass_band": 0.00102207, "reject_band": 0.00166401}


def _config(name: str, variant: Path = SOURCE) -> str:
    return (variant / name / "config.pbtxt").read_text()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A models folder with the anomaly bands and placeholder ONNX files (enough for everything but TensorRT)."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "anomaly_metrics.json").write_text(json.dumps({"auroc": 0.9, **BANDS}))
    for name in MODELS:
        for precision in ("fp32", "fp16", "int8"):
            onnx_path(folder, name, precision).write_bytes(b"onnx")
    return folder


@pytest.mark.parametrize("name", MODELS)
def test_gpu_configs_declare_exactly_the_cpu_interface(name: str) -> None:
    gpu, cpu = declared_tensors(_config(name)), declared_tensors(_config(name, CPU_SOURCE))
    assert gpu == cpu
    assert gpu["input"] and gpu["output"], "the tensor pattern matched nothing: the test would prove nothing"


def test_declared_tensors_reads_names_types_and_dims_in_order() -> None:
    tensors = declared_tensors(_config("classifier"))
    assert [t.name for t in tensors["input"]] == ["IMAGE", "PROCESS", "PRESENT", "NOTES"]
    assert tensors["input"][3] == TensorSpec("NOTES", "TYPE_INT64", (32,))
    assert tensors["output"] == [TensorSpec("PROBS", "TYPE_FP32", (16,)), TensorSpec("ATTENTION", "TYPE_FP32", (64,)),
                                 TensorSpec("EMBEDDING", "TYPE_FP32", (128,))]  # fmt: skip


@pytest.mark.parametrize("name", MODELS)
def test_gpu_configs_serve_tensorrt_plans_on_the_gpu_with_warmup_at_both_profile_ends(name: str) -> None:
    text = _config(name)
    assert re.search(r'^platform: "tensorrt_plan"$', text, re.M)
    assert re.search(r"^max_batch_size: 32$", text, re.M)
    assert re.search(r"instance_group \[ \{ count: \d, kind: KIND_GPU \} \]", text)
    assert re.search(r"max_queue_delay_microseconds: \d+", text)
    assert re.findall(r"\bbatch_size: (\d+)", text) == ["1", "32"]
    inputs = [t.name for t in declared_tensors(text)["input"]]
    for sample in re.split(r'name: "batch_', text.split("model_warmup")[1])[1:]:
        assert re.findall(r'key: "(\w+)"', sample) == inputs, "every warm-up sample must feed every input"


def test_classifier_warmup_feeds_note_tokens_as_zeros() -> None:
    notes = re.findall(r'key: "NOTES", value: \{[^}]*\}', _config("classifier"))
    assert len(notes) == 2 and all("zero_data: true" in entry for entry in notes)


def test_write_config_appends_the_anomaly_bands(models: Path, tmp_path: Path) -> None:
    written = write_config(tmp_path / "repo", "anomaly", gpu_config("anomaly", SOURCE, models))
    assert written == tmp_path / "repo" / "anomaly" / "config.pbtxt"
    text = written.read_text()
    assert text.startswith(_config("anomaly").rstrip("\n"))
    for key, value in BANDS.items():
        assert f'parameters {{ key: "{key}", value: {{ string_value: "{value!r}" }} }}' in text


def test_write_config_gives_the_classifier_its_contract_only(models: Path, tmp_path: Path) -> None:
    text = write_config(tmp_path / "repo", "classifier", gpu_config("classifier", SOURCE, models)).read_text()
    assert text.startswith(_config("classifier").rstrip("\n"))
    assert re.findall(r'parameters \{ key: "(\w+)"', text) == ["classes", "process_parameters"]


def test_anomaly_config_without_metrics_names_the_missing_file(models: Path) -> None:
    (models / "anomaly_metrics.json").unlink()
    with pytest.raises(ModelRepositoryError, match=r"anomaly_metrics\.json is missing"):
        gpu_config("anomaly", SOURCE, models)


def test_with_max_batch_caps_every_batch_size() -> None:
    text = with_max_batch(_config("classifier"), 12)
    assert re.search(r"^max_batch_size: 12$", text, re.M)
    assert "preferred_batch_size: [ 8 ]" in text
    assert re.findall(r"\bbatch_size: (\d+)", text) == ["1", "12"]
    assert with_max_batch(_config("anomaly"), 32) == _config("anomaly")
    assert "preferred_batch_size: [ 4 ]" in with_max_batch(_config("anomaly"), 4)


def test_precisions_default_and_override_per_model() -> None:
    assert parse_precisions([]) == DEFAULT_PRECISION == {"anomaly": "fp16", "classifier": "int8"}
    assert parse_precisions(["classifier=fp32"]) == {"anomaly": "fp16", "classifier": "fp32"}
    for bad in ("classifier", "classifier=bf16", "segmenter=fp16"):
        with pytest.raises(ValueError, match="MODEL=PRECISION"):
            parse_precisions([bad])


def test_profile_spans_batch_one_to_the_max() -> None:
    assert profile_for(32) == (1, 16, 32)
    assert profile_for(4) == (1, 4, 4)
    with pytest.raises(ValueError):
        profile_for(0)


def test_onnx_forms_are_the_files_quantize_writes(tmp_path: Path) -> None:
    assert onnx_path(tmp_path, "anomaly", "fp32") == tmp_path / "anomaly.onnx"
    assert onnx_path(tmp_path, "classifier", "int8") == tmp_path / "classifier.int8.onnx"


def test_verification_inputs_follow_the_serving_interface_and_repeat() -> None:
    for name in MODELS:
        inputs = sample_inputs(name, n=3)
        specs = declared_tensors(_config(name))["input"]
        assert list(inputs) == [s.name for s in specs]
        for spec in specs:
            assert inputs[spec.name].shape == (3, *spec.dims)
            assert inputs[spec.name].dtype == {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32}.get(
                spec.data_type, np.int64
            )
        again = sample_inputs(name, n=3)
        assert all(np.array_equal(inputs[k], again[k]) for k in inputs)


def _outputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(16, 16)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"PROBS": probs.astype(np.float32), "ATTENTION": rng.dirichlet(np.ones(64), 16).astype(np.float32)}


def test_parity_accepts_small_differences_and_reports_them() -> None:
    reference = _outputs()
    engine = {k: v * (1 + 1e-3) for k, v in reference.items()}
    parity = compare_outputs(engine, reference, TOLERANCES["fp16"], "PROBS")
    assert parity.ok and parity.top1_agreement == 1.0
    assert 0.0009 < parity.relative_error["PROBS"] < 0.0011
    assert "top-1 agreement 1.000" in parity.summary()


def test_parity_rejects_an_engine_that_is_off_and_names_the_output() -> None:
    reference = _outputs()
    engine = {"PROBS": reference["PROBS"], "ATTENTION": _outputs(seed=1)["ATTENTION"]}
    parity = compare_outputs(engine, reference, TOLERANCES["int8"], "PROBS")
    assert not parity.ok
    assert [p.split(":")[0] for p in parity.problems] == ["ATTENTION"]


def test_parity_rejects_changed_classes_even_with_a_small_error() -> None:
    reference = _outputs()
    engine = dict(reference)
    engine["PROBS"] = reference["PROBS"].copy()
    engine["PROBS"][:4] = np.roll(reference["PROBS"][:4], 1, axis=1)  # 4 of 16 dies get another class
    parity = compare_outputs(engine, reference, dataclasses.replace(TOLERANCES["int8"], relative_error=10.0), "PROBS")
    assert parity.problems == ("PROBS: top-1 agreement 0.750 < 0.85",)


def test_parity_rejects_non_finite_or_misshapen_outputs() -> None:
    reference = _outputs()
    nan = {"PROBS": np.full_like(reference["PROBS"], np.nan), "ATTENTION": reference["ATTENTION"][:8]}
    parity = compare_outputs(nan, reference, TOLERANCES["fp32"], "PROBS")
    assert len(parity.problems) == 2 and parity.top1_agreement is None


@pytest.mark.parametrize("flags", [[], ["--check"]])
def test_cli_without_tensorrt_exits_2_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], models: Path, tmp_path: Path, flags: list
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as on a machine without it
    assert main(["--models", str(models), "--out", str(tmp_path / "repo"), *flags]) == 2
    assert "cannot build TensorRT engines here" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_cli_rejects_a_bad_precision_before_anything_else(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--precision", "anomaly=int4"])
    assert exit_info.value.code == 2 and "MODEL=PRECISION" in capsys.readouterr().err


# --- a version written by edge-inspect train -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "2"], "--repository, --version and --data go together"),
        (["--repository", "r", "--version", "2"], "--repository, --version and --data go together"),
        (["--repository", "r", "--version", "two", "--data", "d"], "--version: a version number, got 'two'"),
    ],
)
def test_cli_asks_for_a_version_with_its_repository_and_data(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture
def version(tmp_path: Path) -> tuple[Path, Path]:
    """Version 2 of a repository as edge-inspect train writes it (stand-in forms whose INT8 classifier missed the gate)
    for the classes and parameters of a small labelled folder; the repository and the folder."""
    data = make_folder(tmp_path / "fab")
    dataset, _ = load(data)
    models, report = tmp_path / "models", tmp_path / "report"
    stand_in_forms(models)
    report.mkdir()
    common = {"data_digest": "abc", "version": "2"}
    parameters = {
        "anomaly": {**BANDS, **common},
        "classifier": {**contract_parameters(dataset.classes, dataset.parameters), **common},
    }
    dims = {"anomaly": {}, "classifier": {"PROCESS": (len(dataset.parameters),), "PROBS": (len(dataset.classes),)}}
    (tmp_path / "repo" / "anomaly" / "1").mkdir(parents=True)
    write_version(tmp_path / "repo", models, 2, parameters, dims, report, {})
    return tmp_path / "repo", data


def test_a_version_builds_from_its_own_forms_and_config_into_its_own_folder(
    version: tuple[Path, Path], tmp_path: Path
) -> None:
    repository, data = version
    args = _arguments(["--repository", str(repository), "--version", "2", "--data", str(data),
                       "--out", str(tmp_path / "gpu"), "--max-batch", "8"])  # fmt: skip
    state = model_state("classifier", args, Gpu("10.14.1.48", "NVIDIA H200", "9.0"))
    forms = repository / "classifier" / "2" / "forms"
    assert (state.forms, state.onnx) == (forms, forms / "classifier.fp16.onnx")  # INT8 failed the fab's gate
    assert state.plan == tmp_path / "gpu" / "classifier" / "2" / "model.plan"
    assert state.reasons[0] == "plan file missing"  # nothing installed there yet
    params = config_parameters(state.config)
    assert 'platform: "tensorrt_plan"' in state.config and re.search(r"^max_batch_size: 8$", state.config, re.M)
    assert params["precision"] == "fp16" and params["precision_requested"] == "int8" and params["version"] == "2"
    assert json.loads(params["classes"]) == ["GOOD", "PARTICLE", "SCRATCH"]
    written = (repository / "classifier" / "2" / "gpu" / "config.pbtxt").read_text()
    assert 'key: "precision"' not in written  # the version leaves the GPU's precision to this build
    assert state.config.count('key: "precision"') == 1
    tensors = declared_tensors(state.config)
    assert [t.dims for t in tensors["input"] if t.name == "PROCESS"] == [(2,)]
    anomaly = model_state("anomaly", args, Gpu("10.14.1.48", "NVIDIA H200", "9.0"))
    assert config_parameters(anomaly.config)["pass_band"] == repr(BANDS["pass_band"])


def test_a_version_is_checked_on_the_test_dies_of_its_own_folder(version: tuple[Path, Path]) -> None:
    repository, data = version
    dies = version_dies(repository, "2", data, n=4)
    dataset, _ = load(data)
    assert dies["anomaly"]["IMAGE"].shape == (4, 1, 256, 256)
    assert dies["classifier"]["IMAGE"].shape == (4, 3, 256, 256)
    assert dies["classifier"]["PROCESS"].shape == (4, len(dataset.parameters))


def test_a_version_refuses_a_folder_it_was_not_trained_on(version: tuple[Path, Path], tmp_path: Path) -> None:
    repository, _ = version
    other = make_folder(tmp_path / "other")
    (other / "process.csv").write_text((other / "process.csv").read_text().replace(",temp", ",chuck_temp", 1))
    with pytest.raises(ModelRepositoryError, match=r"not the data version 2 was trained on.*'chuck_temp'"):
        version_dies(repository, "2", other)
    with pytest.raises(ModelRepositoryError, match="not a version written by edge-inspect train"):
        version_dies(repository, "1", other)
