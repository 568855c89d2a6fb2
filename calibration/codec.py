"""Controller states to and from JSON, for the store (plain data, no pickles)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from calibration.controller import ClassSettings, ClassState, LotCounts
from calibration.engineer import State
from calibration.statistical_controller import BINS, METHOD, Evidence, Forecast, Reviewed, StatSettings, StatState

SEED, STATISTICAL = "seed", "statistical"
CONTROLLERS = (SEED, STATISTICAL)


def dumps(state: State) -> str:
    if isinstance(state, StatState):  # by hand: asdict would copy the evidence value by value
        plain: dict[str, Any] = {f.name: getattr(state, f.name) for f in fields(state)}
        plain["settings"], plain["stat"] = _flat(state.settings), _flat(state.stat)
        f = state.forecast
        plain["forecast"] = {"curve": _rounded(f.curve, 12), "excess": f.excess, "weight": f.weight, "rise": f.rise}
        for key in ("evidence", "recent"):
            e = getattr(state, key)
            counts = {k: _rounded(getattr(e, k)) for k in ("neg", "real", "unlabelled")}
            plain[key] = {"negatives": e.negatives, **counts}
        return json.dumps({"controller": STATISTICAL, "method": METHOD, **plain}, separators=(",", ":"))
    return json.dumps({"controller": SEED, **asdict(state)}, separators=(",", ":"))


def loads(text: str) -> State:
    data: dict[str, Any] = json.loads(text)
    kind = data.pop("controller")
    data["settings"] = ClassSettings(**data["settings"])
    if kind == STATISTICAL:
        known = {f.name for f in fields(StatSettings)}
        stored = StatSettings(**{k: v for k, v in data["stat"].items() if k in known})
        data["stat"] = stored if data.pop("method", 1) == METHOD else StatSettings()  # an older method: today's
        if "items" in data:  # a state written before the evidence histogram: its memory becomes the evidence
            negatives = sum(n for _, n in data.pop("lots"))
            data["evidence"] = Evidence.of(negatives, [Reviewed(**x) for x in data.pop("items")])
        for key in ("evidence", "recent"):
            if isinstance(data.get(key), dict):
                e = data[key]
                data[key] = Evidence(e["negatives"], *(_binned(e[k]) for k in ("neg", "real", "unlabelled")))
        if "forecast" in data:
            f = data["forecast"]
            data["forecast"] = Forecast(tuple(f["curve"]), f["excess"], f["weight"], f.get("rise", 0.0))
        return StatState(**data)
    data["window"] = tuple(LotCounts(**x) for x in data["window"])
    data["calibration_counts"] = LotCounts(**data["calibration_counts"])
    return ClassState(**data)


def _rounded(values: tuple[float, ...], decimals: int = 6) -> list[float]:
    """Decayed counts to a millionth (rates to 1e-12): shorter JSON, nothing a threshold could notice."""
    return list(np.round(np.array(values), decimals).tolist())


def _flat(settings: Any) -> dict[str, Any]:
    """A dataclass of plain values as a dict (``asdict`` deep-copies, too slow for every lot end)."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def _binned(counts: list[float]) -> tuple[float, ...]:
    """Counts on today's bins; a state from before the bins under 0.50 were split holds them in one bin, which
    becomes the highest of them (0.45-0.50: the conservative reading of where those scores were)."""
    return (0.0,) * (BINS - len(counts)) + tuple(counts)


def start(controller: str, settings: ClassSettings) -> State:
    if controller not in CONTROLLERS:
        raise ValueError(f"controller must be one of {CONTROLLERS}, got {controller!r}")
    return StatState.start(settings) if controller == STATISTICAL else ClassState.start(settings)
