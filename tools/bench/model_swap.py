"""Model changes on a running station, measured: the whole station (Triton on the CPU in explicit model control,
Mosquitto, the daemon as a process) under a steady frame stream while a second version goes through shadow, promote
and rollback, then through ``--cycles`` promote / rollback cycles.

It prints, from one run: the live p99 without and with a shadow scoring every frame (the shadow's overhead), each
command's time (from the command sent to its answer), for switches to a version not loaded yet (its load and check
included) and to one deployed first (``--staged-cycles``: the usual path, the version loaded and checked before),
the latency of the frames sent while a switch was under way against the p99 before any change, every frame's
reply (none lost, none ``not_inspected``), and Triton's resident memory (server and Python-backend stubs) after
each loading cycle. A benchmark tool, not a test.

    python -m tools.bench.model_swap --repository build/model_repository --rate 20 --cycles 20

The candidate is ``--candidate`` (a model repository; its newest version), or, by default, the served repository's
newest version rebuilt beside it (the same weights, another digest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import load_config
from edge.models import commands
from edge.models.repository import CONFIG, pairs
from edge.publish.mqtt import request
from tools.bench.soak import Feed, group_rss_mb
from tools.build_repository import MODELS
from tools.sim.stream import Pool
from tools.station.station import RECIPE, TOOLS, Station


def rebuilt(served: Path, out: Path) -> Path:
    """A repository holding the served repository's newest version with another digest (a rebuild)."""
    newest = pairs(served, list(MODELS))[-1]
    for name in MODELS:
        target = out / name / "1"
        shutil.copytree(served / name / str(newest), target)
        if not (target / CONFIG).is_file():
            shutil.copyfile(served / name / CONFIG, target / CONFIG)
        with (target / "model.py").open("a") as f:
            f.write(f"\n# rebuilt {uuid.uuid4().hex}\n")
    return out


PHASES = ("check", "load_s", "switch_s", "release_s")  # what a switch's answer says of its steps


class Commander:
    """Model commands over the station's broker, each timed from sending to its answer."""

    def __init__(self, config: Path) -> None:
        self.cfg = load_config(config)
        self.log: list[dict[str, Any]] = []
        self.phase = "loading"  # switches to a version not loaded yet

    def __call__(self, action: str, **fields: Any) -> dict[str, Any]:
        cfg = self.cfg
        command_id = uuid.uuid4().hex
        body = {"schema": commands.SCHEMA, "command_id": command_id, "action": action, "by": "bench",
                "reason": "model_swap benchmark", **fields}  # fmt: skip
        own = f"{cfg.mqtt.prefix}/{cfg.station}"
        started = time.monotonic()
        reply = request(cfg.mqtt, f"bench-{command_id[:8]}", f"{own}/{cfg.models.commands_topic}", json.dumps(body),
                        f"{own}/{cfg.models.results_topic}", lambda p: json.loads(p).get("command_id") == command_id,
                        600)  # fmt: skip
        answer: dict[str, Any] = json.loads(reply)
        entry = {"action": action, "phase": self.phase, "version": fields.get("version"), "status": answer["status"],
                 "detail": answer["detail"], "started": started, "ended": time.monotonic(),
                 "result": {k: v for k, v in answer["result"].items() if k in PHASES}}  # fmt: skip
        entry["seconds"] = round(entry["ended"] - started, 3)
        self.log.append(entry)
        if answer["status"] != commands.DONE:
            raise RuntimeError(f"{action} {fields}: {answer['status']}: {answer['detail']}")
        return answer


def sent_at(outcome: dict[str, Any]) -> float:
    return float(outcome["replied_at"]) - float(outcome["latency_ms"]) / 1000


def window(outcomes: list[dict[str, Any]], start: float, end: float) -> list[float]:
    return [o["latency_ms"] for o in outcomes if o["status"] == "ok" and start <= sent_at(o) <= end]


