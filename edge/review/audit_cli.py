"""``edge-inspect audit``: audits of what reviewers found.

    edge-inspect audit subgroups --config FILE [--since 2026-03-01] [--until 2026-03-08T06:00] [--recipe R]
                                 [--alpha 0.05] [--min-n 20] [--correction holm|bh]
                                 [--shifts 06:00,14:00,22:00] [--timezone Europe/Berlin] [--json]

``subgroups``: the escape rate (reviewed AUDIT samples) and the false-positive rate (reviewed DEFECT and REVIEW
dies) per tool, chamber, shift, wafer zone, note present, process log present and model version, with Wilson 95%
intervals; slices that differ from the rest of their dimension (Fisher exact, corrected across every slice tested)
are flagged (``edge.review.subgroups``). Exit 0 done, 2 a bad argument or config, 1 a store that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from edge.review.subgroup_records import AuditRefused, AuditUnreadable, Sources, request_of, subgroup_audit
from edge.review.subgroups import DEFAULT_SHIFTS, RATES, Audit, Slice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True)
    groups = sub.add_parser("subgroups", help="escape and false-positive rates by slice, differing slices flagged")
    groups.add_argument("--config", required=True, help="the station's TOML config (calibration, capture, outbox)")
    groups.add_argument("--since", help="dies inspected at or after this date or time (ISO 8601; local if no offset)")
    groups.add_argument("--until", help="dies inspected before this date or time")
    groups.add_argument("--recipe", help="one recipe only")
    groups.add_argument("--alpha", default="0.05", help="corrected p under which a slice is flagged (default 0.05)")
    groups.add_argument("--min-n", default="20", help="reviews a slice and its rest need to be tested (default 20)")
    groups.add_argument("--correction", default="holm", help="holm (default) or bh (Benjamini-Hochberg)")
    groups.add_argument("--shifts", default=DEFAULT_SHIFTS, help=f"shift start times (default {DEFAULT_SHIFTS})")
    groups.add_argument("--timezone", help="IANA zone of the shifts and of dates without offset (default: local)")
    groups.add_argument("--json", action="store_true", help="the whole audit as one JSON object")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _row(s: Slice) -> str:
    interval = s.counts.interval
    shown = "—" if interval is None else f"{_percent(interval[0])}–{_percent(interval[1])}"
    p = f"untested: {s.untested}" if s.p is None else f"{s.p:.2g} (adj {s.p_adjusted:.2g})"
    mark = f"FLAGGED {s.direction}" if s.flagged else ""
    counts = f"{s.counts.n:>6} {s.counts.errors:>6} {_percent(s.counts.rate):>7}"
    return f"  {s.value[:28]:<28} {counts} {shown:>15}  {p:<20} {mark}".rstrip()


def table(result: Audit) -> str:
    """The audit as text: per rate, per dimension, a row per slice."""
    lines = [f"subgroup audit: alpha {result.alpha}, {result.correction} correction over {result.tests} tests, "
             f"slices tested at n >= {result.min_n} (and the rest as many)"]  # fmt: skip
    lines += [f"note: {key}: {text}" for key, text in result.notes.items()]
    for kind, meaning in RATES.items():
        total = result.overall[kind]
        interval = total.interval
        span = "" if interval is None else f" [{_percent(interval[0])}–{_percent(interval[1])}]"
        lines += ["", f"== {meaning}", f"   overall: {total.errors}/{total.n} = {_percent(total.rate)}{span}"]
        for dimension in result.dimensions:
            lines.append(f"-- {dimension}")
            lines.append(f"  {'slice':<28} {'n':>6} {'errors':>6} {'rate':>7} {'95% interval':>15}  {'p':<20} flagged")
            lines += [_row(s) for s in result.of(kind, dimension)] or ["  (no review)"]
    flagged = result.flagged
    lines += ["", f"flagged: {len(flagged)}" + "".join(
        f"\n  {s.kind} {s.dimension}={s.value}: {_percent(s.counts.rate)} vs {_percent(s.rest.rate)} in the rest, "
        f"adjusted p {s.p_adjusted:.2g}" for s in flagged)]  # fmt: skip
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from edge.cli import command_config  # the command line's own loader (edge.cli imports this module)

    cfg = command_config(args.config)
    if cfg is None:
        return 2
    try:
        request = request_of(args.since, args.until, args.recipe, args.alpha, args.min_n, args.correction,
                             args.shifts, args.timezone)  # fmt: skip
        result = subgroup_audit(Sources.of(cfg), request, cfg.recipes)
    except AuditRefused as err:
        print(f"edge-inspect audit subgroups: {err}", file=sys.stderr)
        return 2
    except AuditUnreadable as err:
        print(f"edge-inspect audit subgroups: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_dict(), indent=1) if args.json else table(result))
    return 0
