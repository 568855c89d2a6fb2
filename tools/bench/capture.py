"""Benchmark: what keeping captures costs the reply path, and what a capture costs on disk, in one run.

The same live stream (``--rate`` frames/s from two AOI tools, MES logs first, the default defect rate) goes through
one station with captures off and one with them on, each fresh (Triton, Mosquitto, the daemon). Prints each run's
reply latency percentiles and frames/s, the p99 ratio on/off, the captures kept by why, and the capture store's
bytes per captured die and per frame streamed.

    python -m tools.bench.capture --frames 1200 --rate 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from collections import Counter
from pathlib import Path

from edge.capture.store import CaptureStore
from tools.sim import aoi_sim, mes_sim
from tools.station.station import RECIPE, TOOLS, Station


def _plan(n: int, seed: int) -> list[str]:
    dies = 50
    lots = max(1, -(-n // (dies * 2 * len(TOOLS))))
    return ["--seed", str(seed), "--recipe", RECIPE, "--tools", *TOOLS, "--lots", str(lots), "--wafers-per-lot", "2",
            "--dies-per-wafer", str(dies)]  # fmt: skip


def stream(workdir: Path, repository: Path, n: int, rate: float, capture: bool) -> dict:
    """One fresh station, ``n`` frames at ``rate``; its replies' latency and, with ``capture``, the store's size."""
    extra = "" if capture else "[capture]\nenabled = false\n"
    plan = _plan(n, seed=11)
    with Station(workdir, repository, with_broker=True, config_extra=extra) as st:
        assert mes_sim.main([*plan, "--port", str(st.mqtt_port)]) == 0
        tools = aoi_sim.AoiTools(st.daemon_frames, list(TOOLS), window=32, reply_timeout_s=30, max_tries=2)
        try:
            tools.run(aoi_sim.plan_frames(_plan(32, seed=12)), rate=0, deadline_s=120)  # warm-up, other ids
            tally = tools.run(aoi_sim.plan_frames(plan)[:n], rate=rate, deadline_s=n / rate + 120)
        finally:
            tools.close()
    report = aoi_sim.summarise(tally)
    result = {"frames_per_s": report["frames_per_s"], "latency_ms": report["latency_ms"], "replies": report["replies"],
              "unanswered": len(report["unanswered"])}  # fmt: skip
    if capture:
        store = CaptureStore(workdir / "captures", 10**12, 10**9, 10**9)
        try:
            kept = store.recent(limit=10**6)
        finally:
            store.close()
        total = sum(c.bytes for c in kept)
        result["captures"] = dict(Counter(c.reason for c in kept))
        result["capture_bytes"] = total
        result["bytes_per_capture"] = round(total / len(kept)) if kept else None
        result["bytes_per_frame"] = round(total / n)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.capture", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-capture"))
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second, both tools together")
    args = parser.parse_args(argv)
    runs = {}
    for mode, capture in (("off", False), ("on", True)):
        workdir = args.workdir / mode
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh outbox: a frame seen before is answered from it
        runs[mode] = stream(workdir, args.repository, args.frames, args.rate, capture)
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "frames": args.frames,
        "rate": args.rate,
        "capture_off": runs["off"],
        "capture_on": runs["on"],
        "p99_ratio_on_over_off": round(runs["on"]["latency_ms"]["p99"] / runs["off"]["latency_ms"]["p99"], 3),
        "p50_ratio_on_over_off": round(runs["on"]["latency_ms"]["p50"] / runs["off"]["latency_ms"]["p50"], 3),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
