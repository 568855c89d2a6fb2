"""Long frame streams from a small rendered pool: the soak run and the fault tests send thousands of
frames without rendering thousands of dies.

A ``Pool`` renders a production plan once (``drift`` renders some tools through aged or re-coated
optics). ``Pool.cycle(n)`` gives the same dies again as lot ``<lot>-cN``: fresh frame ids (so nothing
is answered from the de-duplication record), the AOI frames in plan order, and the MES messages of
those lots so the join, the context cache, the calibration and the wafer summaries see a live line
too: before the frames lot_start and each wafer's process log (drawn afresh per cycle, excursion
wafers staying excursions), after them wafer_end per wafer and lot_end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from edge.ingest.wire import encode_header
from tools.sim.aoi_sim import Pending, encode_image
from tools.sim.mes_sim import mes_log
from tools.synth import Fab, WaferPlan
from tools.synth_render import Drift


@dataclass(frozen=True)
class MesMessage:
    topic: str
    body: dict


@dataclass(frozen=True)
class Cycle:
    frames: list[tuple[str, Pending]]  # (tool_id, frame) in plan order
    before: list[MesMessage]  # lot_start and the process logs, per lot in plan order
    after: list[MesMessage]  # wafer_end per wafer and lot_end, per lot in plan order


class Pool:
    def __init__(
        self,
        seed: int,
        tools: tuple[str, ...],
        *,
        lots: int,
        wafers_per_lot: int,
        dies_per_wafer: int,
        defect_rate: float,
        recipe: str,
        encoding: str = "raw",
        mes_prefix: str = "fab/mes",
        excursion_rate: float = 0.1,
        drift: Mapping[str, Drift] | None = None,
    ) -> None:
        self.fab = Fab(seed, recipe_id=recipe, tool_ids=tools, excursion_rate=excursion_rate)
        for tool, tool_drift in (drift or {}).items():
            self.fab.set_drift(tool, tool_drift)
        self.recipe = recipe
        self.encoding = encoding
        self.mes_prefix = mes_prefix
        self.wafers = self.fab.plan(lots, wafers_per_lot, dies_per_wafer, defect_rate)
        self._payloads: dict[str, tuple[bytes, dict]] = {}
        for wafer in self.wafers:
            for die in wafer.dies:
                self._payloads[die.frame_id] = encode_image(self.fab.render(die, wafer).image, encoding)

    def __len__(self) -> int:
        return len(self._payloads)

    def cycle(self, n: int) -> Cycle:
        frames: list[tuple[str, Pending]] = []
        before: list[MesMessage] = []
        after: list[MesMessage] = []
        lots: dict[str, list[WaferPlan]] = {}
        for wafer in self.wafers:
            lots.setdefault(wafer.lot_id, []).append(wafer)
        for lot_id, wafers in lots.items():
            renamed = f"{lot_id}-c{n}"
            tool = wafers[0].tool_id
            lot_topic = f"{self.mes_prefix}/lot/{tool}"
            before.append(MesMessage(lot_topic, self._lot_event("lot_start", renamed, tool)))
            for wafer in wafers:
                wafer = replace(wafer, lot_id=renamed)
                before.append(MesMessage(f"{self.mes_prefix}/process/{tool}", mes_log(self.fab, wafer, time.time())))
                frames += [(tool, self._frame(wafer, die, n)) for die in wafer.dies]
                after.append(
                    MesMessage(lot_topic, {**self._lot_event("wafer_end", renamed, tool), "wafer_id": wafer.wafer_id})
                )
            after.append(MesMessage(lot_topic, self._lot_event("lot_end", renamed, tool)))
        return Cycle(frames, before, after)

    def _lot_event(self, kind: str, lot_id: str, tool: str) -> dict:
        return {"event": kind, "lot_id": lot_id, "recipe_id": self.recipe, "tool_id": tool, "ts": time.time()}

    def _frame(self, wafer: WaferPlan, die, n: int) -> Pending:
        payload, extra = self._payloads[die.frame_id]
        frame_id = f"{die.frame_id}-c{n}"
        header = {
            "v": 1,
            "frame_id": frame_id,
            "tool_id": wafer.tool_id,
            "recipe_id": self.recipe,
            "lot_id": wafer.lot_id,
            "wafer_id": wafer.wafer_id,
            "die": list(die.die),
            "ts": time.time(),
            "encoding": self.encoding,
            **extra,
        }
        if wafer.note:
            header["notes"] = wafer.note
        return Pending(frame_id, [encode_header(header), payload], die.label, die.look, 0.0, 0.0)
