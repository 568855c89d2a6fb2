"""The reviewed dies of the subgroup audit, read from the stores the station already keeps (read-only SQLite).

- The calibration store's ``labels``: one row per reviewable event (DEFECT, REVIEW, AUDIT), holding the latest
  review of it, so a redelivered or repeated review counts once. AUDIT samples count in the escape rate, DEFECT and
  REVIEW events in the false-positive rate (``edge.review.subgroups``).
- The die's facts, by event id: first its capture (time, wafer, die, note, process log, model versions), else its
  event in the outbox (the same but the note), else only the time in the event id (time-ordered ids).
- The wafer zone: the die's normalised radius on its recipe's die grid, the union of every die position the outbox
  (wafer maps, open wafers) and the capture index know for that recipe (``MIN_GRID_DIES`` at least; fewer: unknown).

The chamber comes from the wafer's MES process log (its optional ``chamber_id``, kept in the capture's and the
event's ``process``); a die without a log, or whose log names none, reads ``unknown``. Missing capture or outbox
files read as empty; a file that is there and cannot be read is an ``AuditUnreadable``, and so is a missing
calibration store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.capture.store import INDEX
from edge.config import Config
from edge.errors import EdgeError
from edge.flow import AUDIT, DEFECT, REVIEW
from edge.review.subgroups import (
    CORRECTIONS,
    DEFAULT_SHIFTS,
    ESCAPE,
    FALSE_POSITIVE,
    HOLM,
    UNKNOWN,
    Audit,
    Reviewed,
    audit,
    model_slice,
    parse_shifts,
    parse_when,
    presence,
    shift_of,
    zone_of,
)
from edge.taxonomy import GOOD
from edge.watch.die_grid import WaferGeometry, wafer_geometry

MIN_GRID_DIES = 9  # die positions a recipe's grid needs before a zone is given
KIND_OF = {AUDIT: ESCAPE, DEFECT: FALSE_POSITIVE, REVIEW: FALSE_POSITIVE}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class AuditUnreadable(EdgeError):
    """A store the audit reads is missing or cannot be read."""


class AuditRefused(EdgeError):
    """The audit was asked for with a bad argument (a date, a number, an unknown recipe); the message says which."""


@dataclass(frozen=True)
class Sources:
    """The station's store files (from its config)."""

    calibration: Path
    captures: Path  # the capture index file
    outbox: Path

    @classmethod
    def of(cls, cfg: Config) -> Sources:
        return cls(cfg.calibration.path, cfg.capture.path / INDEX, cfg.outbox.path)


@dataclass(frozen=True)
class Filters:
    since: float | None = None  # epoch seconds, the die's inspection time at or after
    until: float | None = None  # before
    recipe: str | None = None


@dataclass(frozen=True)
class Shifts:
    starts: tuple[int, ...]  # minutes of the day (``subgroups.parse_shifts``)
    zone: tzinfo | None = None  # None: the host's local time


@dataclass
class Found:
    """The reviewed dies, and what the reader could say of its sources."""

    records: list[Reviewed]
    recipes: list[str]  # every recipe with a reviewable event
    facts_from: dict[str, int] = field(default_factory=dict)  # capture, event, event id only
    undated_skipped: int = 0  # dies with no known time, left out by a time filter

    def notes(self) -> dict[str, str]:
        sources = ", ".join(f"{k} {v}" for k, v in sorted(self.facts_from.items()))
        notes = {"facts from": sources or "no review"}
        if self.undated_skipped:
            notes["undated"] = f"{self.undated_skipped} dies with no known time left out by the time filter"
        return notes


def ulid_time(event_id: str) -> float | None:
    """The creation time in an event id (``edge.publish.events.EventIds``: 48-bit milliseconds first)."""
    if len(event_id) != 26 or any(ch not in _CROCKFORD for ch in event_id):
        return None
    value = 0
    for ch in event_id[:10]:  # 50 bits: the 48-bit time and 2 bits of padding
        value = value * 32 + _CROCKFORD.index(ch)
    return value / 1000.0


