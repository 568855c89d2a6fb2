"""Controller states to and from JSON, for the store (plain data, no pickles)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from calibration.controller import ClassSettings, ClassState, LotCounts
from calibration.engineer import State
from calibration.statistical_controller import Evidence, Reviewed, StatSettings, StatState

SEED, STATISTICAL = "seed", "statistical"
CONTROLLERS = (SEED, STATISTICAL)


def dumps(state: State) -> str:
    if isinstance(state, StatState):  # by hand: asdict would copy the evidence value by value
        plain: dict[str, Any] = {f.name: getattr(state, f.name) for f in fields(state)}
        plain["settings"], plain["stat"] = asdict(state.settings), asdict(state.stat)
        for key in ("evidence", "recent"):
            e = getattr(state, key)
            plain[key] = {"negatives": e.negatives, "neg": e.neg, "real": e.real, "unlabelled": e.unlabelled}
        return json.dumps({"controller": STATISTICAL, **plain}, separators=(",", ":"))
    return json.dumps({"controller": SEED, **asdict(state)}, separators=(",", ":"))


def loads(text: str) -> State:
    data: dict[str, Any] = json.loads(text)
    kind = data.pop("controller")
    data["settings"] = ClassSettings(**data["settings"])
    if kind == STATISTICAL:
        known = {f.name for f in fields(StatSettings)}
        data["stat"] = StatSettings(**{k: v for k, v in data["stat"].items() if k in known})
        if "items" in data:  # a state written before the evidence histogram: its memory becomes the evidence
            negatives = sum(n for _, n in data.pop("lots"))
            data["evidence"] = Evidence.of(negatives, [Reviewed(**x) for x in data.pop("items")])
        for key in ("evidence", "recent"):
            if isinstance(data.get(key), dict):
                e = data[key]
                data[key] = Evidence(e["negatives"], tuple(e["neg"]), tuple(e["real"]), tuple(e["unlabelled"]))
        return StatState(**data)
    data["window"] = tuple(LotCounts(**x) for x in data["window"])
    data["calibration_counts"] = LotCounts(**data["calibration_counts"])
    return ClassState(**data)


def start(controller: str, settings: ClassSettings) -> State:
    if controller not in CONTROLLERS:
        raise ValueError(f"controller must be one of {CONTROLLERS}, got {controller!r}")
    return StatState.start(settings) if controller == STATISTICAL else ClassState.start(settings)
