"""What a TensorRT plan was built from, recorded beside it, and why a plan is stale.

A serialized TensorRT engine (``model.plan``) is only valid for the TensorRT version that built it, on the GPU model it
was built for, from the exact ONNX bytes, precision and optimisation profile it was built with.
``tools.gpu.build_engines`` writes a :class:`Fingerprint` of those facts as JSON beside each plan
(``<repository>/<model>/1/model.plan.json``) and rebuilds a plan exactly when :func:`stale_reasons` finds something to
say about it. Pure logic and files only: nothing here imports TensorRT or touches a GPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from tools.precision_gate import sha256 as onnx_sha256  # noqa: F401 - re-exported: the gate records the same digest

# Bump when tools.gpu.tensorrt_engine or tools.gpu.build_engines changes how a plan is made (network flags, profiles,
# builder settings): every plan recorded under an older schema is then rebuilt, even if nothing else changed.
BUILDER_SCHEMA = 1
SHA_SHOWN = 12  # hex digits of a hash shown in a reason; the JSON keeps all 64
TEXT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "precision")

LABELS = {
    "tensorrt_version": "TensorRT version",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "onnx_sha256": "ONNX sha256",
    "precision": "precision",
    "profile_batch_sizes": "profile batch sizes (min, opt, max)",
    "builder_schema": "builder schema version",
}


class FingerprintError(EdgeError):
    """A fingerprint file exists but cannot be read as a fingerprint."""


@dataclass(frozen=True)
class Fingerprint:
    """Everything a plan depends on; two plans with equal fingerprints are interchangeable."""

    tensorrt_version: str  # tensorrt.__version__ of the builder, e.g. "10.14.1.48"
    gpu_name: str  # CUDA device name, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", e.g. "9.0"
    onnx_sha256: str  # of the ONNX file the plan was parsed from
    precision: str  # fp32 | fp16 | int8: which ONNX form (the network is strongly typed)
    profile_batch_sizes: tuple[int, int, int]  # (min, opt, max) batch of the optimisation profile
    builder_schema: int = BUILDER_SCHEMA

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping, one key per field."""
        data = asdict(self)
        data["profile_batch_sizes"] = list(self.profile_batch_sizes)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Fingerprint:
        """The fingerprint in ``data``; :class:`FingerprintError` naming the problem when a field is missing,
        unknown or of the wrong type."""
        if not isinstance(data, Mapping):
            raise FingerprintError(f"expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing, unknown = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or unknown:
            raise FingerprintError(f"missing fields {missing}, unknown fields {unknown}")
        for name in TEXT_FIELDS:
            if not isinstance(data[name], str) or not data[name]:
                raise FingerprintError(f"{name} must be a non-empty string, got {data[name]!r}")
        return cls(
            **{name: data[name] for name in TEXT_FIELDS},
            profile_batch_sizes=_profile(data["profile_batch_sizes"]),
            builder_schema=_integer("builder_schema", data["builder_schema"]),
        )


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FingerprintError(f"{name} must be an integer, got {value!r}")
    return value


def _profile(value: Any) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise FingerprintError(f"profile_batch_sizes must be [min, opt, max], got {value!r}")
    low, opt, high = (_integer("profile_batch_sizes", v) for v in value)
    if not 1 <= low <= opt <= high:
        raise FingerprintError(f"profile_batch_sizes must satisfy 1 <= min <= opt <= max, got {value!r}")
    return low, opt, high


@dataclass(frozen=True)
class Recorded:
    """What lies on disk for one plan: whether the plan exists, and its fingerprint or why there is none."""

    plan_exists: bool
    fingerprint: Fingerprint | None
    problem: str | None = None  # set when fingerprint is None: "missing" or "unreadable: ..."


def fingerprint_path(plan: Path) -> Path:
    """Where the fingerprint of ``plan`` lives: the plan's name with ``.json`` appended."""
    return plan.with_name(plan.name + ".json")


def write_fingerprint(plan: Path, fingerprint: Fingerprint) -> Path:
    """Write ``fingerprint`` beside ``plan`` (atomically: a reader sees the old file or the new one)."""
    target = fingerprint_path(plan)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(fingerprint.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(temporary, target)
    return target


def read_fingerprint(plan: Path) -> Fingerprint:
    """The fingerprint beside ``plan``; FileNotFoundError when there is none, FingerprintError when unreadable."""
    text = fingerprint_path(plan).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FingerprintError(f"not JSON: {exc}") from exc
    return Fingerprint.from_json(data)


def recorded_state(plan: Path) -> Recorded:
    """What is recorded for ``plan``, never raising for a missing or broken fingerprint."""
    try:
        fingerprint = read_fingerprint(plan)
    except FileNotFoundError:
        return Recorded(plan.is_file(), None, "missing")
    except (FingerprintError, OSError, UnicodeDecodeError) as exc:
        return Recorded(plan.is_file(), None, f"unreadable: {exc}")
    return Recorded(plan.is_file(), fingerprint)


def _shown(name: str, value: Any) -> str:
    if name == "onnx_sha256":
        return str(value)[:SHA_SHOWN]
    return str(tuple(value)) if name == "profile_batch_sizes" else str(value)


def stale_reasons(recorded: Recorded, current: Fingerprint) -> list[str]:
    """Why the plan described by ``recorded`` must be rebuilt for ``current``; empty when it is up to date.

    One reason per finding: the plan file missing, the fingerprint missing or unreadable, and each differing field
    named with its recorded and current values (``TensorRT version: 10.13.3.9 -> 10.14.1.48``).
    """
    reasons = [] if recorded.plan_exists else ["plan file missing"]
    if recorded.fingerprint is None:
        return [*reasons, f"fingerprint {recorded.problem or 'missing'}"]
    for field in fields(Fingerprint):
        old, new = getattr(recorded.fingerprint, field.name), getattr(current, field.name)
        if old != new:
            reasons.append(f"{LABELS[field.name]}: {_shown(field.name, old)} -> {_shown(field.name, new)}")
    return reasons
