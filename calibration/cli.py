"""``edge-inspect calib``: the process engineers' view of the calibration store.

    edge-inspect calib --store var/calibration.sqlite show --recipe R --tool T
    ... set-bounds --recipe R --tool T --class PART-SM --lower 0.6 --upper 0.9 --reason "..."
    ... override --recipe R --tool T --class PART-SM --threshold 0.8 --lock-lots 5 --reason "..."
    ... unlock --recipe R --tool T --class PART-SM --reason "..."
    ... transfer --recipe R --from AOI-01 --to AOI-02 --reason "tool swap"
    ... history --recipe R --tool T [--class PART-SM]
    ... review EVENT_ID --real|--false|--relabel CLASS|--novel [--comment "..."]

Changes are audited under ``--who`` (default: the login name). Errors name the bad argument; exit code 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from calibration import views
from calibration.errors import CalibrationError, RequestRefused
from calibration.store import CalibrationStore

STORE_ENV = "EDGE_CALIBRATION_STORE"
SETTINGS = {"lower": "lower", "upper": "upper", "step_up": "step_up", "step_down": "step_down",
            "budget": "fpr_budget", "initial": "initial_threshold"}  # fmt: skip


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _show(store: CalibrationStore, a: argparse.Namespace) -> int:
    document = views.profile(store, a.recipe, a.tool)
    if getattr(a, "json", False):
        _print_json(document)
        return 0
    print(f"# {a.recipe} x {a.tool} profile version {document['version']} mode={document['mode']}")
    for name, state in store.states(a.recipe, a.tool).items():
        escape = store.escape_estimate(a.recipe, a.tool, name)
        print(state.line(name) + ("" if escape is None else f" escape_est={100 * escape:.2f}%"))
    return 0


def _set_bounds(store: CalibrationStore, a: argparse.Namespace) -> int:
    changes = {field: getattr(a, opt) for opt, field in SETTINGS.items() if getattr(a, opt) is not None}
    if not changes:
        raise RequestRefused(f"set-bounds: give at least one of {', '.join('--' + o for o in SETTINGS)}")
    store.set_settings(a.recipe, a.tool, a.defect_class, a.who, a.reason, **changes)
    return _show_class(store, a)


def _override(store: CalibrationStore, a: argparse.Namespace) -> int:
    store.override(a.recipe, a.tool, a.defect_class, a.threshold, a.lock_lots, a.who, a.reason)
    return _show_class(store, a)


def _unlock(store: CalibrationStore, a: argparse.Namespace) -> int:
    store.unlock(a.recipe, a.tool, a.defect_class, a.who, a.reason)
    return _show_class(store, a)


def _transfer(store: CalibrationStore, a: argparse.Namespace) -> int:
    store.transfer(a.recipe, a.source, a.target, a.who, a.reason)
    a.tool = a.target
    return _show(store, a)


def _history(store: CalibrationStore, a: argparse.Namespace) -> int:
    rows = store.history(a.recipe, a.tool, a.defect_class, a.limit)
    if a.json:
        _print_json([{**asdict(row), "time": _iso(row.ts)} for row in rows])
        return 0
    for row in rows:
        print(f"{_iso(row.ts)} {row.defect_class} {row.field}: {row.old} -> {row.new} by {row.who} ({row.reason})")
    return 0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _review(store: CalibrationStore, a: argparse.Namespace) -> int:
    disposition = "relabel" if a.relabel else a.disposition
    store.review(a.event_id, disposition, a.who, a.relabel, a.comment)
    shown = {"real": "real", "false": "false positive", "novel": "a novel defect"}.get(disposition, f"a {a.relabel}")
    print(f"{a.event_id}: {shown} by {a.who}")
    return 0


def _show_class(store: CalibrationStore, a: argparse.Namespace) -> int:
    print(store.states(a.recipe, a.tool)[a.defect_class].line(a.defect_class))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=os.environ.get(STORE_ENV),
                   help=f"calibration store (SQLite); default ${STORE_ENV}")  # fmt: skip
    p.add_argument("--who", default=_who(), help="name recorded in the audit trail (default: login name)")
    sub = p.add_subparsers(dest="calib_command", required=True)

    def command(name: str, func: Callable[[CalibrationStore, argparse.Namespace], int], helptext: str, *,
                tool: bool = True, cls: bool = False, reason: bool = False) -> argparse.ArgumentParser:  # fmt: skip
        c = sub.add_parser(name, help=helptext)
        if name != "review":
            c.add_argument("--recipe", required=True)
        if tool:
            c.add_argument("--tool", required=True)
        if cls:
            c.add_argument("--class", dest="defect_class", required=True)
        if reason:
            c.add_argument("--reason", required=True, help="why (kept in the audit trail)")
        c.set_defaults(calib_func=func)
        return c

    show = command("show", _show, "one line per class: threshold, fpr_3lot, status")
    show.add_argument("--json", action="store_true", help="the profile as one JSON document, settings included")
    bounds = command("set-bounds", _set_bounds, "bounds, steps, budget of one class", cls=True, reason=True)
    for opt in SETTINGS:
        bounds.add_argument(f"--{opt.replace('_', '-')}", dest=opt, type=float)
    over = command("override", _override, "set a threshold, optionally locked for N lots", cls=True, reason=True)
    over.add_argument("--threshold", type=float, required=True)
    over.add_argument("--lock-lots", type=int, default=0)
    command("unlock", _unlock, "release a lock now", cls=True, reason=True)
    move = command("transfer", _transfer, "copy a tool's profile to another (revalidating)", tool=False, reason=True)
    move.add_argument("--from", dest="source", required=True)
    move.add_argument("--to", dest="target", required=True)
    hist = command("history", _history, "audit trail, newest first")
    hist.add_argument("--class", dest="defect_class")
    hist.add_argument("--limit", type=int, default=50)
    hist.add_argument("--json", action="store_true", help="a JSON list of audit rows")
    review = command("review", _review, "record a disposition of an event", tool=False)
    review.add_argument("event_id")
    verdict = review.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--real", dest="disposition", action="store_const", const="real")
    verdict.add_argument("--false", dest="disposition", action="store_const", const="false")
    verdict.add_argument("--novel", dest="disposition", action="store_const", const="novel",
                         help="a defect none of the classes names")  # fmt: skip
    verdict.add_argument("--relabel", metavar="CLASS", help="the class the die shows instead")
    review.add_argument("--comment", default="", help="what the reviewer saw")


def main(args: argparse.Namespace) -> int:
    if args.store is None:
        print(f"calib: error: --store: give the calibration store (or set ${STORE_ENV})", file=sys.stderr)
        return 2
    if not Path(args.store).is_file():
        print(f"calib: error: --store: {args.store} does not exist", file=sys.stderr)
        return 2
    try:
        store = CalibrationStore(args.store)
    except CalibrationError as err:  # not a calibration store, or one SQLite cannot open
        print(f"calib: error: --store: {err}", file=sys.stderr)
        return 2
    try:
        code: int = args.calib_func(store, args)
        return code
    except CalibrationError as err:
        print(f"calib: error: {err}", file=sys.stderr)
        return 2
    finally:
        store.close()
