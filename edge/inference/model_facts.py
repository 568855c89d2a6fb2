"""What a served model says about itself in its Triton config parameters (pure): bands, precision, the backend it
runs on (and why, when that is a fallback), and the classifier's contract (its classes and its process parameters,
in output and input order).

`tools.build_repository`, `tools.gpu.build_engines` and `tools.gpu.station_repository` write them;
`edge.inference.triton_client` reads them from Triton as strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calibration.table import Bands


@dataclass(frozen=True, slots=True)
class Precision:
    """The precision form a model serves, the one asked for at build time, and why they differ (None: they don't)."""

    served: str
    requested: str
    fallback: str | None = None

    def report(self) -> dict[str, Any]:
        return {"served": self.served, "requested": self.requested, "fallback": self.fallback}


# What runs a served model: its TensorRT plan; Triton's ONNX Runtime backend on the GPU (the plan was not installed);
# the CPU variant, Triton's Python backend running ONNX Runtime on the CPU (the station has no usable GPU).
TENSORRT, ONNXRUNTIME_GPU, ONNXRUNTIME_CPU = "tensorrt", "onnxruntime", "onnxruntime_cpu"
# Why a model serves on a fallback: ``backend_fallback`` is "<cause>: <detail>", the cause one of these.
ENGINE_BUILD_FAILED, PARITY_FAILED, NO_GPU = "engine_build_failed", "parity_failed", "no_gpu"
FALLBACK_CAUSES = (ENGINE_BUILD_FAILED, PARITY_FAILED, NO_GPU)
FALLBACK_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Backend:
    """What serves a model (``TENSORRT``, ``ONNXRUNTIME_GPU``, ``ONNXRUNTIME_CPU``) and why it is not the model's
    TensorRT plan (None: nothing fell back)."""

    served: str
    fallback: str | None = None

    @property
    def cause(self) -> str:
        """The fallback's cause, one of ``FALLBACK_CAUSES`` ("other" for one this daemon does not know; "" for none):
        a bounded metric label where the reason itself is free text."""
        if not self.fallback:
            return ""
        cause = self.fallback.split(":", 1)[0].strip()
        return cause if cause in FALLBACK_CAUSES else "other"

    def report(self) -> dict[str, Any]:
        return {"served": self.served, "fallback": self.fallback}


def fallback_reason(cause: str, detail: str) -> str:
    """The ``backend_fallback`` parameter: ``cause`` (one of ``FALLBACK_CAUSES``) and ``detail`` on one line, cut to
    ``FALLBACK_DETAIL_CHARS`` (a TensorRT parser's errors can run long; the builder's log has them whole)."""
    if cause not in FALLBACK_CAUSES:
        raise ValueError(f"unknown fallback cause {cause!r}: one of {', '.join(FALLBACK_CAUSES)}")
    line = " ".join(detail.split())
    if len(line) > FALLBACK_DETAIL_CHARS:
        line = line[: FALLBACK_DETAIL_CHARS - 3].rstrip() + "..."
    return f"{cause}: {line}"


def bands_from(params: Mapping[str, str]) -> Bands | None:
    """The anomaly model's default bands (`pass_band`, `reject_band`), if it declares both as numbers."""
    try:
        return Bands(float(params["pass_band"]), float(params["reject_band"]))
    except (KeyError, ValueError):
        return None


def precision_from(params: Mapping[str, str]) -> Precision | None:
    """The model's precision facts, if its config declares them (a repository built before they existed does not)."""
    served = params.get("precision")
    if not served:
        return None
    return Precision(served, params.get("precision_requested") or served, params.get("precision_fallback") or None)


def backend_from(params: Mapping[str, str]) -> Backend | None:
    """The backend the model serves on, if its config declares it (``backend``, ``backend_fallback``): written by the
    GPU engine build and by a GPU station serving the CPU variant; a plain CPU repository declares none."""
    served = params.get("backend")
    if not served:
        return None
    return Backend(served, params.get("backend_fallback") or None)


@dataclass(frozen=True, slots=True)
class Contract:
    """The classifier's classes (its output order) and process parameters (its input order), where declared."""

    classes: tuple[str, ...] | None
    process_parameters: tuple[str, ...] | None


def contract_from(params: Mapping[str, str]) -> Contract:
    """The classifier's contract (``classes``, ``process_parameters``: JSON lists of names); ``ValueError`` when a
    declared one is not such a list."""
    return Contract(_names(params, "classes"), _names(params, "process_parameters"))


def _names(params: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    text = params.get(key)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{key} is not JSON: {text[:80]!r}") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key} must be a JSON list of names, not {text[:80]!r}")
    return tuple(value)


def mismatches(contract: Contract, classes: Sequence[str], recipes: Mapping[str, Sequence[str]]) -> list[str]:
    """Where the configuration says otherwise than the model: ``classes`` (decision.classes) and each recipe's
    process parameters against what the model declares; empty when they agree (or it declares nothing)."""
    found = []
    if contract.classes is not None:
        found += _differ("decision.classes", tuple(classes), contract.classes, "the classifier's classes")
    if contract.process_parameters is not None:
        for recipe, names in sorted(recipes.items()):
            found += _differ(f"recipes.{recipe}.parameters", tuple(names), contract.process_parameters,
                             "the classifier's process parameters")  # fmt: skip
    return found


def _differ(what: str, configured: tuple[str, ...], served: tuple[str, ...], whose: str) -> list[str]:
    if configured == served:
        return []
    missing = [n for n in served if n not in configured]
    extra = [n for n in configured if n not in served]
    if missing or extra:
        parts = [f"lacks {', '.join(missing)}"] if missing else []
        parts += [f"has {', '.join(extra)}, which the model does not"] if extra else []
        return [f"{what} {' and '.join(parts)} ({len(configured)} names; {whose}: {len(served)})"]
    first = next(i for i, (a, b) in enumerate(zip(configured, served, strict=True)) if a != b)
    return [f"{what} has {whose} in another order (position {first}: {configured[first]}, the model {served[first]})"]
