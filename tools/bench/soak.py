"""Soak run: the whole station (Triton on the CPU, Mosquitto, the daemon as a process) fed at station
rate for a long time, with the daemon's and Triton's memory and file descriptors sampled.

It prints growth per hour (least-squares slope over the samples after the warm-up), the replies by
status, latency percentiles, and whether every event the tools were told about reached an MQTT
subscriber. A benchmark tool, not a test: run it for an hour or more. Ctrl-C or SIGTERM ends it early,
with the report of what was measured.

    python -m tools.bench.soak --repository build/model_repository --minutes 60 --rate 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tools.sim.aoi_sim import AoiTools, latency_percentiles
from tools.sim.mqtt_peer import Peer
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def stat_fields(stat: Path) -> list[str] | None:
    """The fields of a ``/proc`` stat file (process or thread) after its name: state, ppid, pgrp, ... (None: gone)."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _stats() -> dict[int, list[str]]:
    """Every process's stat fields, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(entry / "stat")) is not None:
            found[int(entry.name)] = fields
    return found


def group_pids(pgid: int) -> list[int]:
    """Processes of one process group (Triton and its Python backend stubs)."""
    return [pid for pid, fields in _stats().items() if int(fields[2]) == pgid]


def descendant_pids(pid: int) -> list[int]:
    """Processes started by ``pid``, theirs, and so on (the daemon's decode workers and their fork server)."""
    children: dict[int, list[int]] = {}
    for child, fields in _stats().items():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


@dataclass
class Sample:
    t_s: float
    daemon_rss_mb: float
    daemon_fds: int
    daemon_threads: int
    triton_rss_mb: float
    outbox_mb: float


def group_rss_mb(pgid: int) -> float:
    """Resident memory of a process group (Triton with its Python backend stubs), MiB."""
    kb = 0
    for pid in group_pids(pgid):
        try:
            kb += _status_kb(pid, "VmRSS")
        except OSError:
            pass
    return kb / 1024


def sample(t_s: float, daemon_pid: int, triton_pgid: int, outbox: Path) -> Sample:
    files = [outbox, outbox.with_name(outbox.name + "-wal")]
    return Sample(
        t_s=round(t_s, 1),
        daemon_rss_mb=_status_kb(daemon_pid, "VmRSS") / 1024,
        daemon_fds=len(os.listdir(f"/proc/{daemon_pid}/fd")),
        daemon_threads=_status_kb(daemon_pid, "Threads"),
        triton_rss_mb=group_rss_mb(triton_pgid),
        outbox_mb=sum(f.stat().st_size for f in files if f.exists()) / 2**20,
    )


def per_hour(samples: list[Sample], name: str, warmup_s: float) -> float:
    """Least-squares slope of ``name`` per hour over the samples after the warm-up."""
    kept = [s for s in samples if s.t_s >= warmup_s] or samples
    if len(kept) < 2:
        return 0.0
    t = np.array([s.t_s for s in kept]) / 3600
    y = np.array([getattr(s, name) for s in kept], dtype=float)
    return float(np.polyfit(t, y, 1)[0])


@dataclass
class Feed:
    """Cycles the pool until told to stop; MES messages of each cycle go out before its frames."""

    pool: Pool
    endpoint: str
    mqtt_port: int
    rate: float
    replies: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)  # per frame answered: status, decision, latency, replied_at
    event_ids: set[str] = field(default_factory=set)
    unanswered: int = 0
    duplicates: int = 0  # replies to a frame already answered
    frames: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        mes = Peer("127.0.0.1", self.mqtt_port, "soak-mes").wait_connected()
        tools = AoiTools(self.endpoint, list(TOOLS), window=16, reply_timeout_s=10, max_tries=20)
        try:
            n = 0
            while not self.stop.is_set():
                cycle = self.pool.cycle(n)
                for message in cycle.before:
                    mes.publish(message.topic, message.body)
                tally = tools.run(cycle.frames, rate=self.rate, deadline_s=600)
                for message in cycle.after:
                    mes.publish(message.topic, message.body)
                self.frames += len(cycle.frames)
                self.replies.update(tally.replies)
                self.latencies_ms.extend(tally.latencies_ms)
                self.outcomes.extend(tally.outcomes)
                self.event_ids.update(tally.events)
                self.unanswered += len(tally.unanswered)
                self.duplicates += tally.duplicates
                n += 1
        finally:
            tools.close()
            mes.close()


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second, both tools together")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--warmup-min", type=float, default=5.0, help="left out of the growth fit")
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary directory")
    parser.add_argument("--report", type=Path, help="write the summary and every sample as JSON here")
    parser.add_argument(
        "--config-extra",
        default="",
        help="TOML appended to the station's daemon config, e.g. "
        "'[join]\\ncache_max_wafers = 500' to reach the context cache's bound within the run",
    )
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edge-soak-"))
    pool = Pool(11, TOOLS, lots=2, wafers_per_lot=3, dies_per_wafer=25, defect_rate=0.3, recipe=RECIPE, encoding="png")
    samples: list[Sample] = []
    extra = args.config_extra.replace("\\n", "\n")
    with Station(workdir, args.repository.resolve(), config_extra=extra) as st:
        assert st.daemon is not None and st.triton is not None and st.triton.pid is not None
        consumer = Peer("127.0.0.1", st.mqtt_port, "soak-consumer", ("fab/edge/+/events/#",)).wait_connected()
        feed = Feed(pool, st.daemon_frames, st.mqtt_port, args.rate)
        feeder = threading.Thread(target=feed.run, daemon=True)
        start = time.monotonic()
        feeder.start()
        end = start + args.minutes * 60
        signal.signal(signal.SIGTERM, _interrupted)
        try:
            while time.monotonic() < end and feeder.is_alive():
                samples.append(
                    sample(time.monotonic() - start, st.daemon.pid, st.triton.pid, st.workdir / "outbox.sqlite")
                )
                print(json.dumps(samples[-1].__dict__), flush=True)
                time.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
        except KeyboardInterrupt:
            print("interrupted: the stream stops and the report covers what was measured", file=sys.stderr)
        feed.stop.set()
        feeder.join()
        samples.append(sample(time.monotonic() - start, st.daemon.pid, st.triton.pid, st.workdir / "outbox.sqlite"))
        consumer.wait_for(lambda msgs: len({json.loads(p)["event_id"] for _, p in msgs}) >= len(feed.event_ids), 60)
        received = {m["event_id"] for m in consumer.json_messages()}
        consumer.close()
        elapsed = time.monotonic() - start

    warmup = args.warmup_min * 60
    summary = {
        "host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "minutes": round(elapsed / 60, 1),
        "config_extra": extra,
        "frames": feed.frames,
        "frames_per_s": round(feed.frames / elapsed, 2),
        "replies": dict(feed.replies),
        "unanswered": feed.unanswered,
        "latency_ms": latency_percentiles(feed.latencies_ms),
        "events_replied": len(feed.event_ids),
        "events_lost": len(feed.event_ids - received),
        "growth_per_hour": {
            name: round(per_hour(samples, name, warmup), 2)
            for name in ("daemon_rss_mb", "daemon_fds", "daemon_threads", "triton_rss_mb", "outbox_mb")
        },
        "first": samples[0].__dict__,
        "after_warmup": next((s.__dict__ for s in samples if s.t_s >= warmup), samples[-1].__dict__),
        "last": samples[-1].__dict__,
    }
    print(json.dumps(summary, indent=1))
    if args.report:
        args.report.write_text(json.dumps({**summary, "samples": [s.__dict__ for s in samples]}, indent=1))
    return 0 if summary["events_lost"] == 0 and feed.unanswered == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
