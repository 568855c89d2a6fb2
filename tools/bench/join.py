"""Benchmark: reply latency at a live rate when the MES sends every wafer's log first, and when it sends none.

The same live stream (``--rate`` frames/s from two AOI tools, PNG dies, captures on) goes through a fresh station
(Triton, Mosquitto, the daemon) with the MES simulator publishing the logs first, and through one where no log ever
comes, ``--rounds`` times in turn. Without logs every frame's join could wait out ``join.window_ms`` (50 ms); the
daemon waits it once per wafer and then not at all for a silent tool (``edge.mes.join``). Prints, per mode, the
reply latency percentiles over all its rounds' frames, each round's p99 and frames/s, the replies, and the p50 and
p99 ratios without/with logs.

    python -m tools.bench.join --frames 1200 --rate 20 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from tools.bench.capture import pooled, stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.join", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-join"))
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second, both tools together")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, taken in turn")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"with_logs": [], "no_logs": []}
    for round_ in range(args.rounds):
        for mode in runs:
            workdir = args.workdir / f"{mode}-{round_ + 1}"
            shutil.rmtree(workdir, ignore_errors=True)
            runs[mode].append(stream(workdir, args.repository, args.frames, args.rate, True, mode == "with_logs"))
    with_logs, no_logs = pooled(runs["with_logs"]), pooled(runs["no_logs"])
    for summary in (with_logs, no_logs):
        for key in ("captures", "bytes_per_capture", "bytes_per_frame"):  # what captures cost: tools.bench.capture
            summary.pop(key, None)
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "frames_per_round": args.frames,
        "rate": args.rate,
        "rounds": args.rounds,
        "with_logs": with_logs,
        "no_logs": no_logs,
        "p50_ratio_no_logs_over_with": round(no_logs["latency_ms"]["p50"] / with_logs["latency_ms"]["p50"], 3),
        "p99_ratio_no_logs_over_with": round(no_logs["latency_ms"]["p99"] / with_logs["latency_ms"]["p99"], 3),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
