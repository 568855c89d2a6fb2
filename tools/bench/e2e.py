"""Benchmark: the daemon end to end against raw Triton on the same models, in one run.

Raw Triton: an asyncio gRPC client sends each frame's two requests (anomaly + classifier,
batch 1) with ``--inflight`` frames in flight, asking for the outputs the daemon asks for and sending the images the
way the daemon does (system shared memory, Triton being local). Daemon: the AOI simulator streams the same number
of frames through ZeroMQ with the same window. ``--rounds`` times in turn on the same station. Prints frames/s (the
mean over rounds) and latency percentiles (over every round's frames) of each side, the ratio daemon/raw overall and
per round, and the host.

    python -m tools.bench.e2e --frames 1000 --inflight 16 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from edge.inference.inputs import Images
from edge.inference.shared_memory import ImagePlan
from edge.inference.triton_client import TritonClient
from edge.ops import logs
from tools.bench import capture
from tools.sim import aoi_sim
from tools.station.station import RECIPE, TOOLS, Station
from tools.synth import grey, make_dataset


async def raw_triton(url: str, n: int, inflight: int) -> dict:
    data = make_dataset(seed=5, n=min(n, 64))
    grey_images = grey(data.images)
    rgb = np.ascontiguousarray(data.images.transpose(0, 3, 1, 2))
    plan = ImagePlan.for_batches(1, inflight, 256, 256, {"anomaly": 1, "classifier": 3})
    client = TritonClient(url, "anomaly", "classifier", timeout_s=10, plan=plan)
    await client.config_parameters("classifier")  # learns its outputs: EMBEDDING is asked for where declared
    latencies: list[float] = []
    sem = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        j = i % len(grey_images)
        async with sem:
            t0 = time.perf_counter()
            k = slice(j, j + 1)
            await asyncio.gather(
                client.anomaly(Images.of(grey_images[k])),
                client.classify(Images.of(rgb[k]), data.process[k], data.present[k], data.notes[k]),
            )
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one(i) for i in range(min(32, n))))  # warm-up
    latencies.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return {"frames_per_s": round(n / elapsed, 1), "latency_ms": aoi_sim.latency_percentiles(latencies),
            "latencies_ms": latencies}  # fmt: skip


def plan_frames(seed: int, n: int) -> list:
    dies = 50
    lots = max(1, -(-n // (dies * 2)))
    return aoi_sim.plan_frames(
        [
            "--seed",
            str(seed),
            "--recipe",
            RECIPE,
            "--tools",
            *TOOLS,
            "--lots",
            str(lots),
            "--wafers-per-lot",
            "2",
            "--dies-per-wafer",
            str(dies),
        ]
    )[:n]


def daemon_e2e(st: Station, n: int, inflight: int, seed: int = 5) -> dict:
    """``n`` frames of the plan of ``seed`` through the daemon, ``inflight`` at a time (each round its own seed: the
    daemon answers a frame id it has recorded from the record)."""
    tools = aoi_sim.AoiTools(st.daemon_frames, list(TOOLS), window=inflight, reply_timeout_s=30, max_tries=2)
    try:
        tools.run(plan_frames(seed=seed + 1, n=32), rate=0, deadline_s=60)  # warm-up, other frame ids
        tally = tools.run(plan_frames(seed=seed, n=n), rate=0, deadline_s=600)
    finally:
        tools.close()
    report = aoi_sim.summarise(tally)
    return {
        "frames_per_s": report["frames_per_s"],
        "latency_ms": report["latency_ms"],
        "replies": report["replies"],
        "unanswered": len(report["unanswered"]),
        "latencies_ms": tally.latencies_ms,
    }


def pooled(runs: list[dict]) -> dict:
    """Rounds of one side together (``tools.bench.capture.pooled``), its rate the mean of the rounds' frames/s."""
    summary = capture.pooled(runs)
    per_round = summary.pop("frames_per_s")
    summary.pop("p99_per_round")
    return {"frames_per_s": round(sum(per_round) / len(per_round), 1), "frames_per_s_per_round": per_round, **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("build/bench"))
    parser.add_argument("--frames", type=int, default=1000, help="per round and side")
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="raw, daemon, raw, daemon, ...: a slow spell of the "
                        "host falls on both sides")  # fmt: skip
    capture.add_decode_arguments(parser)
    args = parser.parse_args(argv)
    logs.configure(stream=sys.stderr)  # the client's log lines: the result alone goes to stdout
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh outbox: a frame seen before is answered from it
    raws, daemons = [], []
    with Station(args.workdir, args.repository, with_broker=True, ingest_extra=capture.decode_settings(args)) as st:
        assert st.triton is not None
        for round_ in range(args.rounds):
            raws.append(asyncio.run(raw_triton(st.triton.grpc_url, args.frames, args.inflight)))
            daemons.append(daemon_e2e(st, args.frames, args.inflight, seed=5 + 10 * round_))
    raw, daemon = pooled(raws), pooled(daemons)
    result = {
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "frames": args.frames,
        "rounds": args.rounds,
        "inflight": args.inflight,
        "decode_threads": args.decode_threads,
        "raw_triton": raw,
        "daemon_e2e": daemon,
        "throughput_ratio_daemon_over_raw": round(daemon["frames_per_s"] / raw["frames_per_s"], 3),
        "p50_ratio_daemon_over_raw": round(daemon["latency_ms"]["p50"] / raw["latency_ms"]["p50"], 3),
        "throughput_ratio_per_round": [round(d["frames_per_s"] / r["frames_per_s"], 3) for r, d in zip(raws, daemons)],
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
