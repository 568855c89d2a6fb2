"""What a served model says about itself in its Triton config parameters (pure): bands and precision.

`tools.build_repository` and `tools.gpu.build_engines` write them; `edge.inference.triton_client` reads them
from Triton as strings.
"""

from __future__ import annotations

from collections.abc import Mapping
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
