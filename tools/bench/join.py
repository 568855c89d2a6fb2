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
import sys

from tools.bench.capture import add_stream_arguments, in_turn, latency_ratios, run_facts, stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.join", description=__doc__.split("\n")[0])
    add_stream_arguments(parser, "build/bench-join")
    args = parser.parse_args(argv)
    pools = in_turn(args, ("with_logs", "no_logs"), lambda workdir, mode: stream(
        workdir, args.repository, args.frames, args.rate, True, mode == "with_logs"))  # fmt: skip
    with_logs, no_logs = pools["with_logs"], pools["no_logs"]
    for summary in (with_logs, no_logs):
        for key in ("captures", "bytes_per_capture", "bytes_per_frame"):  # what captures cost: tools.bench.capture
            summary.pop(key, None)
    result = {**run_facts(args), "with_logs": with_logs, "no_logs": no_logs,
              **latency_ratios(no_logs, with_logs, "no_logs_over_with")}  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
