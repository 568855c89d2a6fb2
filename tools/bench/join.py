"""Benchmark: reply latency at a live rate when the MES sends every wafer's log first, and when it sends none,
with the tools on loopback TCP and on the intake's Unix socket.

The same live stream (``--rate`` frames/s from two AOI tools, PNG dies, captures on) goes through a fresh station
(Triton, Mosquitto, the daemon) with the MES simulator publishing the logs first, and through one where no log ever
comes, ``--rounds`` times in turn, for each of ``--transports``. Without logs every frame's join could wait out
``join.window_ms`` (50 ms); the daemon waits it once per wafer and then not at all for a silent tool
(``edge.mes.join``). ``tcp``: the tools connect to ``ingest.bind`` on 127.0.0.1; ``ipc``: to a Unix socket the
intake also binds (``ingest.also_bind``). On loopback TCP the kernel's delayed acknowledgements hold a large frame
about 40 ms now and then (before the daemon sees it); the Unix socket has none. Prints, per mode, the reply latency
percentiles over all its rounds' frames, each round's p99 and frames/s, the replies, and the p50 and p99 ratios
without/with logs per transport.

    python -m tools.bench.join --frames 1200 --rate 20 --rounds 2 [--transports tcp,ipc]
"""

from __future__ import annotations

import argparse
import json
import sys

from tools.bench.capture import add_stream_arguments, in_turn, latency_ratios, run_facts, stream

TRANSPORTS = ("tcp", "ipc")


def mode_name(logs: bool, transport: str) -> str:
    return ("with_logs" if logs else "no_logs") + ("" if transport == "tcp" else f"_{transport}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.join", description=__doc__.split("\n")[0])
    add_stream_arguments(parser, "build/bench-join")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="tcp, ipc or both (comma-separated)")
    args = parser.parse_args(argv)
    transports = [t for t in args.transports.split(",") if t]
    if not transports or set(transports) - set(TRANSPORTS):
        parser.error(f"--transports: one or more of {', '.join(TRANSPORTS)}")
    modes = {mode_name(logs, t): (logs, t) for t in transports for logs in (True, False)}
    pools = in_turn(args, tuple(modes), lambda workdir, mode: stream(
        workdir, args.repository, args.frames, args.rate, True, modes[mode][0], modes[mode][1]))  # fmt: skip
    for summary in pools.values():
        for key in ("captures", "bytes_per_capture", "bytes_per_frame"):  # what captures cost: tools.bench.capture
            summary.pop(key, None)
    ratios = {}
    for t in transports:
        name = "no_logs_over_with" + ("" if t == "tcp" else f"_{t}")
        ratios.update(latency_ratios(pools[mode_name(False, t)], pools[mode_name(True, t)], name))
    print(json.dumps({**run_facts(args), "transports": transports, **pools, **ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
