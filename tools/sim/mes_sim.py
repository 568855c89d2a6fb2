"""Simulated MES: publishes lot events and per-wafer process logs over MQTT for the same production
plan the AOI simulator inspects (same seed and plan arguments).

Without ``--start-at`` everything is published at once (lot_start, the wafers' logs, lot_end per
lot). With ``--start-at EPOCH --rate FPS`` each wafer's log is published ``--lead-s`` before the
AOI simulator, pacing at FPS from EPOCH, reaches that wafer, its wafer_end and the lot's lot_end
``--lead-s`` after their last die.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib

from tools.sim.aoi_sim import add_plan_arguments
from tools.sim.mqtt_peer import Peer
from tools.synth import Fab, WaferPlan

CHAMBERS = 2  # process chambers per tool: a wafer runs in one, named in its log (``chamber_id``)


def mes_log(fab: Fab, wafer: WaferPlan, ts: float) -> dict:
    """The wafer's process log as the MES sends it: the generator's log and the chamber the wafer ran in (fixed by
    its lot and wafer ids)."""
    chamber = zlib.crc32(f"{wafer.lot_id}/{wafer.wafer_id}".encode()) % CHAMBERS + 1
    return {**fab.process_log(wafer, ts), "chamber_id": f"{wafer.tool_id}-CH{chamber}"}


def schedule(plan, rate: float, start_at: float | None, lead_s: float) -> list[tuple[float, str, object]]:
    """(when, kind, wafer) in time order; kind is lot_start, process or lot_end. Without ``start_at``
    every time is 0 and the plan's order is kept (lot_start, its wafers' logs, lot_end, next lot)."""
    origin = start_at or 0.0
    pace = (lambda dies: origin + dies / rate) if start_at is not None else (lambda dies: 0.0)
    lots: dict[str, list] = {}
    for wafer in plan:
        lots.setdefault(wafer.lot_id, []).append(wafer)
    out: list[tuple[float, str, object]] = []
    dies_before = 0
    for wafers in lots.values():
        out.append((pace(dies_before) - lead_s, "lot_start", wafers[0]))
        for wafer in wafers:
            out.append((pace(dies_before) - lead_s, "process", wafer))
            dies_before += len(wafer.dies)
            if start_at is not None:  # paced: the wafer's end after its last die
                out.append((pace(dies_before) + lead_s, "wafer_end", wafer))
        out.append((pace(dies_before) + lead_s, "lot_end", wafers[-1]))
    return sorted(out, key=lambda item: item[0])  # stable: ties keep the plan's order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.mes_sim", description=__doc__.split("\n")[0])
    add_plan_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic-prefix", default="fab/mes", help="process logs go to PREFIX/process/TOOL")
    parser.add_argument("--start-at", type=float, help="epoch seconds the AOI simulator starts sending")
    parser.add_argument("--rate", type=float, default=40.0, help="the AOI simulator's frames per second")
    parser.add_argument("--lead-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    fab = Fab(args.seed, recipe_id=args.recipe, tool_ids=tuple(args.tools))
    plan = fab.plan(args.lots, args.wafers_per_lot, args.dies_per_wafer, args.defect_rate)
    peer = Peer(args.host, args.port, f"mes-sim-{args.seed}").wait_connected()
    sent = 0
    try:
        for when, kind, wafer in schedule(plan, args.rate, args.start_at, args.lead_s):
            delay = when - time.time()
            if delay > 0:
                time.sleep(delay)
            if kind == "process":
                peer.publish(f"{args.topic_prefix}/process/{wafer.tool_id}", mes_log(fab, wafer, time.time()))
            else:
                body = {
                    "event": kind,
                    "lot_id": wafer.lot_id,
                    "recipe_id": args.recipe,
                    "tool_id": wafer.tool_id,
                    "ts": time.time(),
                }
                if kind == "wafer_end":
                    body["wafer_id"] = wafer.wafer_id
                peer.publish(f"{args.topic_prefix}/lot/{wafer.tool_id}", body)
            sent += 1
    finally:
        peer.close()
    print(f"mes_sim: published {sent} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
