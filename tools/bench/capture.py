"""Benchmark: what keeping captures costs the reply path, and what a capture costs on disk, in one run.

The same live stream (``--rate`` frames/s from two AOI tools, MES logs first, the simulator's defect rate) goes
through a station with captures off and one with them on, each fresh (Triton, Mosquitto, the daemon), ``--rounds``
times in turn (off, on, off, on, ...: a slow minute of the host falls on both). Prints, per mode, the reply
latency percentiles over all its rounds' frames and each round's p99, the p50 and p99 ratios on/off, the captures
kept by why, and the capture store's bytes per captured die and per frame streamed.

    python -m tools.bench.capture --frames 1200 --rate 20 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.capture.store import CaptureStore
from tools.sim import aoi_sim, mes_sim
from tools.station.station import RECIPE, TOOLS, Station


def _plan(n: int, seed: int) -> list[str]:
    dies = 50
    lots = max(1, -(-n // (dies * 2)))  # lots x 2 wafers x dies frames, the tools taking turns
    return ["--seed", str(seed), "--recipe", RECIPE, "--tools", *TOOLS, "--lots", str(lots), "--wafers-per-lot", "2",
            "--dies-per-wafer", str(dies)]  # fmt: skip


def stream(
    workdir: Path, repository: Path, n: int, rate: float, capture: bool, mes: bool = True, transport: str = "tcp"
) -> dict:
    """One fresh station, ``n`` frames at ``rate``: its replies' latencies and, with ``capture``, what it kept;
    ``mes``: the MES simulator publishes the wafers' logs first (else no log ever comes); ``transport``: the tools
    connect over loopback TCP, or over the intake's Unix socket (``ipc``, ``ingest.also_bind``)."""
    extra = "" if capture else "[capture]\nenabled = false\n"
    plan = _plan(n, seed=11)
    with contextlib.ExitStack() as stack:
        unix = None
        if transport == "ipc":  # a short folder of its own: a Unix socket's path has a length limit
            unix = f"ipc://{stack.enter_context(tempfile.TemporaryDirectory(prefix='edge-'))}/frames.sock"
        ingest = f'also_bind = ["{unix}"]\n' if unix else ""
        st = stack.enter_context(
            Station(workdir, repository, with_broker=True, config_extra=extra, ingest_extra=ingest)
        )
        if mes:
            assert mes_sim.main([*plan, "--port", str(st.mqtt_port)]) == 0
        tools = aoi_sim.AoiTools(unix or st.daemon_frames, list(TOOLS), window=32, reply_timeout_s=30, max_tries=2)
        try:
            tools.run(aoi_sim.plan_frames(_plan(32, seed=12)), rate=0, deadline_s=120)  # warm-up, other ids
            tally = tools.run(aoi_sim.plan_frames(plan)[:n], rate=rate, deadline_s=n / rate + 120)
        finally:
            tools.close()
    report = aoi_sim.summarise(tally)
    result = {"frames_per_s": report["frames_per_s"], "latencies_ms": tally.latencies_ms,
              "replies": report["replies"], "unanswered": len(report["unanswered"])}  # fmt: skip
    if capture:
        store = CaptureStore(workdir / "captures", 10**12, 10**9, 10**9)
        try:
            result["captures"] = Counter(store.kept_by_reason())
            result["capture_bytes"] = store.used_bytes
        finally:
            store.close()
    return result


def pooled(runs: list[dict]) -> dict:
    """One mode's rounds together: percentiles over every frame, each round's p99 and frames/s, and where the runs
    have them, the replies and what was kept."""
    summary: dict = {
        "latency_ms": aoi_sim.latency_percentiles([ms for run in runs for ms in run["latencies_ms"]]),
        "p99_per_round": [aoi_sim.latency_percentiles(run["latencies_ms"])["p99"] for run in runs],
        "frames_per_s": [run["frames_per_s"] for run in runs],
    }
    if "replies" in runs[0]:  # raw Triton's side of tools.bench.e2e has none
        summary["replies"] = dict(sum((Counter(run["replies"]) for run in runs), Counter()))
        summary["unanswered"] = sum(run["unanswered"] for run in runs)
    if "captures" in runs[0]:
        kept = sum((run["captures"] for run in runs), Counter())
        total = sum(run["capture_bytes"] for run in runs)
        summary["captures"] = dict(kept)
        summary["bytes_per_capture"] = round(total / max(1, sum(kept.values())))
        summary["bytes_per_frame"] = round(total / max(1, sum(summary["replies"].values())))
    return summary


def add_stream_arguments(parser: argparse.ArgumentParser, workdir: str) -> None:
    """The options of a bench that streams ``--frames`` at ``--rate`` through fresh stations, ``--rounds`` per mode."""
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second, both tools together")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, taken in turn")


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the daemon of a bench decodes: its [ingest] ``decode_processes`` and ``decode_threads``."""
    parser.add_argument("--decode-processes", type=int, default=0,
                        help="the daemon's [ingest] decode_processes (0: decode on its threads)")  # fmt: skip
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="the daemon's [ingest] decode_threads; default: the daemon's")  # fmt: skip


def decode_settings(args: argparse.Namespace) -> str:
    """The [ingest] lines of ``add_decode_arguments``'s options."""
    lines = f"decode_processes = {args.decode_processes}\n"
    return lines if args.decode_threads is None else lines + f"decode_threads = {args.decode_threads}\n"


def in_turn(args: argparse.Namespace, modes: Sequence[str], run: Callable[[Path, str], dict]) -> dict[str, dict]:
    """``run(workdir, mode)`` for every mode, ``args.rounds`` times in turn (a slow minute of the host falls on
    every mode), each in a fresh work folder (a fresh outbox: a frame seen before is answered from it); each mode's
    rounds ``pooled``."""
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in modes:
            workdir = args.workdir / f"{mode}-{round_ + 1}"
            shutil.rmtree(workdir, ignore_errors=True)
            runs[mode].append(run(workdir, mode))
    return {mode: pooled(found) for mode, found in runs.items()}


def host() -> dict:
    """The machine a bench ran on."""
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def latency_ratios(a: dict, b: dict, name: str) -> dict[str, float]:
    """The p99 and p50 reply latency of pooled mode ``a`` over mode ``b``, as ``p99_ratio_<name>`` and ``p50_...``."""
    return {f"p{p}_ratio_{name}": round(a["latency_ms"][f"p{p}"] / b["latency_ms"][f"p{p}"], 3) for p in (99, 50)}


def run_facts(args: argparse.Namespace) -> dict:
    """What a result says of its run: the host, the frames, the rate, the rounds."""
    return {
        "host": host(),
        "frames_per_round": args.frames,
        "rate": args.rate,
        "rounds": args.rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.capture", description=__doc__.split("\n")[0])
    add_stream_arguments(parser, "build/bench-capture")
    args = parser.parse_args(argv)
    pools = in_turn(
        args,
        ("off", "on"),
        lambda workdir, mode: stream(workdir, args.repository, args.frames, args.rate, mode == "on"),
    )
    off, on = pools["off"], pools["on"]
    result = {**run_facts(args), "capture_off": off, "capture_on": on, **latency_ratios(on, off, "on_over_off")}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
