"""From a fab's folder to a served model, end to end: a labelled set from a generator that is not the reference
models' (``tools.dataset.second_fab``: other classes, 12 other process parameters, grey 240x320 dies) is trained
with ``edge-inspect train --budget quick`` into a copy of the reference repository, Triton serves the new version,
and the daemon, configured with the fragment the training wrote, inspects the set's test dies replayed through the
documented protocols; a daemon whose recipe lists other parameters refuses to start, naming them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edge.taxonomy import DEFAULT_CLASSES
from tests.triton_fixture import served_repository
from tools.dataset import second_fab
from tools.dataset.folder import load
from tools.sim.aoi_sim import AoiTools
from tools.sim.folder_replay import replay
from tools.sim.mqtt_peer import Peer
from tools.station.station import Station

pytestmark = pytest.mark.e2e

FAB_CLASSES = {"GOOD", "PARTICLE", "SCUFF", "HAZE", "BRIDGE", "OPEN"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 600-die set, trained quick (two seeds, the first served) into a copy of the reference repository (which
    holds version 1)."""
    root = tmp_path_factory.mktemp("own-data")
    data, repository = root / "fab", root / "repository"
    assert second_fab.main(["--out", str(data), "--dies", "600", "--seed", "11", "--no-split"]) == 0
    shutil.copytree(served_repository(), repository, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "train", "--data", str(data), "--out", str(repository),
         "--budget", "quick", "--spread", "2"],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {
        "data": data,
        "repository": repository,
        "work": root / "repository-training",
        "log": done.stdout + done.stderr,
    }


def test_training_writes_version_2_beside_version_1_with_its_card(trained):
    repo = trained["repository"]
    for name in ("anomaly", "classifier"):
        assert (repo / name / "1" / "model.onnx").is_file() and (repo / name / "2" / "model.onnx").is_file()
    report = repo / "classifier" / "2" / "report"
    assert {p.name for p in report.iterdir()} >= {"card.md", "metrics.json", "station.toml", "confusion.png",
                                                  "recall.png", "worst_errors.png"}  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["version"] == 2 and set(metrics["data"]["classes"]) == FAB_CLASSES
    assert len(metrics["data"]["parameters"]) == 12
    test = metrics["classifier"]["test"]
    assert set(test["per"]["tool"]) == {"OPT-A", "OPT-B"} and set(test["per"]["recipe"]) == {"M1-ROUTE", "M2-ROUTE"}
    assert "without_process_log" in test and metrics["anomaly"]["test"]["auroc_all_defects"] is not None
    assert "version 2 written" in trained["log"]
    spread = metrics["seed_spread"]  # --spread 2: seed 1 served, seed 2 trained and measured beside it
    assert spread["seeds"] == [1, 2] and (trained["work"] / "seed-2" / "models" / "classifier.onnx").is_file()
    macro_f1 = spread["models"]["classifier"]["fp32"]["figures"]["macro_f1"]
    assert macro_f1["values"][0] == test["macro_f1"] and macro_f1["min"] <= macro_f1["mean"] <= macro_f1["max"]
    assert set(spread["per_class_recall"]) <= FAB_CLASSES and "## Seed spread" in (report / "card.md").read_text()


@pytest.fixture(scope="module")
def station_run(trained, tmp_path_factory):
    """The new version served by Triton, the daemon configured by the training's fragment, the test split replayed."""
    fragment = (trained["repository"] / "classifier" / "2" / "report" / "station.toml").read_text()
    workdir = tmp_path_factory.mktemp("own-data-station")
    data, _ = load(trained["data"])
    tools = tuple(sorted({d.tool_id for d in data.dies}))
    # a REJECT band at ~0 makes every die not called a defect a REVIEW: events whatever a quick model's figures
    extra = fragment + "\n[[decision.bands]]\npass = 0.0\nreject = 1e-6\n"
    assert "#   resize = true" in fragment  # the dies are 240x320: the fragment says how the station takes them
    with Station(workdir, trained["repository"], with_broker=True, tools=tools, recipes=(),
                 config_extra=extra, ingest_extra="resize = true\n") as st:  # fmt: skip
        consumer = Peer("127.0.0.1", st.mqtt_port, "own-data-consumer", ("fab/edge/#",)).wait_connected()
        publisher = Peer("127.0.0.1", st.mqtt_port, "own-data-mes").wait_connected()
        aoi = AoiTools(st.daemon_frames, list(tools), window=16, reply_timeout_s=20, max_tries=3)
        try:
            summary = replay(data, "test", aoi, publisher.publish, rate=0)
        finally:
            aoi.close()
        event_ids = {o["event_id"] for o in summary["outcomes"] if o["event_id"]}
        consumer.wait_for(lambda msgs: event_ids <= {json.loads(p).get("event_id") for t, p in msgs
                                                     if "/events/" in t}, 30)  # fmt: skip
        readyz = st.readyz()
        consumer.close()
        publisher.close()
        st.stop_daemon()
        # the same station, Triton still serving version 2, with one parameter fewer on every recipe
        bad = workdir / "other-parameters.toml"
        bad.write_text(st.config_path.read_text().replace('"bake_temp_c", ', ""))
        refused = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(bad)], capture_output=True,
                                 text=True, timeout=120)  # fmt: skip
    events = [json.loads(p) for t, p in consumer.messages if "/events/" in t]
    return {"summary": summary, "events": events, "readyz": readyz, "n": len(data.split("test")),
            "refused": refused}  # fmt: skip


def test_the_daemon_serves_the_new_version_and_every_die_is_inspected(station_run):
    summary = station_run["summary"]
    assert summary["unanswered"] == [] and summary["replies"].get("ok") == station_run["n"]
    assert station_run["readyz"]["models"] == {"anomaly": "2", "classifier": "2"}


def test_events_name_the_new_classes_and_carry_the_new_version(station_run):
    events = station_run["events"]
    assert events, "no event from the test split"
    named = {top["class"] for e in events for top in e["top_k"]}
    assert named <= FAB_CLASSES and named - set(DEFAULT_CLASSES)  # HAZE, SCUFF or OPEN: only this model has them
    assert all(e["models"] == {"anomaly": "2", "classifier": "2"} for e in events)
    assert {e["defect_class"] for e in events} <= FAB_CLASSES | {"UNCLASSIFIED"}
    assert any(e["process"]["present"] for e in events)  # the replayed MES logs joined with the frames


def test_a_recipe_with_other_parameters_is_refused_naming_them(station_run):
    refused = station_run["refused"]
    assert refused.returncode != 0
    assert "recipes.M1-ROUTE.parameters lacks bake_temp_c" in refused.stdout + refused.stderr
