"""The calibration store: per recipe x tool profiles, per-class controller state, review dispositions and an
append-only audit trail, in one SQLite file (WAL) that the daemon and the engineers' CLI use at the same time.

Flow: the daemon records every candidate of a defect class, flagged (a DEFECT event) or suppressed under the
threshold (some of them published as AUDIT events), with its confidence (``add_candidate``), every event a reviewer
may judge (DEFECT, AUDIT and REVIEW, the last without a class), and counts inspected dies per lot
(``count_inspected``); reviewers give dispositions (``review``): real, false, a relabel to another class or a novel
defect, with a comment, kept as the die's label (``labels``) and, for a defect class's candidate, as whether that
class was right; at lot end (``close_lot``) every class
of the profile runs its controller, thresholds move, and each change is an audit row. The seed controller uses the
reviewed flagged events not yet used (a disposition that arrives after its lot closed counts in the next one); the
statistical controller uses every candidate of the lot, an unreviewed one counting as a false positive.
Engineers' changes go through the same functions and are audited with their name and reason. Nothing deletes an
audit row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from calibration import controller, engineer
from calibration import statistical_controller as statistical
from calibration.codec import SEED, dumps, loads, start
from calibration.controller import ADJUSTING, LOCKED, ClassSettings, LotCounts, Stages
from calibration.engineer import State
from calibration.errors import CalibrationError, RequestRefused, StoreUnavailable, UnknownEvent

__all__ = [
    "CONTROLLER",
    "DISPOSITIONS",
    "NOVEL",
    "AuditRow",
    "CalibrationError",
    "CalibrationStore",
    "Label",
    "RequestRefused",
    "StoreUnavailable",
    "UnknownEvent",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    recipe TEXT NOT NULL, tool TEXT NOT NULL, controller TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (recipe, tool));
CREATE TABLE IF NOT EXISTS classes (
    recipe TEXT NOT NULL, tool TEXT NOT NULL, class TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (recipe, tool, class));
CREATE TABLE IF NOT EXISTS candidates (
    event_id TEXT PRIMARY KEY, recipe TEXT NOT NULL, tool TEXT NOT NULL, lot_id TEXT NOT NULL, class TEXT NOT NULL,
    confidence REAL NOT NULL, flagged INTEGER NOT NULL, real INTEGER, reviewed_by TEXT, reviewed_at REAL,
    used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS candidates_open ON candidates (recipe, tool, used, real);
CREATE INDEX IF NOT EXISTS candidates_lot ON candidates (recipe, tool, lot_id);
CREATE TABLE IF NOT EXISTS labels (
    event_id TEXT PRIMARY KEY, recipe TEXT NOT NULL, tool TEXT NOT NULL, lot_id TEXT NOT NULL, decision TEXT NOT NULL,
    predicted TEXT NOT NULL, label TEXT, disposition TEXT, comment TEXT, reviewed_by TEXT, reviewed_at REAL);
CREATE TABLE IF NOT EXISTS inspected (
    recipe TEXT NOT NULL, tool TEXT NOT NULL, lot_id TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (recipe, tool, lot_id));
CREATE TABLE IF NOT EXISTS lots_closed (
    recipe TEXT NOT NULL, tool TEXT NOT NULL, lot_id TEXT NOT NULL, closed_at REAL NOT NULL,
    PRIMARY KEY (recipe, tool, lot_id));
CREATE TABLE IF NOT EXISTS config_applied (
    recipe TEXT NOT NULL, tool TEXT NOT NULL, class TEXT NOT NULL, applied TEXT NOT NULL,
    PRIMARY KEY (recipe, tool, class));
CREATE TABLE IF NOT EXISTS batches (batch TEXT PRIMARY KEY, applied_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lot_trend (
    recipe TEXT NOT NULL, tool TEXT NOT NULL, class TEXT NOT NULL, lot_id TEXT NOT NULL, closed_at REAL NOT NULL,
    threshold REAL NOT NULL, fpr_window REAL NOT NULL, certified REAL,
    PRIMARY KEY (recipe, tool, class, lot_id));
CREATE TABLE IF NOT EXISTS model_profiles (
    model_version TEXT NOT NULL, recipe TEXT NOT NULL, tool TEXT NOT NULL, class TEXT NOT NULL, state TEXT NOT NULL,
    saved_at REAL NOT NULL, PRIMARY KEY (model_version, recipe, tool, class));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, recipe TEXT NOT NULL, tool TEXT NOT NULL,
    class TEXT NOT NULL, who TEXT NOT NULL, field TEXT NOT NULL, old TEXT, new TEXT, reason TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows cannot change'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows cannot be deleted'); END;
"""
CONTROLLER = "controller"  # the `who` of automatic changes
CONFIG = "config"  # the `who` of changes the config made at a start
ALL, CLASS = "all", "class"  # FPR denominators: every inspected negative, or those whose top class is the class
DENOMINATORS = (ALL, CLASS)
ESCAPE_WINDOW_LOTS = 10  # the escape estimate covers the last this many closed lots by default
# (event_id, recipe, tool, lot_id, class, confidence, flagged): one defect candidate, flagged or suppressed
Candidate = tuple[str, str, str, str, str, float, bool]
# (event_id, recipe, tool, lot_id, decision, predicted class or UNCLASSIFIED): one event a reviewer may judge
Reviewable = tuple[str, str, str, str, str, str]
DISPOSITIONS = ("real", "false", "relabel", "novel")
GOOD, NOVEL = "GOOD", "NOVEL"  # the labels of a die that shows no defect, and of a defect no class names


