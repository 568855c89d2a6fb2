"""Replay a labelled folder (the own-data format) through a station, speaking only the documented protocols.

    python -m tools.sim.folder_replay --data DIR --frames tcp://HOST:PORT [--mqtt-host H --mqtt-port P]
                                      [--split test] [--rate 20] [--mes-prefix fab/mes]

Per wafer of the split, in label order: its ``process.csv`` row as an MES process log over MQTT
(``{prefix}/process/{tool}``, DESIGN 3.2: ``params`` by name, empty cells left out; its note, if any, rides on the
frames), then its dies as frames over ZeroMQ (DESIGN 3.1: the PNG file's bytes, ``encoding`` png). Prints one JSON
summary (replies, decisions, latency percentiles) and, per frame, its label and the station's verdict, so a fab can
see what a served model does with dies it has labelled.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from edge.ingest.wire import encode_header
from tools.dataset.folder import DataSet, Die, load
from tools.dataset.split import SPLITS
from tools.sim.aoi_sim import AoiTools, Pending, summarise
from tools.sim.mqtt_peer import Peer

Publish = Callable[[str, dict[str, object]], None]


def process_log(data: DataSet, die: Die) -> dict[str, object] | None:
    """The MES process log of ``die``'s wafer (None when the folder has no row for it)."""
    row = data.process.get(die.process_key)
    if row is None:
        return None
    params = {name: value for name, value in zip(data.parameters, row, strict=True) if not math.isnan(value)}
    return {"lot_id": die.lot_id, "wafer_id": die.wafer_id, "recipe_id": die.recipe_id, "tool_id": die.tool_id,
            "ts": time.time(), "params": params}  # fmt: skip


def frame(data: DataSet, die: Die) -> tuple[str, Pending]:
    """``die`` as the frame its tool would send, with its label."""
    header: dict[str, object] = {
        "v": 1, "frame_id": die.id, "tool_id": die.tool_id, "recipe_id": die.recipe_id, "lot_id": die.lot_id,
        "wafer_id": die.wafer_id, "die": [die.die_x, die.die_y], "ts": time.time(), "encoding": "png",
        "dtype": "uint8",
    }  # fmt: skip
    note = data.notes.get(die.process_key)
    if note:
        header["notes"] = note
    return die.tool_id, Pending(die.id, [encode_header(header), die.path.read_bytes()], die.cls, die.cls, 0.0, 0.0)


def wafers(data: DataSet, split: str) -> list[list[Die]]:
    """The dies of ``split`` grouped by wafer, wafers in the order their first die appears."""
    grouped: dict[tuple[str, str, str], list[Die]] = defaultdict(list)
    for die in data.split(split):
        grouped[(die.tool_id, *die.wafer)].append(die)
    return list(grouped.values())


def replay(
    data: DataSet, split: str, tools: AoiTools, publish: Publish, rate: float, prefix: str = "fab/mes",
    settle_s: float = 0.2, deadline_s: float = 300.0,
) -> dict[str, object]:  # fmt: skip
    """Send every wafer of ``split``: its process log, then its frames; the simulators' summary of the replies."""
    frames: list[tuple[str, Pending]] = []
    for dies in wafers(data, split):
        log = process_log(data, dies[0])
        if log is not None:
            publish(f"{prefix}/process/{dies[0].tool_id}", log)
        frames += [frame(data, d) for d in dies]
    time.sleep(settle_s)  # the logs reach the station before the frames that join them
    return summarise(tools.run(frames, rate, deadline_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.folder_replay", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a labelled folder (README: own data)")
    parser.add_argument("--frames", required=True, help="the station's frame endpoint, tcp://HOST:PORT")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, help="the broker for the process logs (none: frames only)")
    parser.add_argument("--mes-prefix", default="fab/mes")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second")
    args = parser.parse_args(argv)
    data, _ = load(Path(args.data))
    tools = AoiTools(args.frames, sorted({d.tool_id for d in data.dies}), window=32, reply_timeout_s=5.0, max_tries=3)
    peer = Peer(args.mqtt_host, args.mqtt_port, f"folder-replay-{time.monotonic_ns()}").wait_connected() \
        if args.mqtt_port else None  # fmt: skip
    try:
        summary = replay(data, args.split, tools, peer.publish if peer else lambda topic, body: None, args.rate,
                         args.mes_prefix)  # fmt: skip
    finally:
        tools.close()
        if peer:
            peer.close()
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