def p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 1) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.model_swap", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--candidate", type=Path, help="a model repository holding the version to change to")
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second, both tools together")
    parser.add_argument("--phase-s", type=float, default=20.0, help="length of the baseline and shadow phases")
    parser.add_argument("--cycles", type=int, default=20, help="promote / rollback cycles for the memory figure")
    parser.add_argument(
        "--staged-cycles", type=int, default=5,
        help="cycles where each version is deployed (loaded, checked) before it is switched to",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary directory")
    parser.add_argument("--report", type=Path, help="write the summary as JSON here")
    parser.add_argument("--trace", type=Path, help="write every frame's send time and latency, and every command")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edge-model-swap-"))
    served = workdir / "repository"
    shutil.copytree(args.repository.resolve(), served, ignore=shutil.ignore_patterns("__pycache__", ".built"))
    candidate = args.candidate.resolve() if args.candidate else rebuilt(served, workdir / "candidate")
    pool = Pool(5, TOOLS, lots=2, wafers_per_lot=2, dies_per_wafer=30, defect_rate=0.3, recipe=RECIPE, encoding="png")
    rss: list[dict[str, Any]] = []
    marks: dict[str, float] = {}
    with Station(workdir / "station", served, with_broker=True, model_lifecycle=True) as st:
        assert st.triton is not None and st.triton.pid is not None and st.mqtt_port is not None
        run = Commander(st.config_path)
        live = str(pairs(served, list(MODELS))[-1])
        feed = Feed(pool, st.daemon_frames, st.mqtt_port, args.rate)
        feeder = threading.Thread(target=feed.run, daemon=True)
        feeder.start()
        time.sleep(5.0)  # warm-up, left out
        marks["baseline"] = time.monotonic()
        time.sleep(args.phase_s)
        marks["deploy"] = time.monotonic()
        version = run("deploy", source=str(candidate))["result"]["version"]
        run("shadow", version=version, fraction=1.0)
        marks["shadow"] = time.monotonic()
        time.sleep(args.phase_s)
        marks["shadow_end"] = time.monotonic()
        report = run("shadow-report")["result"]
        run("shadow", version=version, stop=True)
        rss.append({"cycle": 0, "triton_rss_mb": round(group_rss_mb(st.triton.pid), 1)})
        for cycle in range(1, args.cycles + 1):
            run("promote", version=version)
            time.sleep(2.0)
            run("rollback", version=live)
            time.sleep(2.0)
            rss.append({"cycle": cycle, "triton_rss_mb": round(group_rss_mb(st.triton.pid), 1)})
            print(json.dumps(rss[-1]), flush=True)
        run.phase = "staged"  # the usual path: a version deployed (or on trial) first, then switched to
        for _ in range(args.staged_cycles):
            for action, target in (("promote", version), ("rollback", live)):
                run("deploy", source=str(served), version=target)
                time.sleep(2.0)
                run(action, version=target)
                time.sleep(2.0)
        time.sleep(3.0)
        feed.stop.set()
        feeder.join()

    outcomes = feed.outcomes
    base = window(outcomes, marks["baseline"], marks["deploy"])
    shadowed = window(outcomes, marks["shadow"], marks["shadow_end"])
    base_p99 = p(base, 99) or 0.0

    def switching(phase: str) -> dict[str, Any]:
        """Command times and the latency of the frames sent while a switch of this phase was under way."""
        switches = [c for c in run.log if c["action"] in ("promote", "rollback") and c["phase"] == phase]
        during = [x for c in switches for x in window(outcomes, c["started"], c["ended"] + 0.5)]
        times = {
            action: [c["seconds"] for c in switches if c["action"] == action] for action in ("promote", "rollback")
        }
        return {
            "command_s": {a: {"median": p(t, 50), "max": p(t, 100), "n": len(t)} for a, t in times.items() if t},
            "latency_ms": {"p99": p(during, 99), "max": p(during, 100), "frames": len(during),
                           "over_2x_baseline_p99": sum(x > 2 * base_p99 for x in during),
                           "p99_ratio": round((p(during, 99) or 0) / base_p99, 2) if base_p99 else None},
        }  # fmt: skip

    by_action = {action: [c["seconds"] for c in run.log if c["action"] == action] for action in ("deploy", "shadow")}
    summary = {
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "rate": args.rate, "frames": feed.frames, "replies": dict(feed.replies), "unanswered": feed.unanswered,
        "duplicates": feed.duplicates,
        "not_inspected": feed.replies.get("not_inspected", 0),
        "baseline_ms": {"p50": p(base, 50), "p99": base_p99, "frames": len(base)},
        "shadow_ms": {"p50": p(shadowed, 50), "p99": p(shadowed, 99), "frames": len(shadowed),
                      "p99_ratio": round((p(shadowed, 99) or 0) / base_p99, 2) if base_p99 else None},
        "switch_with_load": switching("loading"), "switch_of_staged": switching("staged"),
        "command_s": {action: {"median": p(found, 50), "max": p(found, 100), "n": len(found)}
                      for action, found in by_action.items() if found},
        "triton_rss_mb": {"before_cycles": rss[0]["triton_rss_mb"], "after": rss[-1]["triton_rss_mb"],
                          "growth_per_cycle": round((rss[-1]["triton_rss_mb"] - rss[0]["triton_rss_mb"]) /
                                                    max(1, len(rss) - 1), 2), "cycles": rss},
        "shadow_agreement": {v: [{k: row[k] for k in ("tool_id", "frames", "decision_agreement",
                                                        "top_class_agreement", "score_rank_correlation")}
                                 for row in entry["by_recipe_tool"]] for v, entry in report["versions"].items()},
    }  # fmt: skip
    if args.trace:
        frames = [{"sent": round(sent_at(o), 4), "ms": round(o["latency_ms"], 2), "status": o["status"]}
                  for o in outcomes]  # fmt: skip
        args.trace.write_text(json.dumps({"frames": frames, "commands": run.log, "marks": marks}))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
