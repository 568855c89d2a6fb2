"""Engine fingerprints: hashing, the JSON beside a plan, and the rebuild rule (tools.gpu.engine_fingerprint)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from tools.gpu.engine_fingerprint import (
    BUILDER_SCHEMA,
    Fingerprint,
    FingerprintError,
    Recorded,
    fingerprint_path,
    onnx_sha256,
    read_fingerprint,
    recorded_state,
    stale_reasons,
    write_fingerprint,
)

CURRENT = Fingerprint(
    tensorrt_version="10.14.1.48",
    gpu_name="NVIDIA L4",
    compute_capability="8.9",
    onnx_sha256="ab" * 32,
    precision="fp16",
    profile_batch_sizes=(1, 16, 32),
)


def _plan(tmp_path: Path, fingerprint: Fingerprint | None = CURRENT) -> Path:
    plan = tmp_path / "anomaly" / "1" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"engine")
    if fingerprint is not None:
        write_fingerprint(plan, fingerprint)
    return plan


def test_onnx_sha256_is_the_sha256_of_the_bytes_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    data = bytes(range(256)) * 41  # not a multiple of the chunk size
    path.write_bytes(data)
    assert onnx_sha256(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest() == onnx_sha256(path)
    path.write_bytes(data[:-1] + b"\x00")
    assert onnx_sha256(path) != hashlib.sha256(data).hexdigest()


def test_fingerprint_lies_beside_the_plan_and_round_trips(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert fingerprint_path(plan) == plan.parent / "model.plan.json"
    assert read_fingerprint(plan) == CURRENT
    data = json.loads(fingerprint_path(plan).read_text())
    assert data["profile_batch_sizes"] == [1, 16, 32] and data["builder_schema"] == BUILDER_SCHEMA
    assert not list(plan.parent.glob("*.tmp")), "the atomic write left its temporary file behind"


def test_an_up_to_date_plan_has_no_reasons(tmp_path: Path) -> None:
    assert stale_reasons(recorded_state(_plan(tmp_path)), CURRENT) == []


@pytest.mark.parametrize(
    ("field", "new", "reason"),
    [
        ("tensorrt_version", "10.15.1.29", "TensorRT version: 10.14.1.48 -> 10.15.1.29"),
        ("gpu_name", "NVIDIA H100 80GB HBM3", "GPU: NVIDIA L4 -> NVIDIA H100 80GB HBM3"),
        ("compute_capability", "9.0", "compute capability: 8.9 -> 9.0"),
        ("onnx_sha256", "cd" * 32, "ONNX sha256: abababababab -> cdcdcdcdcdcd"),
        ("precision", "int8", "precision: fp16 -> int8"),
        ("profile_batch_sizes", (1, 8, 8), "profile batch sizes (min, opt, max): (1, 16, 32) -> (1, 8, 8)"),
        ("builder_schema", BUILDER_SCHEMA + 1, f"builder schema version: {BUILDER_SCHEMA} -> {BUILDER_SCHEMA + 1}"),
    ],
)
def test_each_changed_field_is_named_with_old_and_new_value(
    tmp_path: Path, field: str, new: object, reason: str
) -> None:
    current = dataclasses.replace(CURRENT, **{field: new})
    assert stale_reasons(recorded_state(_plan(tmp_path)), current) == [reason]


def test_every_changed_field_gives_its_own_reason(tmp_path: Path) -> None:
    current = dataclasses.replace(CURRENT, tensorrt_version="11.0.0.114", gpu_name="NVIDIA A2", precision="int8")
    reasons = stale_reasons(recorded_state(_plan(tmp_path)), current)
    assert [r.split(":")[0] for r in reasons] == ["TensorRT version", "GPU", "precision"]


def test_missing_plan_is_stale_even_with_a_matching_fingerprint(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    plan.unlink()
    assert stale_reasons(recorded_state(plan), CURRENT) == ["plan file missing"]


def test_missing_plan_and_fingerprint_are_both_reported(tmp_path: Path) -> None:
    plan = tmp_path / "classifier" / "1" / "model.plan"
    assert recorded_state(plan) == Recorded(plan_exists=False, fingerprint=None, problem="missing")
    assert stale_reasons(recorded_state(plan), CURRENT) == ["plan file missing", "fingerprint missing"]


def test_plan_without_fingerprint_is_stale(tmp_path: Path) -> None:
    assert stale_reasons(recorded_state(_plan(tmp_path, None)), CURRENT) == ["fingerprint missing"]


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({k: v for k, v in CURRENT.to_json().items() if k != "gpu_name"}), "missing fields ['gpu_name']"),
        (json.dumps({**CURRENT.to_json(), "colour": "blue"}), "unknown fields ['colour']"),
        (json.dumps({**CURRENT.to_json(), "tensorrt_version": 10}), "tensorrt_version must be a non-empty string"),
        (json.dumps({**CURRENT.to_json(), "precision": ""}), "precision must be a non-empty string"),
        (json.dumps({**CURRENT.to_json(), "profile_batch_sizes": [1, 32]}), "profile_batch_sizes must be"),
        (json.dumps({**CURRENT.to_json(), "profile_batch_sizes": [1, 64, 32]}), "1 <= min <= opt <= max"),
        (json.dumps({**CURRENT.to_json(), "profile_batch_sizes": [1, 16, 32.0]}), "must be an integer"),
        (json.dumps({**CURRENT.to_json(), "builder_schema": True}), "builder_schema must be an integer"),
    ],
)
def test_unreadable_fingerprint_is_stale_and_says_why(tmp_path: Path, text: str, detail: str) -> None:
    plan = _plan(tmp_path)
    fingerprint_path(plan).write_text(text)
    with pytest.raises(FingerprintError, match=re.escape(detail)):
        read_fingerprint(plan)
    state = recorded_state(plan)
    assert state.plan_exists and state.fingerprint is None
    [reason] = stale_reasons(state, CURRENT)
    assert reason.startswith("fingerprint unreadable: ") and detail in reason


def test_undecodable_fingerprint_file_is_reported_not_raised(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    fingerprint_path(plan).write_bytes(b"\xff\xfe\x00garbage")
    [reason] = stale_reasons(recorded_state(plan), CURRENT)
    assert reason.startswith("fingerprint unreadable: ")


def test_rewriting_a_fingerprint_replaces_it(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    newer = dataclasses.replace(CURRENT, tensorrt_version="10.15.1.29")
    write_fingerprint(plan, newer)
    assert read_fingerprint(plan) == newer
    assert stale_reasons(recorded_state(plan), newer) == []
