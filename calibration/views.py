"""The calibration store as JSON documents, for the CLI's ``--json`` and the review service's calibration API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from calibration.errors import RequestRefused
from calibration.store import CalibrationStore, certified_bound


def profile(store: CalibrationStore, recipe: str, tool: str) -> dict[str, Any]:
    """One recipe x tool profile: its version, mode, and per class the threshold, status, FPR over the window, the
    escape estimate, the certified FPR bound (statistical controller) and the engineer's settings.
    ``RequestRefused`` when there is no such profile."""
    states = store.states(recipe, tool)
    if not states:
        raise RequestRefused(f"recipe/tool: no calibration profile for {recipe} x {tool}")
    classes = [
        {
            "class": name,
            "threshold": state.threshold,
            "status": state.status,
            "lock_until": state.lock_until,
            "fpr_3lot": state.fpr_window,
            "certified_bound": certified_bound(state),
            "escape_estimate": store.escape_estimate(recipe, tool, name),
            "settings": asdict(state.settings),
        }
        for name, state in states.items()
    ]
    return {"recipe": recipe, "tool": tool, "version": store.version(recipe, tool), "mode": store.mode(recipe, tool),
            "classes": classes}  # fmt: skip
