"""``edge-inspect``: run the daemon, validate a config, run a local Triton server, calibrate thresholds, look at
the dies kept for review, re-baseline a tool's drift after a service, make CURVE keys, check a fab's labelled
data."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import json
import re
import signal
import sys
import time
import uuid
from pathlib import Path

from calibration import cli as calib_cli
from edge import __version__
from edge.capture import cli as captures_cli
from edge.config import Config, load_config
from edge.errors import EdgeError
from edge.flow import Rejected
from edge.models import cli as models_cli
from edge.ops import event_loop
from edge.ops.logs import configure, get
from edge.review import audit_cli
from edge.review import service as review_service
from edge.serving import tritonserver
from edge.watch import rebaseline


def _run(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon  # the daemon's heavy imports only for `run`

    configure(args.log_level)
    log = get("edge.cli")
    try:
        cfg = load_config(args.config)
    except EdgeError as err:
        log.error("config_invalid", error=str(err))
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Daemon(cfg).run(stop)

    try:
        event_loop.run(main(), cfg.event_loop)
    except EdgeError as err:
        log.error("daemon_failed", error=str(err), kind=type(err).__name__)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from edge.daemon import preflight

    try:
        cfg = load_config(args.file)
        preflight(cfg)
    except EdgeError as err:
        if args.json:
            print(json.dumps({"ok": False, "file": args.file, "error": str(err)}))
        print(f"invalid: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "file": args.file,
                    "station": cfg.station,
                    "tools": sorted(cfg.tool_ids),
                    "recipes": sorted(cfg.recipes),
                }
            )
        )
        return 0
    print(f"ok: {args.file}: station {cfg.station}, {len(cfg.tools)} tools, {len(cfg.recipes)} recipes")
    return 0


def _curve_keygen(args: argparse.Namespace) -> int:
    from edge.ingest.zmq_sockets import write_key_pair  # zmq only for the commands that need it

    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", args.name):
        print(f"invalid name {args.name!r}: letters, digits, '_', '-', '.' (not first)", file=sys.stderr)
        return 2
    try:
        public, secret = write_key_pair(Path(args.directory), args.name)
    except FileExistsError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1
    print(f"public: {public}  (hand out: a tool's goes into curve_authorized_keys, the daemon's to every tool)")
    print(f"secret: {secret}  (mode 0600; stays on this host)")
    return 0


def login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry: --by is then required by the daemon
        return ""


def command_config(path: str, what: str | None = None) -> Config | None:
    """The station config a command reads, or None having said why on stderr: it does not load, or (``what``: the
    daemon hears these over MQTT) MQTT is off in it."""
    try:
        cfg = load_config(path)
    except EdgeError as err:
        print(f"invalid: {err}", file=sys.stderr)
        return None
    if what is not None and not cfg.mqtt.enabled:
        print(f"refused: mqtt is disabled in {path}: the daemon hears {what} over MQTT", file=sys.stderr)
        return None
    return cfg


def _rebaseline(args: argparse.Namespace) -> int:
    """Send ``edge.rebaseline/1`` to the station's daemon over its own broker, with its MQTT settings."""
    from edge.publish.mqtt import publish_once  # paho only for the commands that need it

    cfg = command_config(args.config, "re-baselines")
    if cfg is None:
        return 2
    by = args.by or login()
    body = rebaseline.message(args.tool, args.recipe, by, args.reason, time.time(), uuid.uuid4().hex)
    payload = json.dumps(body, separators=(",", ":"))
    checked = rebaseline.parse(payload.encode(), cfg.tool_ids, cfg.recipes)  # the daemon's own checks, here first
    if isinstance(checked, Rejected):
        print(f"refused: {checked.reason}: {checked.detail}", file=sys.stderr)
        return 2
    topic = f"{cfg.mqtt.prefix}/{cfg.station}/{cfg.drift.rebaseline_topic}"
    if cfg.mqtt.username and cfg.mqtt.password() is None:
        print(
            f"note: mqtt.username is set but no password was found: export ${cfg.mqtt.password_env or '...'} "
            f"(mqtt.password_env), or set CREDENTIALS_DIRECTORY to where the credential "
            f"{cfg.mqtt.password_credential or '...'} (mqtt.password_credential) lies",
            file=sys.stderr,
        )
    try:
        publish_once(cfg.mqtt, f"edge-rebaseline-{cfg.station}-{int(time.time() * 1000)}", topic, payload, args.timeout)
    except EdgeError as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1
    print(
        f"sent to {topic}: {args.tool} x {', '.join(checked.recipes)} re-baselined by {by}"
        f"{f' ({checked.reason})' if checked.reason else ''}; raised drift clears on {cfg.mqtt.prefix}/"
        f"{cfg.station}/drift/{args.tool}"
    )
    return 0


