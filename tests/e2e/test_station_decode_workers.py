"""A station that decodes its images in worker processes (``ingest.decode_processes``), end to end with real Triton:
every frame is inspected and recorded exactly once; its workers killed (SIGKILL) while the tools stream cost ``busy``
replies, which the tools resend, and nothing else; at the stop the daemon takes its workers with it."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.triton_fixture import served_repository
from tools.bench.soak import descendant_pids, stat_fields
from tools.sim.aoi_sim import AoiTools, summarise
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station

pytestmark = pytest.mark.e2e


def parent(pid: int) -> int | None:
    fields = stat_fields(Path(f"/proc/{pid}/stat"))
    return int(fields[1]) if fields is not None else None


def running(pid: int) -> bool:
    fields = stat_fields(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has ended: only its parent's bookkeeping


def started_workers(daemon: int, n: int) -> list[int]:
    """The daemon's worker processes (children of its fork server, not its own), once ``n`` have started."""
    deadline = time.monotonic() + 30
    while True:
        workers = [pid for pid in descendant_pids(daemon) if parent(pid) != daemon]
        if len(workers) >= n or time.monotonic() > deadline:
            assert len(workers) == n, workers
            return workers
        time.sleep(0.05)


def count(metrics: str, series: str, **labels: str) -> float:
    """The sum of ``series`` over the samples that carry ``labels``."""
    return sum(sample.value for family in text_string_to_metric_families(metrics) for sample in family.samples
               if sample.name == series and labels.items() <= sample.labels.items())  # fmt: skip


def test_a_killed_decode_worker_costs_busy_replies_and_no_frame(tmp_path):
    frames = Pool(9, TOOLS, lots=2, wafers_per_lot=1, dies_per_wafer=30, defect_rate=0.3, recipe=RECIPE,
                  encoding="png").cycle(0).frames  # fmt: skip
    ingest = "decode_processes = 2\n"
    with Station(tmp_path, served_repository(), with_broker=False, ingest_extra=ingest) as st:
        assert st.daemon is not None
        daemon = st.daemon.pid
        workers = started_workers(daemon, 2)
        killed: list[int] = []

        def kill_one_worker_midway() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and count(st.metrics_text(), "edge_frames_received_total") < 20:
                time.sleep(0.02)
            for pid in workers:  # both: which one holds a frame just then is not for the test to know
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        killer = threading.Thread(target=kill_one_worker_midway)
        killer.start()
        aoi = AoiTools(st.daemon_frames, list(TOOLS), window=8, reply_timeout_s=10, max_tries=10)
        try:
            report = summarise(aoi.run(frames, rate=0, deadline_s=180))
        finally:
            aoi.close()
            killer.join()
        metrics = st.metrics_text()
        alive = descendant_pids(daemon)
        st.stop_daemon()
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
            recorded = db.execute("SELECT COUNT(*), COUNT(DISTINCT frame_id) FROM results").fetchone()
    assert len(killed) == 2 and not set(killed) & set(alive)  # replaced, not merely still there
    assert report["unanswered"] == [] and report["duplicate_replies"] == 0
    assert {o["status"] for o in report["outcomes"]} == {"ok"} and len(report["outcomes"]) == len(frames)
    assert recorded == (len(frames), len(frames))
    assert count(metrics, "edge_decode_worker_restarts_total") == 2
    # a worker killed with a frame in hand cost that frame a busy reply (the tool resent it), one killed idle none
    busy = report["replies"].get("busy", 0)
    assert busy <= 2 and count(metrics, "edge_frames_busy_total", reason="decoder_restarting") == busy
    assert not [pid for pid in alive if running(pid)]  # every worker ended with the daemon
