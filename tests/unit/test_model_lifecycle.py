"""The model lifecycle against a stand-in Triton that loads what the repository's configs pin, as explicit model
control does: deploy, shadow, canary under guardrails, promote, rollback, idempotent commands with an audit trail, and
the version pointer (a batch in flight finishes on its version; a version leaves only once no batch uses it)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge.config import parse_config
from edge.flow import EventRow, Frame, FrameHeader, Tensors
from edge.inference.inspector import Inspector
from edge.inference.model_watch import ModelWatch
from edge.inference.triton_client import AnomalyOut, ClassifierOut
from edge.models.cli import prepare
from edge.models.ledger import Ledger
from edge.models.lifecycle import Lifecycle
from edge.models.pbtxt import config_parameters
from edge.models.repository import served, sync_view
from edge.ops.async_db import AsyncDb
from edge.ops.http import Health
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics
from edge.publish.events import EventIds
from edge.shared import Shared
from edge.taxonomy import DEFAULT_CLASSES
from tools.build_repository import DEFAULT_PRECISION, MODELS, SOURCE, build

DEFECT = 5  # the class the stand-in models call a defect


class StandInTriton:
    """Serves the versions the view links (as loaded on ``load``), each with its own behaviour: ``agree`` (even
    frames GOOD, odd ones a defect), ``all_good`` (every frame GOOD)."""

    anomaly_model, classifier_model = "anomaly", "classifier"

    def __init__(self, view: Path, behaviour: dict[str, str]) -> None:
        self.view = view
        self.behaviour = behaviour
        self.loaded = {name: self._linked(name) for name in MODELS}
        self.loads = 0
        self.calls: list[str] = []  # the version of every anomaly request
        self.gate: asyncio.Event | None = None  # when set, requests to version 1 wait for it

    def _linked(self, name: str) -> list[str]:
        return [str(v) for v in served(self.view, name)]

    async def ready(self) -> bool:
        return True

    async def model_versions(self) -> dict[str, list[str]]:
        return {name: list(found) for name, found in self.loaded.items()}

    async def config_parameters(self, model: str) -> dict[str, str]:
        return config_parameters((self.view / model / "config.pbtxt").read_text())

    async def load(self, model: str, timeout_s: float) -> None:
        self.loads += 1
        self.loaded[model] = self._linked(model)

    async def anomaly(self, grey: npt.NDArray[np.uint8], version: str = "") -> AnomalyOut:
        assert version in self.loaded["anomaly"], f"version {version} is not loaded"
        self.calls.append(version)
        if self.gate is not None and version == "1":
            await self.gate.wait()
        n = len(grey)
        return AnomalyOut(np.full(n, 0.001, np.float32), np.zeros((n, 32, 32), np.float32))

    async def classify(self, rgb: Any, process: Any, present: Any, notes: Any, version: str = "") -> ClassifierOut:
        assert version in self.loaded["classifier"], f"version {version} is not loaded"
        n = len(rgb)
        probs = np.zeros((n, len(DEFAULT_CLASSES)), np.float32)
        probs[:, 0] = 1.0
        if self.behaviour[version] == "agree":
            odd = np.asarray([int(value) % 2 == 1 for value in rgb.stacked()[:, 0, 0, 0]])
            probs[odd, 0], probs[odd, DEFECT] = 0.0, 1.0
        return ClassifierOut(probs, np.zeros((n, 64), np.float32))


def repository(tmp_path: Path) -> Path:
    """Versions 1, 2 and 3 of stand-in models (each its own bytes); made once per test."""
    repo = tmp_path / "repository"
    if repo.is_dir():
        return repo
    for n in (1, 2, 3):
        models = tmp_path / f"models-{n}"
        models.mkdir()
        for name in MODELS:
            (models / f"{name}.onnx").write_bytes(f"{name} {n}".encode())
        (models / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.01, "reject_band": 0.02}))
        assert build(SOURCE, models, repo, DEFAULT_PRECISION)[:2] == (n, True)
    return repo


def frames(count: int, tool: str = "T1") -> list[Frame]:
    """Frames whose first pixel says odd (a defect to the ``agree`` models) or even."""
    now = time.monotonic()
    out = []
    for i in range(count):
        rgb = np.full((3, 8, 8), i % 2, np.uint8)
        header = FrameHeader(f"{tool}-{uuid.uuid4().hex[:8]}", tool, "R", "L1", "W1", (i, 0), time.time(), "png",
                             None, None, None)  # fmt: skip
        out.append(Frame(b"id", header, Tensors(rgb, np.zeros((1, 8, 8), np.uint8)), now, now + 30, time.time()))
    return out


class Rig:
    def __init__(self, tmp_path: Path, behaviour: dict[str, str], guardrails: dict[str, Any] | None = None) -> None:
        self.repo = repository(tmp_path)
        self.cfg = parse_config({
            "tools": [{"id": "T1"}, {"id": "T2"}], "recipes": {"R": {}}, "triton": {"retries": 0},
            "decision": {"audit_fraction": 0.0},
            "models": {"repository": str(self.repo), "ledger": str(tmp_path / "models.sqlite"), "held_frames": 8,
                       "guardrails": {"min_frames": 10, "window_frames": 40, **(guardrails or {})}},
        })  # fmt: skip
        assert self.cfg.models.view is not None
        if self.cfg.models.ledger.exists():
            prepare(self.cfg)  # before Triton starts: the ledger's route
        else:  # a station that served version 1 before it steered its versions
            sync_view(self.repo, self.cfg.models.view, MODELS, [1])
        self.triton = StandInTriton(self.cfg.models.view, behaviour)
        self.metrics, self.health, self.db = Metrics(), Health(broker_required=False), AsyncDb()
        self.tasks: list[asyncio.Task[None]] = []
        self.rows: list[EventRow] = []
        shared = Shared(self.cfg, self.metrics, self.health, self.db, RateLimited(10.0), None, self._spawn)  # type: ignore[arg-type]
        self.inspector = Inspector(self.cfg, self.triton, lambda *_: 0.6, self.metrics, RateLimited(10.0))
        self.watch = ModelWatch(shared, self.triton, self.inspector)
        self.ledger = Ledger(self.cfg.models.ledger)
        self.lifecycle = Lifecycle(shared, self.triton, self.inspector, self.watch, self.ledger, EventIds(),
                                   self._record)  # fmt: skip

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    async def _record(self, rows: list[EventRow]) -> None:
        self.rows += rows

    async def start(self) -> None:
        assert await self.watch.wait_ready(asyncio.Event())
        await self.lifecycle.start()
        self._spawn(self.lifecycle.comparisons.run())

    async def command(self, action: str, **fields: Any) -> dict[str, Any]:
        body = {"command_id": fields.pop("command_id", uuid.uuid4().hex), "action": action, "by": "j.doe",
                "reason": "test", **fields}  # fmt: skip
        return await self.lifecycle.handle(json.dumps(body).encode())

    async def stream(self, batches: int, tool: str = "T1", size: int = 4) -> list[Any]:
        outcomes = []
        for _ in range(batches):
            outcomes += await self.inspector.inspect(frames(size, tool))
            await asyncio.sleep(0.005)  # the comparison worker's turn
        return outcomes

    def events(self, topic_leaf: str) -> list[dict[str, Any]]:
        return [json.loads(r.payload) for r in self.rows if r.topic.endswith("/" + topic_leaf)]

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.ledger.close()
        self.db.close()


def run(tmp_path: Path, behaviour: dict[str, str], scenario: Any, **kwargs: Any) -> None:
    async def main() -> None:
        rig = Rig(tmp_path, behaviour, **kwargs)
        try:
            await rig.start()
            await scenario(rig)
        finally:
            rig.close()

    asyncio.run(main())


AGREE = {"1": "agree", "2": "agree", "3": "all_good"}


def test_deploy_shadow_promote_rollback_each_answered_audited_and_announced(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        assert rig.lifecycle.route.live == "1" and rig.triton.loaded["anomaly"] == ["1"]
        await rig.stream(3)
        deployed = await rig.command("deploy", source=str(rig.repo), version="2")
        assert deployed["status"] == "done" and deployed["result"]["check"]["decision_agreement"] == 1.0
        assert rig.lifecycle.route.staged == "2" and rig.triton.loaded["anomaly"] == ["1", "2"]

        shadow = await rig.command("shadow", version="2")
        assert shadow["status"] == "done" and rig.lifecycle.route.shadow == "2"
        outcomes = await rig.stream(5)
        assert {o.models["classifier"] for o in outcomes} == {"1"}  # the shadow never decides
        await asyncio.sleep(0.05)
        report = (await rig.command("shadow-report"))["result"]["versions"]["2"]
        [tally] = report["by_recipe_tool"]
        assert tally["frames"] >= 16 and tally["decision_agreement"] == 1.0 and tally["top_class_agreement"] == 1.0

        view_config = (rig.cfg.models.view / "anomaly" / "config.pbtxt").read_text()
        promoted = await rig.command("promote", version="2")
        assert promoted["status"] == "done" and rig.lifecycle.route.live == "2" and rig.lifecycle.previous == "1"
        assert rig.triton.loaded["anomaly"] == ["2"]  # the old live version left Triton ...
        assert (rig.cfg.models.view / "anomaly" / "config.pbtxt").read_text() == view_config  # ... no reload
        assert {o.models["anomaly"] for o in await rig.stream(2)} == {"2"}

        rolled = await rig.command("rollback")
        assert rolled["status"] == "done" and rig.lifecycle.route.live == "1"
        assert rig.triton.loaded["anomaly"] == ["1"] and served(rig.cfg.models.view, "classifier") == [1]
        actions = [e["action"] for e in rig.events("models")]
        assert actions == ["deploy", "shadow", "promote", "rollback"]
        audit = [row.action for row in reversed(rig.ledger.audit())]
        assert audit == ["adopt", "deploy", "shadow", "promote", "rollback"]
        assert all(row.who == "j.doe" for row in rig.ledger.audit()[:4])
        rollback_row, promote_row = rig.ledger.audit()[:2]
        assert (promote_row.version, promote_row.previous) == ("2", "1")  # the version live before each change
        assert (rollback_row.version, rollback_row.previous) == ("1", "2")

    run(tmp_path, AGREE, scenario)


def test_a_repeated_command_id_is_answered_again_and_never_applied_twice(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        first = await rig.command("promote", version="2", command_id="c-1")
        again = await rig.command("promote", version="2", command_id="c-1")
        assert first["status"] == "done" and again["status"] == "repeated" and again["first_status"] == "done"
        assert again["result"] == first["result"] and rig.lifecycle.previous == "1"
        assert [row.action for row in rig.ledger.audit()].count("promote") == 1
        assert len(rig.events("models")) == 1 and len(rig.events("results")) == 2

    run(tmp_path, AGREE, scenario)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "bad_json"),
        (json.dumps({"command_id": "x", "action": "explode", "by": "me"}).encode(), "bad_value"),
        (json.dumps({"command_id": "x", "action": "promote", "by": "me"}).encode(), "missing_key"),
        (json.dumps({"command_id": "x", "action": "canary", "version": "2", "by": "me"}).encode(), "missing_key"),
        (
            json.dumps({"command_id": "x", "action": "canary", "version": "2", "tools": ["T9"], "by": "me"}).encode(),
            "unknown_tool",
        ),
        (
            json.dumps({"command_id": "x", "action": "shadow", "version": "2", "fraction": 2, "by": "me"}).encode(),
            "bad_value",
        ),
        (json.dumps({"command_id": "x", "action": "promote", "version": "../1", "by": "me"}).encode(), "bad_value"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(tmp_path: Path, body: bytes, reason: str) -> None:
    async def scenario(rig: Rig) -> None:
        answer = await rig.lifecycle.handle(body)
        assert answer["status"] == "refused" and answer["detail"].startswith(reason)
        assert (
            rig.lifecycle.route.live == "1"
            and rig.metrics.registry.get_sample_value(
                "edge_model_commands_total", {"action": "unknown", "status": reason}
            )
            == 1
        )

    run(tmp_path, AGREE, scenario)


def test_what_the_station_cannot_do_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        assert (await rig.command("promote", version="1"))["detail"] == "version 1 is live already"
        assert "not in" in (await rig.command("promote", version="9"))["detail"]
        assert "no version to roll back to" in (await rig.command("rollback"))["detail"]
        missing = await rig.command("deploy", source=str(rig.repo.parent / "nowhere"))
        assert missing["status"] == "refused" and "not a folder" in missing["detail"]
        assert rig.lifecycle.route.live == "1" and rig.triton.loaded["anomaly"] == ["1"]
        assert [row.action for row in rig.ledger.audit()] == ["deploy", "rollback", "promote", "promote", "adopt"]

    run(tmp_path, AGREE, scenario)


def test_a_canary_decides_its_tools_frames_and_a_bad_one_is_rolled_back_by_disagreement(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.stream(3)
        canary = await rig.command("canary", version="3", tools=["T2"])
        assert canary["status"] == "done" and rig.lifecycle.route.canary == "3"
        t1 = await rig.stream(2, tool="T1")
        t2 = await rig.stream(2, tool="T2")
        assert {o.models["classifier"] for o in t1} == {"1"} and {o.models["classifier"] for o in t2} == {"3"}
        for _ in range(20):  # the live version scores copies of the canary's frames: half of them disagree
            await rig.stream(1, tool="T2")
            if rig.lifecycle.route.canary is None:
                break
        await asyncio.sleep(0.05)
        assert rig.lifecycle.route.canary is None and rig.lifecycle.route.live == "1"
        assert rig.triton.loaded["anomaly"] == ["1"]  # the bad version left Triton
        [event] = [e for e in rig.events("models") if e["action"] == "guardrail_rollback"]
        assert event["version"] == "3" and event["detail"]["breach"]["rule"] == "disagreement"
        assert rig.ledger.audit()[0].who == "guardrail"
        assert {o.models["classifier"] for o in await rig.stream(2, tool="T2")} == {"1"}

    run(tmp_path, AGREE, scenario)


def test_a_batch_in_flight_finishes_on_its_version_and_the_old_one_leaves_after_it(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.stream(2)
        await rig.command("deploy", source=str(rig.repo), version="2")
        rig.triton.gate = asyncio.Event()
        in_flight = asyncio.create_task(rig.inspector.inspect(frames(4)))
        await asyncio.sleep(0.02)
        assert rig.triton.calls[-1] == "1"
        promote = asyncio.create_task(rig.command("promote", version="2"))
        await asyncio.sleep(0.05)
        assert rig.inspector.serving is not None and rig.inspector.serving.route.live == "2"  # switched ...
        assert rig.triton.loaded["anomaly"] == ["1", "2"] and not promote.done()  # ... version 1 still in use
        rig.triton.gate.set()
        assert {o.models["anomaly"] for o in await in_flight} == {"1"}
        assert (await promote)["status"] == "done" and rig.triton.loaded["anomaly"] == ["2"]

    run(tmp_path, AGREE, scenario)


def test_a_restart_comes_back_on_the_route_the_ledger_holds(tmp_path: Path) -> None:
    async def first(rig: Rig) -> None:
        await rig.command("promote", version="2")
        await rig.command("shadow", version="3", fraction=0.5)

    async def second(rig: Rig) -> None:
        route = rig.lifecycle.route
        assert (route.live, route.shadow, route.shadow_fraction, rig.lifecycle.previous) == ("2", "3", 0.5, "1")
        assert rig.triton.loaded["anomaly"] == ["2", "3"]

    run(tmp_path, AGREE, first)
    run(tmp_path, AGREE, second)  # the same repository and ledger, a new daemon


def test_reviews_of_the_canarys_events_roll_it_back_on_more_false_positives(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        assert (await rig.command("canary", version="2", tools=["T2"]))["status"] == "done"
        for round_ in range(6):
            outcomes = await rig.stream(1, tool="T1") + await rig.stream(1, tool="T2")
            ids = [f"E{round_}-{i}" if o.event_decision else None for i, o in enumerate(outcomes)]
            rig.lifecycle.recorded(outcomes, ids)
            for outcome, event_id in zip(outcomes, ids, strict=True):
                if event_id is not None:  # reviewers: the canary's flags are false, the live version's real
                    real = outcome.models["classifier"] == "1"
                    body = {"event_id": event_id, "disposition": "real" if real else "false", "reviewer": "eng1"}
                    rig.lifecycle.on_review(json.dumps(body).encode())
                    rig.lifecycle.on_review(json.dumps(body).encode())  # a redelivery counts once
        await asyncio.sleep(0.05)
        [event] = [e for e in rig.events("models") if e["action"] == "guardrail_rollback"]
        breach = event["detail"]["breach"]
        assert breach["rule"] == "false_positives" and breach["value"] == 1.0 and rig.lifecycle.route.canary is None
        reviews = event["detail"]["guardrails"]["reviews"]
        assert breach["frames"] == 5 and breach["detail"] == "5/5 reviewed flags false, live 0/6"
        assert reviews["canary"]["flags"] == reviews["canary"]["false"] >= 5 and reviews["live"]["false"] == 0

    run(tmp_path, AGREE, scenario, guardrails={"max_disagreement": 1.0, "min_reviews": 5, "max_fpr_excess": 0.2})


def test_copies_that_do_not_fit_the_queue_are_dropped_and_counted(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        assert (await rig.command("shadow", version="2"))["status"] == "done"
        for task in rig.tasks:  # the comparison worker stops: nothing leaves the queue
            task.cancel()
        await asyncio.sleep(0)
        for _ in range(rig.cfg.models.compare_queue_batches + 3):
            await rig.inspector.inspect(frames(4))
        assert rig.lifecycle.comparisons.dropped == {"2": 12}
        dropped = rig.metrics.registry.get_sample_value(
            "edge_model_compared_total", {"version": "2", "role": "shadow", "result": "dropped"}
        )
        assert dropped == 12

    run(tmp_path, AGREE, scenario)


def test_a_version_deployed_before_any_frame_is_warmed_up_on_a_blank_die(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        deployed = await rig.command("deploy", source=str(rig.repo), version="2")
        assert deployed["status"] == "done" and deployed["result"]["check"]["frames"] == 0
        assert rig.triton.calls == ["2"]  # the blank die, before any live frame

    run(tmp_path, AGREE, scenario)


def test_a_staged_version_switches_in_on_its_deploy_check_and_a_reloaded_one_is_checked_again(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.stream(3)
        deployed = await rig.command("deploy", source=str(rig.repo), version="2")
        before = rig.triton.calls.count("2")
        promoted = await rig.command("promote", version="2")
        assert promoted["result"]["check"] == {**deployed["result"]["check"], "reused": True}
        assert rig.triton.calls.count("2") == before  # the switch sent the new version nothing
        await rig.command("rollback")  # version 2 leaves Triton ...
        again = await rig.command("promote", version="2")  # ... so it is loaded and checked afresh
        assert "reused" not in again["result"]["check"] and rig.triton.calls.count("2") > before

    run(tmp_path, AGREE, scenario)
