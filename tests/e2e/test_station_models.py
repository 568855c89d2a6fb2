"""Changing models on a running station, end to end: Triton (CPU, explicit model control) serving the station's view,
Mosquitto, the daemon as a process, two AOI tools streaming all along. A second version trained with another seed
and budget is deployed, shadowed (agreement figures appear, the replies stay the live version's), tried as a canary on
one tool (its events carry the new version, the other tool's the old); a deliberately bad version (calls every die
GOOD) is rolled back by the disagreement guardrail on its own; the second version is promoted, then rolled back.
Every frame is answered exactly once, none ``not_inspected``, and every event names the version that decided it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.triton_fixture import served_repository
from tools.bench.soak import Feed
from tools.sim.mqtt_peer import Peer
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station

pytestmark = pytest.mark.e2e

CANARY_TOOL, OTHER_TOOL = TOOLS[1], TOOLS[0]
# judged once 60 of the canary's frames are compared: the trained candidate's few seconds as a canary stay under it
# (a quick-budget model decides 15-20% of the dies otherwise), the bad one crosses 25% well within its run
GUARDRAILS = "[models.guardrails]\nmin_frames = 60\nwindow_frames = 200\nmax_disagreement = 0.25\n"
ALL_GOOD = '''"""A deliberately bad classifier: every die GOOD (the lifecycle's guardrails must catch it)."""

import numpy as np
from ort_model import OnnxRuntimeModel


class _AllGood:
    def __init__(self, session):
        self._session = session

    def run(self, names, feeds):
        results = self._session.run(names, feeds)
        probs = names.index("PROBS")
        good = np.zeros_like(results[probs])
        good[:, 0] = 1.0  # GOOD is the first class
        results[probs] = good
        return results

    def __getattr__(self, name):
        return getattr(self._session, name)


class TritonPythonModel(OnnxRuntimeModel):
    def initialize(self, args):
        super().initialize(args)
        self.session = _AllGood(self.session)
'''


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> dict[str, Path]:
    """Model repositories holding one candidate each: ``trained`` (the reference recipe, quick budget, another seed)
    and ``bad`` (the reference models, the classifier's answers replaced by GOOD)."""
    root = tmp_path_factory.mktemp("candidates")
    models = root / "models"
    for command in (
        ["-m", "tools.train", "--model", "all", "--quick", "--seed", "123", "--no-baselines", "--out", str(models)],
        ["-m", "tools.build_repository", "--models", str(models), "--out", str(root / "trained")],
    ):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    reference = served_repository()
    newest = max(int(p.name) for p in (reference / "classifier").iterdir() if p.name.isdigit())
    for name in ("anomaly", "classifier"):
        target = root / "bad" / name / "1"
        shutil.copytree(reference / name / str(newest), target, ignore=shutil.ignore_patterns("__pycache__"))
        if not (target / "config.pbtxt").is_file():  # a repository built before versions kept their own config
            shutil.copyfile(reference / name / "config.pbtxt", target / "config.pbtxt")
    (root / "bad" / "classifier" / "1" / "model.py").write_text(ALL_GOOD)
    return {"trained": root / "trained", "bad": root / "bad"}


class Run:
    """The station under a steady stream, the MES consumer's view of it, and the commands sent."""

    def __init__(self, st: Station, consumer: Peer, feed: Feed, feeder: threading.Thread) -> None:
        self.st, self.consumer, self.feed, self._feeder = st, consumer, feed, feeder
        self.answers: list[dict[str, Any]] = []

    def finish(self) -> None:
        """The stream stops once its current cycle is answered."""
        self.feed.stop.set()
        self._feeder.join(timeout=120)

    def models(self, *args: str) -> dict[str, Any]:
        """``edge-inspect models ARGS --json`` as an operator would run it; its answer."""
        done = subprocess.run(
            [sys.executable, "-m", "edge", "models", *args, "--config", str(self.st.config_path), "--by", "e2e",
             "--reason", "lifecycle test", "--json"], capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        answer = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {"stderr": done.stderr}
        self.answers.append(answer)
        return answer

    def events(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Defect events the consumer got, made between ``since`` and ``until`` (epoch seconds)."""
        found = self.consumer.json_messages("fab/edge/ST-01/events/")
        return [e for e in found if e["ts"] >= since and (until is None or e["ts"] <= until)]

    def wait_events(self, since: float, tools: set[str], timeout_s: float = 60) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not tools <= {e["tool_id"] for e in self.events(since)}:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def run(candidates, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lifecycle")
    repository = workdir / "repository"
    shutil.copytree(served_repository(), repository, ignore=shutil.ignore_patterns("__pycache__", ".built"))
    pool = Pool(3, TOOLS, lots=2, wafers_per_lot=1, dies_per_wafer=20, defect_rate=0.4, recipe=RECIPE)
    with Station(workdir / "station", repository, with_broker=True, model_lifecycle=True,
                 config_extra=GUARDRAILS) as st:  # fmt: skip
        assert st.mqtt_port is not None
        consumer = Peer("127.0.0.1", st.mqtt_port, "lifecycle-consumer", ("fab/edge/#",)).wait_connected()
        feed = Feed(pool, st.daemon_frames, st.mqtt_port, rate=12.0)
        feeder = threading.Thread(target=feed.run, daemon=True)
        feeder.start()
        run = Run(st, consumer, feed, feeder)
        try:
            yield run
        finally:
            run.finish()
            consumer.close()


def test_versions_move_on_a_running_station_without_losing_a_frame(run: Run, candidates) -> None:
    time.sleep(3.0)
    listed = run.models("list")["result"]["versions"]
    assert [v["role"] for v in listed] == ["live"] and len(listed[0]["models"]["anomaly"]["digest"]) == 64
    live = listed[0]["version"]

    deployed = run.models("deploy", str(candidates["trained"]))
    assert deployed["status"] == "done", deployed
    second = deployed["result"]["version"]
    assert second != live and deployed["result"]["check"]["frames"] > 0

    # shadow: the second version scores a copy of every frame, the tools keep getting the live version's verdicts
    shadow_from = time.time()
    assert run.models("shadow", second)["status"] == "done"
    time.sleep(8.0)
    report = run.models("shadow-report")["result"]
    tallies = report["versions"][second]["by_recipe_tool"]
    assert sum(t["frames"] for t in tallies) >= 40 and {t["tool_id"] for t in tallies} == set(TOOLS)
    assert all(t["decision_agreement"] is not None and t["score_rank_correlation"] is not None for t in tallies)
    assert report["versions"][second]["latency_ms"]["p99"] > 0
    assert {e["models"]["classifier"] for e in run.events(shadow_from + 0.5)} == {live}
    assert run.models("shadow", second, "--stop")["status"] == "done"

    # canary on one tool: its events carry the second version, the other tool's the live one
    assert run.models("canary", second, "--tools", CANARY_TOOL)["status"] == "done"
    canary_from = time.time() + 0.5
    run.wait_events(canary_from, set(TOOLS))
    time.sleep(1.0)
    assert run.models("canary", second, "--stop")["status"] == "done"
    canary_events = run.events(canary_from, time.time() - 1.0)
    by_tool = {tool: {e["models"]["classifier"] for e in canary_events if e["tool_id"] == tool} for tool in TOOLS}
    assert by_tool == {CANARY_TOOL: {second}, OTHER_TOOL: {live}}, by_tool
    digests = {e["model_digests"]["classifier"] for e in canary_events if e["tool_id"] == CANARY_TOOL}
    assert digests == {deployed["result"]["models"]["classifier"]["digest"]}

    # a bad version as a canary: the live version disagrees on its defects, the guardrail rolls it back
    bad = run.models("deploy", str(candidates["bad"]))["result"]["version"]
    assert run.models("canary", bad, "--tools", CANARY_TOOL)["status"] == "done"
    assert run.consumer.wait_for(
        lambda msgs: any(json.loads(p).get("action") == "guardrail_rollback" for t, p in msgs
                         if t == "fab/edge/ST-01/models"), 90,
    ), "the guardrail did not roll the bad canary back"  # fmt: skip
    [rolled] = [e for e in run.consumer.json_messages("fab/edge/ST-01/models") if e["action"] == "guardrail_rollback"]
    assert rolled["version"] == bad and rolled["detail"]["breach"]["rule"] == "disagreement"
    assert rolled["route"]["canary"] is None and rolled["by"] == "guardrail"

    # promote, then roll back: every event names the version live when its frame was decided
    promoted = run.models("promote", second)
    assert promoted["status"] == "done" and promoted["result"]["calibration"] == "transferred", promoted
    after_promote = time.time() + 0.5
    run.wait_events(after_promote, set(TOOLS))
    assert {e["models"]["classifier"] for e in run.events(after_promote)} == {second}
    rolled_back = run.models("rollback")
    assert rolled_back["status"] == "done" and rolled_back["result"]["version"] == live
    assert rolled_back["result"]["calibration"] == "restored"
    after_rollback = time.time() + 0.5
    run.wait_events(after_rollback, set(TOOLS))
    assert {e["models"]["classifier"] for e in run.events(after_rollback)} == {live}

    status = run.models("status")["result"]
    assert status["route"]["live"] == live and status["route"]["canary"] is None and status["previous"] == second
    actions = [row["action"] for row in reversed(status["audit"])]  # the newest ten, oldest first
    assert actions == ["deploy", "shadow", "shadow", "canary", "canary", "deploy", "canary", "guardrail_rollback",
                       "promote", "rollback"]  # fmt: skip
    assert {row["by"] for row in status["audit"] if row["action"] != "guardrail_rollback"} == {"e2e"}
    results = run.consumer.json_messages("fab/edge/ST-01/models/results")
    assert {a["command_id"] for a in run.answers} <= {r["command_id"] for r in results}

    # the stream: every frame answered once, none without a verdict, and Triton holds the live version only
    run.finish()
    assert run.feed.unanswered == 0 and run.feed.duplicates == 0 and set(run.feed.replies) == {"ok"}, run.feed.replies
    frame_ids = [o["frame_id"] for o in run.feed.outcomes]
    assert len(frame_ids) == len(set(frame_ids)) == run.feed.frames > 300
    readyz = run.st.readyz()
    assert readyz["models"] == {"anomaly": live, "classifier": live}
    assert list(readyz["serving"]["versions"]) == [live]
