"""``edge-inspect models``: the station's model versions, from the command line, over the station's own broker.

    edge-inspect models list | status | shadow-report [--top N]       --config edge.toml
    edge-inspect models deploy SOURCE [--version N]                    (a model repository folder on the station)
    edge-inspect models shadow VERSION [--fraction F] [--stop]
    edge-inspect models canary VERSION [--tools T1,T2] [--fraction F] [--stop]
    edge-inspect models promote VERSION
    edge-inspect models rollback [VERSION]
    edge-inspect models prepare --config edge.toml                     (before Triton starts: the served view)

Each but ``prepare`` sends ``edge.model_command/1`` (``edge.models.commands``) with a fresh id and waits for its
``edge.model_result/1``; ``--by`` (default: the login name) and ``--reason`` go to the audit trail. Exit status: 0
done, 1 failed or no answer, 2 refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.errors import EdgeError
from edge.flow import Rejected
from edge.models import commands
from edge.models.ledger import read_route
from edge.models.repository import pairs, sync_view

WAIT_S = {"deploy": 300.0, "promote": 300.0, "rollback": 300.0, "shadow": 300.0, "canary": 300.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="the station's TOML config (broker, station, tools)")
        p.add_argument("--by", help="who asks, for the audit trail (default: the login name)")
        p.add_argument("--reason", default="", help="why, for the audit trail")
        p.add_argument("--timeout", type=float, help="seconds to wait for the daemon's answer")
        p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
        return p

    prepare = sub.add_parser("prepare", help="before Triton starts: link the versions the station serves (the view)")
    prepare.add_argument("--config", required=True, help="the station's TOML config ([models] repository)")
    command("list", "the versions in the served repository, with their digests and roles")
    command("status", "the route (live, shadow, canary), the guardrails, the recent audit trail")
    report = command("shadow-report", "agreement of the shadow or canary with the live version, worst frames")
    report.add_argument("--top", type=int, default=10, help="how many of the most disagreeing frames to print")
    deploy = command("deploy", "install a version, load it beside the live one, check it on recent frames")
    deploy.add_argument(
        "source", type=Path,
        help="a model repository (<model>/<N>/ for both models), one version folder of one (REPO/anomaly/N), or a "
        "folder holding <model>/ with its config and files",
    )  # fmt: skip
    deploy.add_argument("--version", type=int, help="N in that folder (default: its newest)")
    shadow = command("shadow", "score a copy of the live frames with VERSION, off the critical path")
    shadow.add_argument("version")
    shadow.add_argument("--fraction", type=float, help="share of the frames copied (default 1)")
    shadow.add_argument("--stop", action="store_true", help="end the shadow")
    canary = command("canary", "VERSION decides the frames of some tools (or a share of all) under guardrails")
    canary.add_argument("version")
    canary.add_argument("--tools", default="", help="comma-separated tool ids")
    canary.add_argument("--fraction", type=float, help="share of the other tools' frames too")
    canary.add_argument("--stop", action="store_true", help="end the canary")
    promote = command("promote", "make VERSION live (hot swap between two batches)")
    promote.add_argument("version")
    rollback = command("rollback", "make the version live before (or VERSION) live again")
    rollback.add_argument("version", nargs="?")


def body(args: argparse.Namespace, by: str) -> dict[str, Any]:
    """The command message for ``args``."""
    action = args.models_command
    message: dict[str, Any] = {"schema": commands.SCHEMA, "command_id": uuid.uuid4().hex, "action": action,
                               "by": by, "reason": args.reason, "ts": time.time()}  # fmt: skip
    if action == "deploy":
        message["source"] = str(args.source.resolve())
        if args.version is not None:
            message["version"] = str(args.version)
    elif getattr(args, "version", None) is not None:
        message["version"] = str(args.version)
    if getattr(args, "fraction", None) is not None:
        message["fraction"] = args.fraction
    if action == "canary" and args.tools:
        message["tools"] = [t.strip() for t in args.tools.split(",") if t.strip()]
    if getattr(args, "stop", False):
        message["stop"] = True
    return message


def prepare(cfg: Config) -> list[int]:
    """Link the versions the station is to serve in its view: the route its ledger holds, else the newest version
    (what Triton loads when it starts on the view); the versions linked."""
    store, view = cfg.models.repository, cfg.models.view
    if store is None or view is None:
        raise EdgeError("models.repository is not set: Triton serves its repository as it is")
    names = [cfg.triton.anomaly_model, cfg.triton.classifier_model]
    installed = pairs(store, names)
    if not installed:
        raise EdgeError(f"{store} holds no version of {' and '.join(names)}")
    route = read_route(cfg.models.ledger)
    wanted = [int(v) for v in route.serving] if route is not None else installed[-1:]
    if not set(wanted) <= set(installed):
        wanted = [int(route.live)] if route is not None and int(route.live) in installed else installed[-1:]
    sync_view(store, view, names, wanted)
    return wanted


def main(args: argparse.Namespace) -> int:
    from edge.cli import command_config, login
    from edge.publish.mqtt import request  # paho only for the commands that need it

    cfg = command_config(args.config, None if args.models_command == "prepare" else "model commands")
    if cfg is None:
        return 2
    if args.models_command == "prepare":
        try:
            linked = prepare(cfg)
        except (EdgeError, OSError) as err:
            print(f"failed: {err}", file=sys.stderr)
            return 1
        print(f"{cfg.models.view}: versions {', '.join(map(str, linked))} of {cfg.models.repository}")
        return 0
    message = body(args, args.by or login())
    payload = json.dumps(message, separators=(",", ":"))
    checked = commands.parse(payload.encode(), cfg.tool_ids)  # the daemon's own checks, here first
    if isinstance(checked, Rejected):
        print(f"refused: {checked.reason}: {checked.detail}", file=sys.stderr)
        return 2
    own = f"{cfg.mqtt.prefix}/{cfg.station}"
    timeout = args.timeout or WAIT_S.get(checked.action, 30.0)

    def ours(reply: bytes) -> bool:
        try:
            return bool(json.loads(reply).get("command_id") == checked.command_id)
        except (ValueError, AttributeError):
            return False

    try:
        reply = request(cfg.mqtt, f"edge-models-{cfg.station}-{checked.command_id[:8]}",
                        f"{own}/{cfg.models.commands_topic}", payload, f"{own}/{cfg.models.results_topic}", ours,
                        timeout)  # fmt: skip
    except EdgeError as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1
    answer = json.loads(reply)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(render(checked.action, answer, getattr(args, "top", 10)))
    status = answer.get("status")
    return 0 if status in (commands.DONE, commands.REPEATED) else 2 if status == commands.REFUSED else 1


def render(action: str, answer: dict[str, Any], top: int = 10) -> str:
    """The answer for a person to read."""
    status, detail, result = answer.get("status"), answer.get("detail") or "", answer.get("result") or {}
    head = f"{action}: {status}" + (f" ({detail})" if detail else "")
    if status not in (commands.DONE, commands.REPEATED):
        return head
    lines = [head]
    if action == "list":
        for v in result.get("versions", []):
            digests = ", ".join(f"{name} {m.get('digest', '?')[:12]}" for name, m in v["models"].items())
            role = v.get("role") or ("loaded" if v.get("loaded") else "")
            lines.append(f"  {v['version']:>4}  {role:<7} {digests}")
    elif action == "status":
        route = result.get("route", {})
        lines.append(f"  live {route.get('live')} (before: {result.get('previous') or 'none'})")
        if route.get("shadow"):
            lines.append(f"  shadow {route['shadow']} on {route.get('shadow_fraction', 1):.0%} of frames")
        if route.get("canary"):
            lines.append(f"  canary {route['canary']} for tools {', '.join(route.get('canary_tools', [])) or '-'}"
                         f" and {route.get('canary_fraction', 0):.0%} of the others")  # fmt: skip
        if route.get("staged"):
            lines.append(f"  staged {route['staged']}")
        if result.get("guardrails"):
            lines.append(f"  guardrails {json.dumps(result['guardrails'], sort_keys=True)}")
    elif action == "shadow-report":
        lines += _report(result, top)
    else:
        shown = {k: v for k, v in result.items() if k not in ("models", "route")}
        lines.append("  " + json.dumps(shown, sort_keys=True))
    return "\n".join(lines)


def _report(result: dict[str, Any], top: int) -> list[str]:
    lines = []
    for version, entry in sorted(result.get("versions", {}).items()):
        latency = entry.get("latency_ms") or {}
        lines.append(f"  version {version}: latency p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms; "
                     f"{entry.get('dropped', 0)} frames dropped (queue full)")  # fmt: skip
        for row in entry["by_recipe_tool"]:
            lines.append(
                f"    {row['recipe_id']} x {row['tool_id']}: {row['frames']} frames, decisions agree "
                f"{_pct(row['decision_agreement'])}, top class {_pct(row['top_class_agreement'])}, anomaly rank "
                f"correlation {row['score_rank_correlation']}, failed {row['failed']}"
            )
            for pair in row["disagreements"][:5]:
                lines.append(f"      {pair['decided']} -> {pair['candidate']}: {pair['frames']}")
    worst = result.get("most_disagreeing", [])[:top]
    if worst:
        lines.append("  most disagreeing frames (tool, frame: decided -> candidate):")
    for w in worst:
        a, b = w["decided"], w["compared"]
        sides = [f"{x['decision']} {x['class']} {x['confidence']} (v{x['version']})" for x in (a, b)]
        lines.append(f"    {w['tool_id']} {w['frame_id']}: {sides[0]} -> {sides[1]}")
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
