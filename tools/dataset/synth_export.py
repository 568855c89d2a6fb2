"""The project's synthetic fab (``tools.synth``) written out in the own-data format, so its dies train through the
same command as a fab's (``edge-inspect train``).

    python -m tools.dataset.synth_export --out DIR [--n 3000] [--seed 1] [--defect-rate 0.4] [--split]

Wafers of 25 dies, lots of 5 wafers, lots round robin over the generator's tools; every die a PNG (RGB, 256x256)
under ``images/<split or all>/<class>/``, its label row in ``labels.csv``, its wafer's MES process log (the 48
parameters) and operator note in ``process.csv``. A wafer's process log is missing as often as the generator drops
one (``--process-rate``). ``--split`` writes train / val / test by lot (3 : 1 : 1); without it the split column
is empty and training splits by wafer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge.process_params import DEFAULT_PARAMETERS
from tools.dataset.folder import write_csvs
from tools.synth import Fab, rng_for

DIES_PER_WAFER = 25
WAFERS_PER_LOT = 5
LOT_SPLIT = ("train", "train", "train", "val", "test")


def export(out: Path, n: int, seed: int = 1, defect_rate: float = 0.4, split: bool = False,
           process_rate: float = 0.95) -> Path:  # fmt: skip
    """Write at least ``n`` dies (whole wafers) of the generator's fab ``seed`` under ``out``."""
    fab = Fab(seed)
    wafers = -(-n // DIES_PER_WAFER)
    plan = fab.plan(-(-wafers // WAFERS_PER_LOT), WAFERS_PER_LOT, DIES_PER_WAFER, defect_rate)[:wafers]
    labels, process = [], []
    lots = sorted({w.lot_id for w in plan})
    for wafer in plan:
        part = LOT_SPLIT[lots.index(wafer.lot_id) % len(LOT_SPLIT)] if split else ""
        log = fab.process_log(wafer, time.time())
        if rng_for(seed, "export", wafer.lot_id, wafer.wafer_id).random() < process_rate:
            process.append({"lot_id": wafer.lot_id, "wafer_id": wafer.wafer_id, "recipe_id": fab.recipe_id,
                            "tool_id": wafer.tool_id, **log["params"], "notes": wafer.note or ""})  # fmt: skip
        for die in wafer.dies:
            rel = Path("images") / (part or "all") / die.label / f"{die.frame_id}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            image = fab.render(die, wafer).image
            cv2.imwrite(str(out / rel), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
            labels.append([die.frame_id, part, die.label, wafer.tool_id, fab.recipe_id, wafer.lot_id, wafer.wafer_id,
                           die.die[0], die.die[1], rel.as_posix()])  # fmt: skip
    write_csvs(out, labels, process, [*DEFAULT_PARAMETERS, "notes"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dataset.synth_export", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=3000, help="dies (rounded up to whole wafers)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--defect-rate", type=float, default=0.4)
    parser.add_argument("--process-rate", type=float, default=0.95, help="share of wafers with a process log")
    parser.add_argument("--split", action="store_true", help="write a split by lot (default: leave it to training)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    export(args.out, args.n, args.seed, args.defect_rate, args.split, args.process_rate)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
