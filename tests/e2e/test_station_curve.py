"""A station whose frame intake requires ZeroMQ CURVE, end to end with real Triton: a tool key's
certificate name says which tool it may send frames for. The simulated tools share one key pair; with
the key authorised as AOI-01 only, AOI-02's frames are refused, and once the same certificate is also
filed as AOI-02 (a controller serving both tools) they are inspected too, without a restart. The second round
comes in over the intake's Unix socket (``ingest.also_bind``): the same keys hold there."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from edge.cli import main as edge_inspect
from tests.triton_fixture import served_repository
from tools.sim.aoi_sim import AoiTools, CurveClient, summarise
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station

pytestmark = pytest.mark.e2e


def send(endpoint: str, curve: CurveClient, pool: Pool, n: int) -> dict[str, list[dict]]:
    """One cycle of both tools' frames over CURVE to ``endpoint``; the outcomes by tool."""
    frames = pool.cycle(n).frames
    tool_of = {frame.frame_id: tool for tool, frame in frames}
    aoi = AoiTools(endpoint, list(TOOLS), window=8, reply_timeout_s=10, max_tries=3, curve=curve)
    try:
        report = summarise(aoi.run(frames, rate=0, deadline_s=120))
    finally:
        aoi.close()
    assert report["unanswered"] == []
    by_tool: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
    for outcome in report["outcomes"]:
        by_tool[tool_of[outcome["frame_id"]]].append(outcome)
    return by_tool


def test_a_tool_key_sends_only_for_the_tools_it_is_filed_under(tmp_path):
    for directory, name in (("station", "ST-01"), ("tools", "AOI-CTL")):
        assert edge_inspect(["curve-keygen", str(tmp_path / directory), name]) == 0
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(tmp_path / "tools" / "AOI-CTL.key", authorized / "AOI-01.key")
    ingest = (
        f'curve_secret_key_file = "{tmp_path / "station" / "ST-01.key_secret"}"\n'
        f'curve_authorized_keys = "{authorized}"\n'
    )
    curve = CurveClient.from_files(
        str(tmp_path / "station" / "ST-01.key"), str(tmp_path / "tools" / "AOI-CTL.key_secret")
    )
    pool = Pool(5, TOOLS, lots=2, wafers_per_lot=1, dies_per_wafer=6, defect_rate=0.3, recipe=RECIPE, encoding="png")
    with tempfile.TemporaryDirectory(prefix="edge-") as run:  # short: a Unix socket's path has a length limit
        unix = Path(run) / "frames.sock"
        ingest += f'also_bind = ["ipc://{unix}"]\n'
        with Station(tmp_path / "station-run", served_repository(), with_broker=False, ingest_extra=ingest) as st:
            first = send(st.daemon_frames, curve, pool, 0)
            shutil.copy(authorized / "AOI-01.key", authorized / "AOI-02.key")  # the controller serves AOI-02 too
            second = send(f"ipc://{unix}", curve, pool, 1)
            metrics = st.metrics_text()
            mode = stat.S_IMODE(unix.stat().st_mode)
    assert mode == 0o660  # the daemon's group may connect, nobody else
    assert first["AOI-01"] and all(o["status"] == "ok" for o in first["AOI-01"])
    assert first["AOI-02"] and all(
        o["status"] == "rejected" and o["reason"].startswith("tool_key_mismatch") for o in first["AOI-02"]
    )
    assert "speaks for AOI-01, not AOI-02" in first["AOI-02"][0]["reason"]
    assert all(o["status"] == "ok" for tool in TOOLS for o in second[tool]) and second["AOI-02"]
    refused = len(first["AOI-02"])
    assert f'edge_frames_rejected_total{{reason="tool_key_mismatch"}} {float(refused)}' in metrics
