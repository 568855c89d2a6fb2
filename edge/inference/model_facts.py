"""What a served model says about itself in its Triton config parameters (pure): bands, precision, and the
classifier's contract (its classes and its process parameters, in output and input order).

`tools.build_repository` and `tools.gpu.build_engines` write them; `edge.inference.triton_client` reads them
from Triton as strings.
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