@dataclass(frozen=True)
class Label:
    """What a reviewer said a die shows: ``label`` is a class, GOOD or NOVEL (None: not reviewed yet)."""

    event_id: str
    recipe: str
    tool: str
    lot_id: str
    decision: str
    predicted: str
    label: str | None
    disposition: str | None
    comment: str | None
    reviewed_by: str | None
    reviewed_at: float | None


def label_of(disposition: str, predicted: str, label: str | None) -> str:
    """The label a disposition gives a die the station called ``predicted``: real keeps it (a real but unnamed
    defect stays UNCLASSIFIED), false makes it GOOD, a relabel names ``label``, novel makes it NOVEL."""
    if disposition == "relabel":
        if not label:
            raise RequestRefused("class: a relabel names the class the die shows")
        return label
    return {"real": predicted, "false": GOOD, "novel": NOVEL}[disposition]


@dataclass(frozen=True)
class TrendPoint:
    """A class after one closed lot: the threshold then in force, its FPR over the window and, for the statistical
    controller, the certified upper bound on that FPR."""

    lot_id: str
    closed_at: float
    threshold: float
    fpr_window: float
    certified: float | None


def certified_bound(state: State) -> float | None:
    """The upper confidence bound on the FPR at the threshold in force, where the controller keeps one."""
    return state.fpr_upper(state.threshold) if isinstance(state, statistical.StatState) else None


@dataclass(frozen=True)
class AuditRow:
    ts: float
    recipe: str
    tool: str
    defect_class: str
    who: str
    field: str
    old: str | None
    new: str | None
    reason: str