# Commands whose code ships in the project's `tools` package (training and data), imported by name when asked for:
# the daemon's own modules never import them, and a station installed for serving only says what is missing.
DATA_COMMANDS = {
    "check": "tools.dataset.check",
    "select": "tools.curation.select_cli",
    "audit": "tools.curation.audit_cli",
}
DELEGATED = (
    ("triton-server", tritonserver, "run the wheel's tritonserver on a model repository"),
    ("calib", calib_cli, "show and steer the per recipe x tool x class thresholds"),
    ("captures", captures_cli, "the dies the station kept for review: list, show, pictures"),
    ("review", review_service, "the review service: the captured dies and their decisions, over HTTP"),
    ("models", models_cli, "model versions: list, deploy, shadow, canary, promote, rollback, status"),
    ("audit", audit_cli, "what reviews found: escape and false-positive rates by subgroup"),
)
TRAIN_COMMAND = "tools.fab.train"


def _tool(module: str, name: str, argv: list[str]) -> int:
    try:
        command = importlib.import_module(module)
    except ImportError as err:
        print(f"edge-inspect {name} needs the project's tools ({module}): {err}", file=sys.stderr)
        return 2
    code: int = command.main(argv, prog=f"edge-inspect {name}")
    return code


def _data(args: argparse.Namespace) -> int:
    return _tool(DATA_COMMANDS[args.data_command], f"data {args.data_command}", args.rest)


def _passes_through(argv: list[str]) -> bool:
    """``edge-inspect train ...``: every argument, ``--help`` included, belongs to the training command."""
    return bool(argv) and argv[0] == "train"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="edge-inspect", description=__doc__)
    top.add_argument("--version", action="version", version=f"edge-inspect {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the inspection daemon")
    run.add_argument("--config", required=True, help="TOML config file")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate a config file without starting anything")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="the verdict as one JSON object on stdout")
    check.set_defaults(func=_check_config)
    for name, module, text in DELEGATED:  # commands whose module brings its own arguments and main
        command = sub.add_parser(name, help=text)
        module.add_arguments(command)
        command.set_defaults(func=module.main)
    base = sub.add_parser("rebaseline", help="after a tool service: drift and parameter statistics start again")
    base.add_argument("--config", required=True, help="the station's TOML config (broker, station, tools, recipes)")
    base.add_argument("--tool", required=True, help="tool id")
    base.add_argument("--recipe", help="one recipe (default: every configured recipe)")
    base.add_argument("--by", help="who asks, for the audit trail (default: the login name)")
    base.add_argument("--reason", default="", help="e.g. 'PM 2026-11-23, lamp replaced'")
    base.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker's PUBACK")
    base.set_defaults(func=_rebaseline)
    keygen = sub.add_parser("curve-keygen", help="write a ZeroMQ CURVE key pair: NAME.key and NAME.key_secret")
    keygen.add_argument("directory", help="where to write them (created owner-only if missing)")
    keygen.add_argument("name", help="file name stem, e.g. the station or tool id")
    keygen.set_defaults(func=_curve_keygen)
    data = sub.add_parser("data", help="a fab's labelled dies: check a folder, choose a training subset, audit labels")
    data.add_argument("data_command", choices=sorted(DATA_COMMANDS),
                      help="check: every problem, by file and line; select: a training subset by embeddings; "
                      "audit: suspect labels")  # fmt: skip
    data.add_argument("rest", nargs=argparse.REMAINDER, help="its options (edge-inspect data check --help)")
    data.set_defaults(func=_data)
    # listed for --help only: main() hands every argument after `train` to the training command
    sub.add_parser("train", help="train both models on a labelled folder into a new repository version",
                   add_help=False)  # fmt: skip
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _passes_through(argv):
        return _tool(TRAIN_COMMAND, "train", argv[1:])
    args = parser().parse_args(argv)
    code: int = args.func(args)  # one of the sub-commands' functions, each returns an exit status
    return code


if __name__ == "__main__":
    sys.exit(main())
