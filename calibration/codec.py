"""Controller states to and from JSON, for the store (plain data, no pickles)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from calibration.controller import ClassSettings, ClassState, LotCounts
from calibration.engineer import State
from calibration.statistical_controller import Reviewed, StatSettings, StatState

SEED, STATISTICAL = "seed", "statistical"
CONTROLLERS = (SEED, STATISTICAL)


def dumps(state: State) -> str:
    kind = STATISTICAL if isinstance(state, StatState) else SEED
    return json.dumps({"controller": kind, **asdict(state)}, separators=(",", ":"))


def loads(text: str) -> State:
    data: dict[str, Any] = json.loads(text)
    kind = data.pop("controller")
    data["settings"] = ClassSettings(**data["settings"])
    if kind == STATISTICAL:
        data["stat"] = StatSettings(**data["stat"])
        data["lots"] = tuple(tuple(x) for x in data["lots"])
        data["items"] = tuple(Reviewed(**x) for x in data["items"])
        return StatState(**data)
    data["window"] = tuple(LotCounts(**x) for x in data["window"])
    data["calibration_counts"] = LotCounts(**data["calibration_counts"])
    return ClassState(**data)


def start(controller: str, settings: ClassSettings) -> State:
    if controller not in CONTROLLERS:
        raise ValueError(f"controller must be one of {CONTROLLERS}, got {controller!r}")
    return StatState.start(settings) if controller == STATISTICAL else ClassState.start(settings)