@contextmanager
def _read_only(path: Path, what: str, required: bool) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to ``path`` (None: the file is not there and not ``required``); SQLite's errors leave
    as ``AuditUnreadable``."""
    if not path.exists():
        if required:
            raise AuditUnreadable(f"cannot read the {what}: no file {path}")
        yield None
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as err:
        raise AuditUnreadable(f"cannot read the {what} {path}: {err}") from err
    try:
        db.execute("PRAGMA busy_timeout=5000")
        yield db
    except sqlite3.Error as err:
        raise AuditUnreadable(f"cannot read the {what} {path}: {err}") from err
    finally:
        db.close()


def _facts_of(db: sqlite3.Connection | None, sql: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    if db is None:
        return rows
    for start in range(0, len(ids), 500):  # under SQLite's limit of bound parameters
        part = ids[start : start + 500]
        rows += db.execute(sql.format(marks=",".join("?" * len(part))), part).fetchall()
    return rows


@dataclass
class _Die:
    recipe: str
    tool: str
    decision: str
    label: str
    ts: float | None = None
    die: tuple[int, int] | None = None
    note: bool | None = None
    process: bool | None = None
    chamber: str | None = None
    models: dict[str, str] | None = None
    source: str = "event id only"


def read_reviewed(sources: Sources, filters: Filters, shifts: Shifts) -> Found:
    """Every reviewed DEFECT, REVIEW and AUDIT die with its slices, each once, filtered."""
    with _read_only(sources.calibration, "calibration store", required=True) as calibration:
        assert calibration is not None
        labels = calibration.execute(
            "SELECT event_id, recipe, tool, decision, label FROM labels WHERE label IS NOT NULL ORDER BY event_id"
        ).fetchall()
        recipes = [r for (r,) in calibration.execute("SELECT DISTINCT recipe FROM labels ORDER BY recipe")]
    dies = {e: _Die(r, t, d, lab, ulid_time(e)) for e, r, t, d, lab in labels if d in KIND_OF}
    if filters.recipe is not None:
        dies = {e: d for e, d in dies.items() if d.recipe == filters.recipe}
    ids = list(dies)
    grid: dict[str, set[tuple[int, int]]] = {}
    with _read_only(sources.captures, "capture index", required=False) as captures:
        for event_id, ts, x, y, facts in _facts_of(
            captures, "SELECT event_id, ts, die_x, die_y, facts FROM captures WHERE event_id IN ({marks})", ids
        ):
            _from_capture(dies[event_id], ts, (x, y), json.loads(facts))
        if captures is not None:
            for recipe, x, y in captures.execute("SELECT DISTINCT recipe_id, die_x, die_y FROM captures WHERE "
                                                 "recipe_id != ''"):  # fmt: skip
                grid.setdefault(recipe, set()).add((x, y))
    with _read_only(sources.outbox, "outbox", required=False) as outbox:
        if outbox is not None and _has_tables(outbox, "events", "wafer_maps", "wafer_dies"):
            for event_id, payload in _facts_of(
                outbox, "SELECT event_id, payload FROM events WHERE event_id IN ({marks})", ids
            ):
                _from_event(dies[event_id], json.loads(payload))
            for recipe, positions in outbox.execute("SELECT recipe_id, dies FROM wafer_maps"):
                grid.setdefault(recipe, set()).update((int(p[0]), int(p[1])) for p in json.loads(positions))
            for recipe, x, y in outbox.execute("SELECT DISTINCT recipe_id, x, y FROM wafer_dies"):
                grid.setdefault(recipe, set()).add((x, y))
    geometry = {r: wafer_geometry(p) for r, p in grid.items() if len(p) >= MIN_GRID_DIES}
    found = Found([], recipes)
    for die in dies.values():
        if filters.since is not None or filters.until is not None:
            if die.ts is None:
                found.undated_skipped += 1
                continue
            if (filters.since is not None and die.ts < filters.since) or (
                filters.until is not None and die.ts >= filters.until
            ):
                continue
        found.facts_from[die.source] = found.facts_from.get(die.source, 0) + 1
        found.records.append(_record(die, geometry.get(die.recipe), shifts))
    return found


def _has_tables(db: sqlite3.Connection, *names: str) -> bool:
    marks = ",".join("?" * len(names))
    rows = db.execute(f"SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ({marks})", names)
    return int(rows.fetchone()[0]) == len(names)


def _from_capture(die: _Die, ts: float, position: tuple[int, int], facts: dict[str, Any]) -> None:
    if ts and facts:  # a tombstone of a capture never written has no facts
        die.ts, die.die, die.source = float(ts), position, "capture"
        die.note = facts["note"] is not None if "note" in facts else None
        die.process = _present(facts)
        die.chamber = _chamber(facts)
        models = facts.get("models")
        die.models = {str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else None


def _from_event(die: _Die, body: dict[str, Any]) -> None:
    if die.source == "capture":
        return
    die.source = "event"
    if isinstance(body.get("ts"), int | float):
        die.ts = float(body["ts"])
    position = body.get("die")
    if isinstance(position, list) and len(position) == 2:
        die.die = (int(position[0]), int(position[1]))
    die.process = _present(body)
    die.chamber = _chamber(body)
    models = body.get("models")
    die.models = {str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else None


def _chamber(facts: dict[str, Any]) -> str | None:
    """The chamber the process log named (``process.chamber_id``), if the die had a log that named one."""
    process = facts.get("process")
    chamber = process.get("chamber_id") if isinstance(process, dict) else None
    return str(chamber) if chamber else None


def _present(facts: dict[str, Any]) -> bool | None:
    process = facts.get("process")
    return bool(process["present"]) if isinstance(process, dict) and "present" in process else None


def _record(die: _Die, geometry: WaferGeometry | None, shifts: Shifts) -> Reviewed:
    kind = KIND_OF[die.decision]
    error = die.label != GOOD if kind == ESCAPE else die.label == GOOD
    r_norm = geometry.r_norm(*die.die) if geometry is not None and die.die is not None else None
    return Reviewed(kind, error, {
        "tool": die.tool,
        "chamber": die.chamber or UNKNOWN,
        "shift": shift_of(die.ts, shifts.starts, shifts.zone),
        "zone": zone_of(r_norm),
        "notes": presence(die.note),
        "process_log": presence(die.process),
        "model": model_slice(die.models),
    })  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What an audit is asked for (the CLI's options, the page's query)."""

    filters: Filters = Filters()
    shifts: Shifts = Shifts(parse_shifts(DEFAULT_SHIFTS))
    alpha: float = 0.05
    min_n: int = 20
    correction: str = HOLM