class CalibrationStore:
    def __init__(
        self, path: Path | str, stages: Stages = controller.DEFAULT_STAGES, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stages = stages
        self._clock = clock
        with _converted(f"open the calibration store {self.path}"):
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on the disk when it returns. A disposition is acknowledged to its reviewer, and a
            # station's outbox forgets a batch's calibration rows once this store has them: neither may be taken
            # back by a power cut after that.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with _converted("close the calibration store"):
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, rolled back on any error; SQLite's errors leave as ``StoreUnavailable``."""
        with _converted("write the calibration store"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Every row of one read, SQLite's errors converted."""
        with _converted("read the calibration store"):
            return self._db.execute(sql, params).fetchall()

    # --- profiles -------------------------------------------------------------------------------------------

    def ensure_profile(self, recipe: str, tool: str, classes: Sequence[str], controller_kind: str = SEED,
                       settings: ClassSettings = controller.DEFAULT_SETTINGS) -> None:  # fmt: skip
        """Create the profile and any missing class (idempotent; existing classes keep their state)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO profiles VALUES (?, ?, ?, 1)", (recipe, tool, controller_kind))
            kind = self._controller(db, recipe, tool)
            for name in classes:
                cur = db.execute("INSERT OR IGNORE INTO classes VALUES (?, ?, ?, ?)",
                                 (recipe, tool, name, dumps(start(kind, settings))))  # fmt: skip
                if cur.rowcount:
                    self._audit(db, recipe, tool, name, CONTROLLER, "created", None, kind, "new profile")

    def reconcile(self, recipe: str, tool: str, name: str, kind: str, settings: ClassSettings) -> list[str]:
        """Bring a class in line with what the config says now, where that changed since the config was last
        applied (so an engineer's own change from the CLI stands until the config itself changes): the controller
        kind (the new controller starts from the threshold in force) and the settings, each change audited under
        ``config``. Returns the keys changed. A class first seen here is only remembered."""
        wanted = {"controller": kind, **asdict(settings)}
        with self._tx() as db:
            row = db.execute("SELECT applied FROM config_applied WHERE recipe=? AND tool=? AND class=?",
                             (recipe, tool, name)).fetchone()  # fmt: skip
            db.execute("INSERT OR REPLACE INTO config_applied VALUES (?, ?, ?, ?)",
                       (recipe, tool, name, json.dumps(wanted, sort_keys=True)))  # fmt: skip
            if row is None:
                return []
            before = json.loads(row[0])
            changed = [k for k, v in wanted.items() if before.get(k) != v]
            if not changed:
                return []
            state = self._state(db, recipe, tool, name)
            new: State = state
            if "controller" in changed:
                new = replace(start(kind, state.settings), threshold=state.threshold,
                              status=state.status if state.status != LOCKED else ADJUSTING)  # fmt: skip
                db.execute("UPDATE profiles SET controller=? WHERE recipe=? AND tool=?", (kind, recipe, tool))
                self._audit(db, recipe, tool, name, CONFIG, "controller", before.get("controller"), kind,
                            "the config names another controller")  # fmt: skip
            keys = [k for k in changed if k != "controller"]
            if keys:
                try:
                    new = engineer.with_settings(new, replace(new.settings, **{k: wanted[k] for k in keys}))
                except (TypeError, ValueError) as exc:
                    raise RequestRefused(f"calibration config for {recipe} x {tool} x {name}: {exc}") from exc
                for key in keys:
                    self._audit(db, recipe, tool, name, CONFIG, key, str(getattr(state.settings, key)),
                                str(wanted[key]), "the config changed")  # fmt: skip
            self._save(db, recipe, tool, name, state, new, CONFIG, "the config changed")
            return changed

    def profiles(self) -> list[tuple[str, str, str, int]]:
        return self._query("SELECT recipe, tool, controller, version FROM profiles ORDER BY recipe, tool")

    def version(self, recipe: str, tool: str) -> int | None:
        rows = self._query("SELECT version FROM profiles WHERE recipe=? AND tool=?", (recipe, tool))
        return rows[0][0] if rows else None

    def states(self, recipe: str, tool: str) -> dict[str, State]:
        rows = self._query("SELECT class, state FROM classes WHERE recipe=? AND tool=? ORDER BY rowid",
                                (recipe, tool))  # fmt: skip
        return {name: loads(text) for name, text in rows}

    def thresholds(self, recipe: str, tool: str) -> dict[str, float]:
        return {name: s.threshold for name, s in self.states(recipe, tool).items()}

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap way for the daemon to notice engineer changes."""
        return int(self._query("PRAGMA data_version")[0][0])

    # --- what the daemon records ----------------------------------------------------------------------------

    def add_candidate(self, event_id: str, recipe: str, tool: str, lot_id: str, defect_class: str,
                      confidence: float, flagged: bool = True) -> None:  # fmt: skip
        """A candidate of ``defect_class``: flagged (a DEFECT event) or suppressed under the threshold."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO candidates (event_id, recipe, tool, lot_id, class, confidence, flagged) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (event_id, recipe, tool, lot_id, defect_class, confidence, int(flagged)))  # fmt: skip

    def record(self, inspected: Sequence[tuple[str, str, str]], candidates: Sequence[Candidate],
               reviewable: Sequence[Reviewable] = (), batch: str | None = None) -> None:  # fmt: skip
        """One batch in one transaction: a (recipe, tool, lot_id) per inspected die, candidates as
        (event_id, recipe, tool, lot_id, class, confidence, flagged), and the events a reviewer may judge as
        (event_id, recipe, tool, lot_id, decision, predicted). A ``batch`` id recorded before changes nothing."""
        counts: dict[tuple[str, str, str], int] = {}
        for key in inspected:
            counts[key] = counts.get(key, 0) + 1
        with self._tx() as db:
            if batch is not None and db.execute("INSERT OR IGNORE INTO batches VALUES (?, ?)",
                                                (batch, self._clock())).rowcount == 0:  # fmt: skip
                return
            db.executemany(
                "INSERT INTO inspected VALUES (?, ?, ?, ?) ON CONFLICT (recipe, tool, lot_id) "
                "DO UPDATE SET count = count + excluded.count",
                [(*k, n) for k, n in counts.items()],
            )
            db.executemany("INSERT OR IGNORE INTO candidates (event_id, recipe, tool, lot_id, class, confidence, "
                           "flagged) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(*c[:6], int(c[6])) for c in candidates])  # fmt: skip
            db.executemany("INSERT OR IGNORE INTO labels (event_id, recipe, tool, lot_id, decision, predicted) "
                           "VALUES (?, ?, ?, ?, ?, ?)", reviewable)  # fmt: skip

    def count_inspected(self, recipe: str, tool: str, lot_id: str, n: int = 1) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO inspected VALUES (?, ?, ?, ?) ON CONFLICT (recipe, tool, lot_id) "
                       "DO UPDATE SET count = count + excluded.count", (recipe, tool, lot_id, n))  # fmt: skip

    def review(self, event_id: str, disposition: str, who: str, label: str | None = None, comment: str = "") -> None:
        """A reviewer's disposition of an event (the latest one counts until the lot that uses it closes):
        ``real``, ``false``, ``relabel`` (``label``: the class the die shows) or ``novel`` (a defect no class
        names). For a defect class's candidate (a DEFECT or AUDIT event) it says whether that class was right: real,
        or a relabel to the same class; a REVIEW event (no class) only gets its label. The same review again
        changes nothing; a changed one is audited with ``comment``."""
        if not who:
            raise RequestRefused("who: a reviewer name is required")
        if disposition not in DISPOSITIONS:
            raise RequestRefused(f"disposition: one of {', '.join(DISPOSITIONS)}, not {disposition!r}")
        with self._tx() as db:
            row = db.execute("SELECT recipe, tool, class, real, used FROM candidates WHERE event_id=?",
                             (event_id,)).fetchone()  # fmt: skip
            item = db.execute("SELECT recipe, tool, predicted, label, comment FROM labels WHERE event_id=?",
                              (event_id,)).fetchone()  # fmt: skip
            if row is None and item is None:
                raise UnknownEvent(f"event_id: no event {event_id!r} to review (not a DEFECT, AUDIT or REVIEW here)")
            predicted = row[2] if row is not None else item[2]
            new_label = label_of(disposition, predicted, label)
            if row is not None:
                self._judge_class(db, event_id, row, new_label == predicted, who, comment)
            if item is None:  # a candidate recorded before labels were kept
                return
            recipe, tool, _, old_label, old_comment = item
            if (old_label, old_comment or "") == (new_label, comment):
                return
            db.execute("UPDATE labels SET label=?, disposition=?, comment=?, reviewed_by=?, reviewed_at=? "
                       "WHERE event_id=?", (new_label, disposition, comment, who, self._clock(), event_id))  # fmt: skip
            if new_label != predicted or row is None:
                self._audit(db, recipe, tool, predicted, who, "label", old_label, new_label,
                            f"review of {event_id}" + (f": {comment}" if comment else ""))  # fmt: skip

    def label(self, event_id: str) -> Label | None:
        """One event's label row (None: no such reviewable event)."""
        rows = self._query(
            "SELECT event_id, recipe, tool, lot_id, decision, predicted, label, disposition, comment, reviewed_by, "
            "reviewed_at FROM labels WHERE event_id = ?", (event_id,))  # fmt: skip
        return Label(*rows[0]) if rows else None

    def reviewed(self) -> set[str]:
        """The ids of every event a reviewer has labelled."""
        return {row[0] for row in self._query("SELECT event_id FROM labels WHERE label IS NOT NULL")}

    def labels(self, reviewed: bool = True) -> list[Label]:
        """Every event's label (``reviewed``: only those a reviewer judged), oldest review first."""
        where = "WHERE label IS NOT NULL ORDER BY reviewed_at" if reviewed else "ORDER BY rowid"
        return [Label(*row) for row in self._query(
            "SELECT event_id, recipe, tool, lot_id, decision, predicted, label, disposition, comment, reviewed_by, "
            f"reviewed_at FROM labels {where}")]  # fmt: skip

    def _judge_class(self, db: sqlite3.Connection, event_id: str, row: tuple[Any, ...], real: bool, who: str,
                     comment: str) -> None:  # fmt: skip
        """Whether the candidate's class was right: what the class's controller counts at lot end."""
        recipe, tool, name, old, used = row
        if used:
            raise RequestRefused(f"event_id: {event_id!r} was already used by a closed lot")
        if old is not None and bool(old) == real:
            return  # the same disposition again (a redelivered message): nothing changes, nothing to audit
        db.execute("UPDATE candidates SET real=?, reviewed_by=?, reviewed_at=? WHERE event_id=?",
                   (int(real), who, self._clock(), event_id))  # fmt: skip
        self._audit(db, recipe, tool, name, who, "disposition", None if old is None else str(bool(old)),
                    str(real), f"review of {event_id}" + (f": {comment}" if comment else ""))  # fmt: skip

    def close_lot(self, recipe: str, tool: str, lot_id: str, denominator: str = ALL) -> dict[str, tuple[float, float]]:
        """Run every class's controller on the lot; returns {class: (old, new threshold)} for the ones that moved.
        Closing a lot twice does nothing the second time. ``denominator``: a class's false positives are counted
        against every inspected negative of the recipe x tool (``all``) or only against the negatives whose top
        class was that class (``class``: its candidates not confirmed real)."""
        if denominator not in DENOMINATORS:
            raise RequestRefused(f"denominator: one of {', '.join(DENOMINATORS)}, not {denominator!r}")
        with self._tx() as db:
            if db.execute("INSERT OR IGNORE INTO lots_closed VALUES (?, ?, ?, ?)",
                          (recipe, tool, lot_id, self._clock())).rowcount == 0:  # fmt: skip
                return {}
            row = db.execute("SELECT count FROM inspected WHERE recipe=? AND tool=? AND lot_id=?",
                             (recipe, tool, lot_id)).fetchone()  # fmt: skip
            inspected = row[0] if row else 0
            reviewed = list(db.execute(
                "SELECT event_id, class, confidence, flagged, real, lot_id FROM candidates "
                "WHERE recipe=? AND tool=? AND used=0 AND real IS NOT NULL", (recipe, tool)))  # fmt: skip
            of_lot = list(db.execute(
                "SELECT event_id, class, confidence, flagged, real, lot_id FROM candidates "
                "WHERE recipe=? AND tool=? AND lot_id=?", (recipe, tool, lot_id)))  # fmt: skip
            db.executemany("UPDATE candidates SET used=1 WHERE event_id=?", [(r[0],) for r in reviewed])
            ages = self._lot_ages(db, recipe, tool, {r[5] for r in reviewed if r[5] != lot_id})
            negatives = max(0, inspected - sum(1 for r in reviewed if r[4]))
            moved = {}
            states = {n: loads(text) for n, text in db.execute(
                "SELECT class, state FROM classes WHERE recipe=? AND tool=?", (recipe, tool))}  # fmt: skip
            pools = self._pools(db, recipe, tool, states)
            for name, old in states.items():
                mine, lot_rows = [r for r in reviewed if r[1] == name], [r for r in of_lot if r[1] == name]
                if denominator == CLASS:
                    negatives = sum(1 for r in lot_rows if r[4] != 1)
                pool = pools.get(name)
                new = self._step(old, negatives, mine, lot_rows, lot_id, ages, pool)
                if new.threshold != old.threshold:
                    moved[name] = (old.threshold, new.threshold)
                    self._audit(db, recipe, tool, name, CONTROLLER, "threshold", f"{old.threshold:.2f}",
                                f"{new.threshold:.2f}", f"lot {lot_id} closed")  # fmt: skip
                if new.status != old.status:
                    self._audit(db, recipe, tool, name, CONTROLLER, "status", old.status, new.status, f"lot {lot_id}")
                db.execute("UPDATE classes SET state=? WHERE recipe=? AND tool=? AND class=?",
                           (dumps(new), recipe, tool, name))  # fmt: skip
                db.execute("INSERT OR REPLACE INTO lot_trend VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (recipe, tool, name, lot_id, self._clock(), new.threshold, new.fpr_window,
                            certified_bound(new)))  # fmt: skip
            if moved:
                db.execute("UPDATE profiles SET version = version + 1 WHERE recipe=? AND tool=?", (recipe, tool))
            return moved

    def _pools(self, db: sqlite3.Connection, recipe: str, tool: str,
               states: dict[str, State]) -> dict[str, statistical.Evidence]:  # fmt: skip
        """Per statistical class with little evidence of its own, the same class's evidence on the recipe's other
        tools, summed (only those classes' states are read)."""
        thin = [
            n
            for n, st in states.items()
            if isinstance(st, statistical.StatState) and st.evidence.negatives < st.stat.pool_negatives
        ]
        if not thin:
            return {}
        marks = ",".join("?" * len(thin))
        found: dict[str, list[statistical.Evidence]] = {}
        for name, text in db.execute(f"SELECT class, state FROM classes WHERE recipe=? AND tool != ? AND class IN "
                                     f"({marks})", (recipe, tool, *thin)):  # fmt: skip
            other = loads(text)
            if isinstance(other, statistical.StatState):
                found.setdefault(name, []).append(other.evidence)
        pools = {name: statistical.Evidence.total(parts) for name, parts in found.items()}
        return {name: pool for name, pool in pools.items() if pool is not None}

    def _lot_ages(self, db: sqlite3.Connection, recipe: str, tool: str, lots: set[str]) -> dict[str, int]:
        """How many lots of the recipe x tool closed after each of ``lots`` (1: the one before this one)."""
        ages = {}
        for lot in lots:
            row = db.execute(
                "SELECT COUNT(*) FROM lots_closed WHERE recipe=? AND tool=? AND closed_at > COALESCE((SELECT "
                "closed_at FROM lots_closed WHERE recipe=? AND tool=? AND lot_id=?), 0)",
                (recipe, tool, recipe, tool, lot)).fetchone()  # fmt: skip
            ages[lot] = max(1, int(row[0]) - 1)  # the lot closing now is among them
        return ages

    def _step(self, state: State, negatives: int, reviewed: list[tuple[Any, ...]], of_lot: list[tuple[Any, ...]],
              lot_id: str, ages: dict[str, int], pool: statistical.Evidence | None) -> State:  # fmt: skip
        """Rows are (event_id, class, confidence, flagged, real, lot_id)."""
        if isinstance(state, statistical.StatState):
            items = [statistical.Reviewed(r[2], None if r[4] is None else bool(r[4])) for r in of_lot]
            late = [r for r in reviewed if r[5] != lot_id]
            corrections = statistical.late_labels(
                [statistical.Reviewed(r[2], bool(r[4])) for r in late], [ages.get(r[5], 1) for r in late],
                statistical.half_life(state.stat, negatives)) if late else None  # fmt: skip
            return statistical.after_lot(state, negatives, items, self.stages, pool, corrections)
        flagged = [r for r in reviewed if r[3]]
        counts = LotCounts(negatives, sum(1 for r in flagged if not r[4]), sum(1 for r in flagged if r[4]))
        return controller.after_lot(state, counts, self.stages)

    # --- engineer controls ----------------------------------------------------------------------------------

    def set_settings(self, recipe: str, tool: str, defect_class: str, who: str, reason: str, **changes: float) -> None:
        """Change bounds, steps, budget or the initial threshold of one class (fields of ``ClassSettings``)."""
        with self._tx() as db:
            state = self._state(db, recipe, tool, defect_class)
            if "initial_threshold" not in changes:  # new bounds carry the initial value along
                lower = changes.get("lower", state.settings.lower)
                upper = changes.get("upper", state.settings.upper)
                initial = min(max(state.settings.initial_threshold, lower), upper)
                if initial != state.settings.initial_threshold:
                    changes["initial_threshold"] = initial
            try:
                settings = replace(state.settings, **changes)
            except (TypeError, ValueError) as exc:
                raise RequestRefused(str(exc)) from exc
            new = engineer.with_settings(state, settings)
            for key, value in changes.items():
                self._audit(db, recipe, tool, defect_class, who, key, str(getattr(state.settings, key)), str(value),
                            reason)  # fmt: skip
            self._save(db, recipe, tool, defect_class, state, new, who, reason)

    def override(self, recipe: str, tool: str, defect_class: str, threshold: float, lock_lots: int, who: str,
                 reason: str) -> None:  # fmt: skip
        with self._tx() as db:
            state = self._state(db, recipe, tool, defect_class)
            try:
                new = engineer.override(state, threshold, lock_lots)
            except ValueError as exc:
                raise RequestRefused(f"threshold: {exc}") from exc
            self._save(db, recipe, tool, defect_class, state, new, who, f"{reason} (lock {lock_lots} lots)")

    def unlock(self, recipe: str, tool: str, defect_class: str, who: str, reason: str) -> None:
        with self._tx() as db:
            state = self._state(db, recipe, tool, defect_class)
            self._save(db, recipe, tool, defect_class, state, engineer.unlock(state), who, reason)

    def transfer(self, recipe: str, source: str, target: str, who: str, reason: str) -> None:
        """Copy ``source``'s profile to ``target`` (a tool swap); every class starts there ``revalidating``."""
        with self._tx() as db:
            kind = self._controller(db, recipe, source)
            rows = list(db.execute("SELECT class, state FROM classes WHERE recipe=? AND tool=?", (recipe, source)))
            db.execute("INSERT INTO profiles VALUES (?, ?, ?, 1) ON CONFLICT (recipe, tool) DO UPDATE SET "
                       "controller=excluded.controller, version=version + 1", (recipe, target, kind))  # fmt: skip
            for name, text in rows:
                state = loads(text)
                kind_of = statistical if isinstance(state, statistical.StatState) else controller
                moved = kind_of.transferred(state)
                db.execute("INSERT OR REPLACE INTO classes VALUES (?, ?, ?, ?)", (recipe, target, name, dumps(moved)))
                self._audit(db, recipe, target, name, who, "transfer", source, f"{moved.threshold:.2f}", reason)

    def switch_model(self, old: str, new: str, who: str, reason: str) -> str:
        """The live model version changes from ``old`` to ``new``: every class's state is kept under ``old``, then
        ``new``'s own states come back where it was live before (``restored``), else each class starts from the
        threshold in force, ``revalidating`` (``transferred``): thresholds tuned to one version's confidences are
        never taken silently by another. Every class changed is audited (field ``model_version``)."""
        with self._tx() as db:
            now = self._clock()
            rows = list(db.execute("SELECT recipe, tool, class, state FROM classes"))
            db.executemany("INSERT OR REPLACE INTO model_profiles VALUES (?, ?, ?, ?, ?, ?)",
                           [(old, r, t, c, text, now) for r, t, c, text in rows])  # fmt: skip
            kept = {(r, t, c): text for r, t, c, text in db.execute(
                "SELECT recipe, tool, class, state FROM model_profiles WHERE model_version=?", (new,))}  # fmt: skip
            how = "restored" if kept else "transferred"
            for recipe, tool, name, text in rows:
                state = loads(text)
                if kept:
                    if (recipe, tool, name) not in kept:
                        continue
                    moved = loads(kept[(recipe, tool, name)])
                else:
                    kind_of = statistical if isinstance(state, statistical.StatState) else controller
                    moved = kind_of.transferred(state)
                db.execute("UPDATE classes SET state=? WHERE recipe=? AND tool=? AND class=?",
                           (dumps(moved), recipe, tool, name))  # fmt: skip
                self._audit(db, recipe, tool, name, who, "model_version", old, new,
                            f"{how}: {moved.threshold:.3f} {moved.status}; {reason}")  # fmt: skip
            db.execute("UPDATE profiles SET version = version + 1")
            return how

    def escape_estimate(self, recipe: str, tool: str, defect_class: str,
                        window_lots: int | None = ESCAPE_WINDOW_LOTS) -> float | None:  # fmt: skip
        """Share of the class's real defects that were suppressed, from the AUDIT sample: the real share among
        audited suppressed candidates, times all suppressed candidates, against the confirmed flagged ones, over the
        lots still open and the last ``window_lots`` closed lots of the recipe x tool (None: every lot kept). None
        before any audited candidate in the window has a disposition."""
        window, args = "", [recipe, tool, defect_class]
        if window_lots is not None:
            window = (
                " AND (lot_id IN (SELECT lot_id FROM lots_closed WHERE recipe=? AND tool=? ORDER BY closed_at "
                "DESC LIMIT ?) OR lot_id NOT IN (SELECT lot_id FROM lots_closed WHERE recipe=? AND tool=?))"
            )
            args += [recipe, tool, str(window_lots), recipe, tool]  # SQLite reads a number's text as the number
        [(flagged_real, suppressed, audited, audited_real)] = self._query(
            "SELECT COALESCE(SUM(flagged = 1 AND real = 1), 0), COALESCE(SUM(flagged = 0), 0), "
            "COALESCE(SUM(flagged = 0 AND real IS NOT NULL), 0), COALESCE(SUM(flagged = 0 AND real = 1), 0) "
            "FROM candidates WHERE recipe=? AND tool=? AND class=?" + window,
            args,
        )
        if not audited:
            return None
        missed = suppressed * audited_real / audited
        return missed / (flagged_real + missed) if flagged_real + missed else 0.0

    def prune(self, before: float) -> int:
        """Forget the candidates and inspected counts of lots closed before ``before`` (epoch seconds): their
        lot ends have used them, and the escape estimate then covers the lots closed since. Lots not closed
        keep theirs, and so do the labels reviewers gave; the audit trail and the class states are never pruned.
        Returns the candidates deleted."""
        closed_before = (
            "EXISTS (SELECT 1 FROM lots_closed c WHERE c.recipe = {t}.recipe AND c.tool = {t}.tool "
            "AND c.lot_id = {t}.lot_id AND c.closed_at < ?)"
        )
        with self._tx() as db:
            n = db.execute(f"DELETE FROM candidates WHERE {closed_before.format(t='candidates')}", (before,)).rowcount
            db.execute(f"DELETE FROM inspected WHERE {closed_before.format(t='inspected')}", (before,))
            db.execute(f"DELETE FROM labels WHERE label IS NULL AND {closed_before.format(t='labels')}", (before,))
            db.execute("DELETE FROM batches WHERE applied_at < ?", (before,))
        return n

    def mode(self, recipe: str, tool: str) -> str:
        """The profile's stage: ``calibrating`` while any class is, ``production`` once every class is stable or
        locked, else ``convergence``."""
        statuses = {s.status for s in self.states(recipe, tool).values()}
        if controller.CALIBRATING in statuses:
            return "calibrating"
        return "production" if statuses <= {controller.STABLE, controller.LOCKED} else "convergence"

    def history(self, recipe: str, tool: str, defect_class: str | None = None, limit: int = 100) -> list[AuditRow]:
        sql = "SELECT ts, recipe, tool, class, who, field, old, new, reason FROM audit WHERE recipe=? AND tool=?"
        args: list[object] = [recipe, tool]
        if defect_class:
            sql, args = sql + " AND class=?", [*args, defect_class]
        rows = self._query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditRow(*r) for r in rows]

    def trend(self, recipe: str, tool: str, defect_class: str, limit: int = 60) -> list[TrendPoint]:
        """The class's threshold and FPR after each of its last ``limit`` closed lots, oldest first."""
        rows = self._query(
            "SELECT lot_id, closed_at, threshold, fpr_window, certified FROM lot_trend WHERE recipe=? AND tool=? "
            "AND class=? ORDER BY closed_at DESC, rowid DESC LIMIT ?", (recipe, tool, defect_class, limit))  # fmt: skip
        return [TrendPoint(*r) for r in reversed(rows)]

    # --- internals ------------------------------------------------------------------------------------------

    def _controller(self, db: sqlite3.Connection, recipe: str, tool: str) -> str:
        row = db.execute("SELECT controller FROM profiles WHERE recipe=? AND tool=?", (recipe, tool)).fetchone()
        if row is None:
            raise RequestRefused(f"recipe/tool: no calibration profile for {recipe} x {tool}")
        return str(row[0])

    def _state(self, db: sqlite3.Connection, recipe: str, tool: str, defect_class: str) -> State:
        self._controller(db, recipe, tool)
        row = db.execute("SELECT state FROM classes WHERE recipe=? AND tool=? AND class=?",
                         (recipe, tool, defect_class)).fetchone()  # fmt: skip
        if row is None:
            raise RequestRefused(f"class: {defect_class!r} is not calibrated for {recipe} x {tool}")
        return loads(row[0])

    def _save(self, db: sqlite3.Connection, recipe: str, tool: str, name: str, old: State, new: State, who: str,
              reason: str) -> None:  # fmt: skip
        if not who:
            raise RequestRefused("who: a name is required for an engineer change")
        if not reason:
            raise RequestRefused("reason: say why")
        for field in ("threshold", "status", "lock_until"):
            if getattr(old, field) != getattr(new, field):
                self._audit(db, recipe, tool, name, who, field, str(getattr(old, field)), str(getattr(new, field)),
                            reason)  # fmt: skip
        db.execute("UPDATE classes SET state=? WHERE recipe=? AND tool=? AND class=?", (dumps(new), recipe, tool, name))
        db.execute("UPDATE profiles SET version = version + 1 WHERE recipe=? AND tool=?", (recipe, tool))

    def _audit(self, db: sqlite3.Connection, recipe: str, tool: str, name: str, who: str, field: str,
               old: str | None, new: str | None, reason: str) -> None:  # fmt: skip
        db.execute("INSERT INTO audit (ts, recipe, tool, class, who, field, old, new, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (self._clock(), recipe, tool, name, who, field, old, new,
                                                          reason))  # fmt: skip


@contextmanager
def _converted(what: str) -> Iterator[None]:
    """The store's error boundary: ``sqlite3.Error`` leaves as ``StoreUnavailable("cannot <what>: ...")``."""
    try:
        yield
    except sqlite3.Error as err:
        raise StoreUnavailable(f"cannot {what}: {err}") from err
