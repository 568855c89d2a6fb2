"""Long frame streams from a small rendered pool: the soak run and the fault tests send thousands of
frames without rendering thousands of dies.

A ``Pool`` renders a production plan once. ``Pool.cycle(n)`` gives the same dies again as lot
``<lot>-cN``: fresh frame ids (so nothing is answered from the de-duplication record), the AOI
frames in plan order, and the MES messages of those lots (lot_start, each wafer's process log,
lot_end) so the join, the context cache and the calibration see a live line too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from edge.wire import encode_header
from tools.aoi_sim import Pending, encode_image
from tools.synth import Fab, WaferPlan


@dataclass(frozen=True)
class MesMessage:
    topic: str
    body: dict


@dataclass(frozen=True)
class Cycle:
    frames: list[tuple[str, Pending]]  # (tool_id, frame) in plan order
    mes: list[MesMessage]  # lot_start, process logs, lot_end per lot, in plan order


class Pool:
    def __init__(self, seed: int, tools: tuple[str, ...], *, lots: int, wafers_per_lot: int, dies_per_wafer: int,
                 defect_rate: float, recipe: str, encoding: str = "raw", mes_prefix: str = "fab/mes") -> None:
        self.fab = Fab(seed, recipe_id=recipe, tool_ids=tools)
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
        mes: list[MesMessage] = []
        lots: dict[str, list[WaferPlan]] = {}
        for wafer in self.wafers:
            lots.setdefault(wafer.lot_id, []).append(wafer)
        for lot_id, wafers in lots.items():
            renamed = f"{lot_id}-c{n}"
            tool = wafers[0].tool_id
            lot_topic = f"{self.mes_prefix}/lot/{tool}"
            mes.append(MesMessage(lot_topic, self._lot_event("lot_start", renamed, tool)))
            for wafer in wafers:
                log = self.fab.process_log(wafer, time.time())
                mes.append(MesMessage(f"{self.mes_prefix}/process/{tool}", {**log, "lot_id": renamed}))
                for die in wafer.dies:
                    frames.append((tool, self._frame(replace(wafer, lot_id=renamed), die, n)))
            mes.append(MesMessage(lot_topic, self._lot_event("lot_end", renamed, tool)))
        return Cycle(frames, mes)

    def _lot_event(self, kind: str, lot_id: str, tool: str) -> dict:
        return {"event": kind, "lot_id": lot_id, "recipe_id": self.recipe, "tool_id": tool, "ts": time.time()}

    def _frame(self, wafer: WaferPlan, die, n: int) -> Pending:
        payload, extra = self._payloads[die.frame_id]
        frame_id = f"{die.frame_id}-c{n}"
        header = {"v": 1, "frame_id": frame_id, "tool_id": wafer.tool_id, "recipe_id": self.recipe,
                  "lot_id": wafer.lot_id, "wafer_id": wafer.wafer_id, "die": list(die.die), "ts": time.time(),
                  "encoding": self.encoding, **extra}
        if wafer.note:
            header["notes"] = wafer.note
        return Pending(frame_id, [encode_header(header), payload], die.label, die.look, 0.0, 0.0)