def request_of(since: str | None = None, until: str | None = None, recipe: str | None = None,
               alpha: str | None = None, min_n: str | None = None, correction: str | None = None,
               shifts: str | None = None, timezone: str | None = None) -> Request:  # fmt: skip
    """A ``Request`` from text (empty means the default); ``AuditRefused`` names the bad argument."""
    try:
        zone = ZoneInfo(timezone) if timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        raise AuditRefused(f"timezone: {timezone!r} is not a time zone name (e.g. Europe/Berlin, UTC)") from None
    try:
        begin = parse_when(since, zone) if since else None
        end = parse_when(until, zone) if until else None
        starts = parse_shifts(shifts or DEFAULT_SHIFTS)
    except ValueError as err:
        raise AuditRefused(str(err)) from None
    if begin is not None and end is not None and begin >= end:
        raise AuditRefused(f"since ({since}) is not before until ({until})")
    try:
        level = float(alpha) if alpha else 0.05
    except ValueError:
        raise AuditRefused(f"alpha: {alpha!r} is not a number") from None
    if not 0 < level < 1:
        raise AuditRefused(f"alpha: {alpha} is not between 0 and 1")
    if min_n and not min_n.strip().isdigit():
        raise AuditRefused(f"min-n: {min_n!r} is not a whole number")
    least = int(min_n) if min_n else 20
    if least < 1:
        raise AuditRefused("min-n: at least 1")
    if correction and correction not in CORRECTIONS:
        raise AuditRefused(f"correction: one of {', '.join(CORRECTIONS)}, not {correction!r}")
    return Request(Filters(begin, end, recipe or None), Shifts(starts, zone), level, least, correction or HOLM)


def subgroup_audit(sources: Sources, request: Request, configured: Collection[str] = ()) -> Audit:
    """Read the reviewed dies and audit them; ``AuditRefused`` for a recipe neither configured (``configured``)
    nor in the calibration store, ``AuditUnreadable`` for a store that cannot be read. Blocking: the review
    service runs it on its store thread."""
    found = read_reviewed(sources, request.filters, request.shifts)
    recipe = request.filters.recipe
    if recipe is not None and recipe not in configured and recipe not in found.recipes:
        known = sorted({*configured, *found.recipes})
        raise AuditRefused(f"recipe: no recipe {recipe!r}; known: {', '.join(known) or 'none'}")
    result = audit(found.records, request.alpha, request.min_n, request.correction)
    result.notes.update(found.notes())
    return result
