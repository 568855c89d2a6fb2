"""Which model version decides a frame, which scores a copy of it, and what each served version declares. Pure.

A version number names a pair (the anomaly model and the classifier of one build). ``Route`` is immutable: a batch
reads it once and keeps it, so a switch lands between two batches and a batch in flight finishes on the versions it
started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from calibration.table import BandTable

LIVE, SHADOW, CANARY, STAGED = "live", "shadow", "canary", "staged"


@dataclass(frozen=True, slots=True)
class Pair:
    """One served version of both models: its number, each model's digest and facts, and its anomaly bands."""

    version: str
    facts: Mapping[str, Mapping[str, str]]  # model name -> what that model's version declares
    bands: BandTable

    @property
    def models(self) -> dict[str, str]:
        return {name: self.version for name in self.facts}

    @property
    def digests(self) -> dict[str, str]:
        return {name: facts.get("digest", "") for name, facts in self.facts.items()}

    def report(self) -> dict[str, Any]:
        keys = ("digest", "data_digest", "trained_on", "precision")
        return {name: {k: facts[k] for k in keys if k in facts} for name, facts in self.facts.items()}


@dataclass(frozen=True, slots=True)
class Route:
    """The live version, and the candidates on trial beside it."""

    live: str
    shadow: str | None = None
    shadow_fraction: float = 1.0  # of the live version's frames copied to the shadow
    canary: str | None = None
    canary_tools: frozenset[str] = field(default_factory=frozenset)
    canary_fraction: float = 0.0  # of the other tools' frames the canary decides
    staged: str | None = None  # deployed and checked, loaded, not yet on trial nor live

    def decides(self, tool: str, draw: float) -> str:
        """The version whose verdict the frame gets (``draw`` uniform in [0, 1))."""
        if self.canary is not None and (tool in self.canary_tools or draw < self.canary_fraction):
            return self.canary
        return self.live

    def compared(self, decided_by: str, draw: float) -> str | None:
        """The version that scores a copy of a frame off the critical path: the live version beside the canary's
        verdicts (its disagreement guardrail), the shadow on its fraction of the live version's, else none."""
        if decided_by == self.canary and self.canary != self.live:
            return self.live
        if self.shadow is not None and self.shadow != decided_by and draw < self.shadow_fraction:
            return self.shadow
        return None

    def role(self, version: str) -> str | None:
        if version == self.live:
            return LIVE
        if version == self.canary:
            return CANARY
        if version == self.shadow:
            return SHADOW
        return STAGED if version == self.staged else None

    @property
    def serving(self) -> list[str]:
        """The versions Triton must hold: live, canary, shadow, staged."""
        found = [self.live, self.canary, self.shadow, self.staged]
        return sorted({v for v in found if v is not None}, key=int)

    def without(self, version: str) -> Route:
        """This route with ``version`` off trial (the live version stays)."""
        route = self
        if route.canary == version:
            route = replace(route, canary=None, canary_tools=frozenset(), canary_fraction=0.0)
        if route.shadow == version:
            route = replace(route, shadow=None, shadow_fraction=1.0)
        if route.staged == version:
            route = replace(route, staged=None)
        return route

    def to_json(self) -> dict[str, Any]:
        return {
            "live": self.live, "shadow": self.shadow, "shadow_fraction": self.shadow_fraction,
            "canary": self.canary, "canary_tools": sorted(self.canary_tools), "canary_fraction": self.canary_fraction,
            "staged": self.staged,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Route:
        return cls(
            str(data["live"]), data.get("shadow"), float(data.get("shadow_fraction", 1.0)), data.get("canary"),
            frozenset(data.get("canary_tools", ())), float(data.get("canary_fraction", 0.0)), data.get("staged"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Serving:
    """What the inspector routes by: the route and every version it names, as one snapshot."""

    route: Route
    pairs: Mapping[str, Pair]

    @classmethod
    def single(cls, pair: Pair) -> Serving:
        return cls(Route(pair.version), {pair.version: pair})

    @property
    def live(self) -> Pair:
        return self.pairs[self.route.live]
