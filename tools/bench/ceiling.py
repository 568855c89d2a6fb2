"""Benchmark: the daemon's own ceiling and its CPU time per frame, with the models' compute taken out.

A station (Triton, Mosquitto, the daemon as a process; events published, captures kept) serves the null form of
``--repository`` (``tools.bench.null_repository``: the same tensors and configs, almost no arithmetic). The MES
simulator sends every wafer's log first; two AOI tools stream ``--frames`` PNG dies (256x256 RGB, ``--distinct`` of
them rendered, each sent under many frame ids) as fast as the daemon answers, ``--inflight`` in flight. Prints frames/s
(the ceiling), reply latency percentiles, that every frame was answered and recorded, and the CPU seconds per frame of
the daemon process, of Triton (with its model stubs) and of the client, from ``/proc``; then the daemon's own account
of its CPU per stage (``edge_stage_cpu_seconds_total``) per frame, and what no stage accounts for.

    python -m tools.bench.ceiling --frames 20000 --inflight 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
from prometheus_client.parser import text_string_to_metric_families

from edge.ingest.wire import encode_header
from tools.bench.capture import add_decode_arguments, decode_settings, host
from tools.bench.null_repository import build as build_null
from tools.bench.soak import descendant_pids, group_pids, stat_fields
from tools.sim import aoi_sim, mes_sim
from tools.sim.aoi_sim import Pending
from tools.station.station import RECIPE, TOOLS, Station
from tools.synth import Fab

DIES_PER_WAFER = 50
TICK = os.sysconf("SC_CLK_TCK")


def lots_for(n: int) -> int:
    """Lots of 2 wafers of ``DIES_PER_WAFER`` dies that hold ``n`` frames (the tools take the lots in turn)."""
    return max(1, -(-n // (DIES_PER_WAFER * 2)))


def plan_arguments(n: int, seed: int) -> list[str]:
    return ["--seed", str(seed), "--recipe", RECIPE, "--tools", *TOOLS, "--lots", str(lots_for(n)),
            "--wafers-per-lot", "2", "--dies-per-wafer", str(DIES_PER_WAFER)]  # fmt: skip


def frames(n: int, distinct: int, seed: int, encoding: str = "png") -> list[tuple[str, Pending]]:
    """``n`` frames of the plan of ``seed`` (its wafers, dies and ids, which the MES simulator's logs name too), their
    images ``distinct`` rendered dies taken in turn: rendering every die would cost more than the run."""
    rendered = aoi_sim.plan_frames(plan_arguments(distinct, seed + 1000), encoding)[:distinct]
    payloads = [frame.parts[1] for _, frame in rendered]
    first = msgpack.unpackb(rendered[0][1].parts[0])
    image = {key: first[key] for key in ("encoding", "shape", "dtype") if key in first}  # how the payloads are sent
    plan = Fab(seed, recipe_id=RECIPE, tool_ids=TOOLS).plan(lots_for(n), 2, DIES_PER_WAFER, 0.3)
    out: list[tuple[str, Pending]] = []
    for wafer in plan:
        for die in wafer.dies:
            header = {"v": 1, "frame_id": die.frame_id, "tool_id": wafer.tool_id, "recipe_id": RECIPE,
                      "lot_id": wafer.lot_id, "wafer_id": wafer.wafer_id, "die": list(die.die), "ts": time.time(),
                      **image}  # fmt: skip
            parts = [encode_header(header), payloads[len(out) % len(payloads)]]
            out.append((wafer.tool_id, Pending(die.frame_id, parts, die.label, die.look, 0.0, 0.0)))
            if len(out) == n:
                return out
    return out


def stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds in a ``/proc`` stat file of a process or thread (0 when it is gone)."""
    fields = stat_fields(stat)
    return (int(fields[11]) + int(fields[12])) / TICK if fields is not None else 0.0


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by thread name (threads of one name summed; ``event loop``: the main
    thread; Python's own threads, the decode and SQLite ones among them, are all named ``python``)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "event loop" if task.name == str(pid) else (task / "comm").read_text().strip()
        except OSError:
            continue
        found[name] = found.get(name, 0.0) + stat_cpu_s(task / "stat")
    return found


COUNTED = ("edge_stage_cpu_seconds_total", "edge_stage_latency_seconds_sum", "edge_stage_latency_seconds_count",
           "edge_batch_size_sum", "edge_batch_size_count", "edge_outbox_writes_per_commit_sum",
           "edge_outbox_writes_per_commit_count")  # fmt: skip


def daemon_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """The daemon's own counts the result reads, by (series, stage; "" for none)."""
    return {(sample.name, sample.labels.get("stage", "")): sample.value
            for family in text_string_to_metric_families(metrics_text) for sample in family.samples
            if sample.name in COUNTED}  # fmt: skip


@dataclass(frozen=True)
class Reading:
    """CPU seconds so far of the daemon, of Triton's process group (the server and its stubs) and of this client,
    the daemon's threads, and its own counts."""

    daemon_s: float
    triton_s: float
    client_s: float
    threads: dict[str, float]
    counts: dict[tuple[str, str], float]

    @classmethod
    def now(cls, st: Station) -> Reading:
        assert st.daemon is not None and st.triton is not None and st.triton.pid is not None
        me = resource.getrusage(resource.RUSAGE_SELF)
        triton = sum(stat_cpu_s(Path(f"/proc/{pid}/stat")) for pid in group_pids(st.triton.pid))  # its own session
        threads = thread_cpu_s(st.daemon.pid)
        # its decode workers and their fork server (ingest.decode_processes), multiprocessing's resource tracker
        children = sum(stat_cpu_s(Path(f"/proc/{pid}/stat")) for pid in descendant_pids(st.daemon.pid))
        threads["child processes"] = children
        return cls(stat_cpu_s(Path(f"/proc/{st.daemon.pid}/stat")) + children, triton, me.ru_utime + me.ru_stime,
                   threads, daemon_counts(st.metrics_text()))  # fmt: skip


def recorded_results(outbox: Path) -> int:
    with sqlite3.connect(outbox) as db:
        return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def measure(st: Station, todo: list[tuple[str, Pending]], warm: list[tuple[str, Pending]], inflight: int) -> dict:
    tools = aoi_sim.AoiTools(st.daemon_frames, list(TOOLS), window=inflight, reply_timeout_s=30, max_tries=2)
    try:
        tools.run(warm, rate=0, deadline_s=120)
        before = Reading.now(st)
        tally = tools.run(todo, rate=0, deadline_s=600)
        after = Reading.now(st)
    finally:
        tools.close()
    report = aoi_sim.summarise(tally)
    n = max(1, sum(report["replies"].values()))
    daemon_ms = (after.daemon_s - before.daemon_s) * 1000 / n
    counted = {key: value - before.counts.get(key, 0.0) for key, value in after.counts.items()}
    stages = {stage: round(s * 1000 / n, 4) for (name, stage), s in counted.items() if name == COUNTED[0]}
    wall = {stage: round(s * 1000 / max(1.0, counted[(COUNTED[2], stage)]), 2)
            for (name, stage), s in counted.items() if name == COUNTED[1]}  # fmt: skip
    threads = {name: round((cpu - before.threads.get(name, 0.0)) * 1000 / n, 4) for name, cpu in after.threads.items()}
    commits = counted.get((COUNTED[6], ""), 0.0)
    return {
        "frames_per_s": report["frames_per_s"],
        "latency_ms": report["latency_ms"],
        "replies": report["replies"],
        "unanswered": len(report["unanswered"]),
        "mean_batch": round(counted[(COUNTED[3], "")] / max(1.0, counted[(COUNTED[4], "")]), 1),
        # outbox commits (each one sync to the disk): how many batches each carried, how many per frame
        "outbox_writes_per_commit": round(counted.get((COUNTED[5], ""), 0.0) / max(1.0, commits), 2),
        "outbox_commits_per_frame": round(commits / n, 3),
        "cpu_ms_per_frame": {
            "daemon": round(daemon_ms, 4),
            "triton_with_stubs": round((after.triton_s - before.triton_s) * 1000 / n, 4),
            "client": round((after.client_s - before.client_s) * 1000 / n, 4),
        },
        "daemon_thread_cpu_ms_per_frame": dict(sorted(threads.items(), key=lambda item: -item[1])),
        "daemon_stage_cpu_ms_per_frame": stages,
        # the daemon's clocks: mean wall time of each stage it times (per frame, or per batch for inference/outbox)
        "daemon_stage_wall_ms_mean": wall,
        "daemon_cpu_ms_per_frame_in_no_stage": round(daemon_ms - sum(stages.values()), 4) if stages else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-ceiling"))
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=200, help="dies rendered; the frames take them in turn")
    parser.add_argument("--encoding", choices=("png", "raw"), default="png", help="the frames' image payloads")
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    null_repository = args.workdir / "null_repository"
    null = build_null(args.repository, null_repository)
    todo = frames(args.frames, args.distinct, seed=21, encoding=args.encoding)
    warm = frames(2 * DIES_PER_WAFER * len(TOOLS), args.distinct, seed=22, encoding=args.encoding)
    ingest = decode_settings(args)
    with Station(args.workdir / "station", null_repository, with_broker=True, ingest_extra=ingest) as st:
        with contextlib.redirect_stdout(sys.stderr):  # its count of messages: the result alone goes to stdout
            for seed, n in ((21, args.frames), (22, len(warm))):
                assert mes_sim.main([*plan_arguments(n, seed), "--port", str(st.mqtt_port)]) == 0
        result = measure(st, todo, warm, args.inflight)
        st.stop_daemon()
        result["recorded"] = recorded_results(st.workdir / "outbox.sqlite") - len(warm)
    print(json.dumps({"host": host(), "models": f"null ({', '.join(null)})", "inflight": args.inflight,
                      "encoding": args.encoding, "decode_processes": args.decode_processes,
                      "decode_threads": args.decode_threads, "frames": args.frames,
                      **result}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
