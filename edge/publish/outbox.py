"""Durable outbox (DESIGN 3.6): every result and event in SQLite (WAL) before any reply or publish.

One transaction per batch, or for several batches at once: ``record_all`` writes each as ``record`` would, in
order, and commits once (``edge.publish.group_commit`` gathers the batches that arrive while a commit is under
way). Results are keyed by (tool_id, frame_id), which de-duplicates frames a
tool resends, across restarts too. Events keep their insertion order (``seq``) and stay until the
broker acknowledged them. The dies of wafers not yet summarised are kept beside the results, in the
same transaction, and leave in the transaction that records their wafer's summary: a restart picks
the open wafers up where they were, so each wafer still gets one summary; an open wafer's end (the
MES said so) is kept with them until its summary is recorded, and its dies are then folded into one wafer map
row (the review pages draw it), pruned with the events. The line watch's drift
and parameter state is saved here too, now and then. Blocking calls: the daemon runs them on one
dedicated thread.

Only what a reply or a publish promises waits for the disk: results, events and dies are committed with a sync
(``synchronous=FULL``); the marks the daemon makes afterwards (delivered, released, calibration rows forgotten) are
committed without one and become durable with the next synced commit, since a start makes each of them again when
a power cut takes it back (``_writing(..., synced=False)``).

An event whose die is captured is recorded ``held``: it is not handed out (and no event after it is, so the
order holds) until ``release`` says its capture is written; ``held_events`` at a start names those whose capture
a stopped run never wrote.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from edge.errors import OutboxError
from edge.flow import WAFER, DieRow, EventRow, ResultRow
from edge.ops.transaction import immediate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    tool_id     TEXT NOT NULL,
    frame_id    TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    decision    TEXT NOT NULL,
    event_id    TEXT,
    reply       BLOB NOT NULL,
    PRIMARY KEY (tool_id, frame_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    decision     TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   REAL NOT NULL,
    delivered_at REAL,
    held         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_pending ON events (seq) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS wafer_dies (
    seq         INTEGER PRIMARY KEY,
    tool_id     TEXT NOT NULL,
    lot_id      TEXT NOT NULL,
    wafer_id    TEXT NOT NULL,
    x           INTEGER NOT NULL,
    y           INTEGER NOT NULL,
    recipe_id   TEXT NOT NULL,
    decision    TEXT NOT NULL,
    defect_class TEXT,
    recorded_at REAL NOT NULL,
    UNIQUE (tool_id, lot_id, wafer_id, x, y)
);
CREATE TABLE IF NOT EXISTS wafer_maps (
    tool_id     TEXT NOT NULL,
    lot_id      TEXT NOT NULL,
    wafer_id    TEXT NOT NULL,
    recipe_id   TEXT NOT NULL,
    summary_id  TEXT,
    dies        TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (tool_id, lot_id, wafer_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wafer_maps_recorded ON wafer_maps (recorded_at);
CREATE TABLE IF NOT EXISTS wafer_ends (
    tool_id     TEXT NOT NULL,
    lot_id      TEXT NOT NULL,
    wafer_id    TEXT NOT NULL,
    ended_by    TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (tool_id, lot_id, wafer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calibration_rows (
    batch       TEXT PRIMARY KEY,
    payload     TEXT NOT NULL,
    recorded_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watch_state (
    detector    TEXT NOT NULL,
    recipe_id   TEXT NOT NULL,
    tool_id     TEXT NOT NULL,
    state       BLOB NOT NULL,
    saved_at    REAL NOT NULL,
    PRIMARY KEY (detector, recipe_id, tool_id)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Write:
    """What one ``record`` call writes (its arguments)."""

    results: Sequence[ResultRow] = ()
    events: Sequence[EventRow] = ()
    dies: Sequence[DieRow] = ()
    summarised: Sequence[tuple[str, str, str]] = ()
    calibration: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    seq: int
    event_id: str
    topic: str
    decision: str
    payload: str


class Outbox:
    """Every method raises ``OutboxError`` (never ``sqlite3.Error``) when SQLite fails, reads as well as writes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        with _converted(f"open outbox {path}"):
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
            if "held" not in columns:  # an outbox written before captures existed
                self._db.execute("ALTER TABLE events ADD COLUMN held INTEGER NOT NULL DEFAULT 0")
            self._db.execute("CREATE INDEX IF NOT EXISTS events_held ON events (seq) WHERE held = 1")

    def close(self) -> None:
        with _converted("close the outbox"):
            self._db.close()

    def record(
        self,
        results: Sequence[ResultRow],
        events: Sequence[EventRow],
        dies: Sequence[DieRow] = (),
        summarised: Sequence[tuple[str, str, str]] = (),
        calibration: tuple[str, str] | None = None,
    ) -> None:
        """Write a batch's results, events and open-wafer dies in one transaction, and fold the dies of the
        ``summarised`` wafers (tool_id, lot_id, wafer_id), whose summaries are among ``events``, into one wafer
        map row each (what the review pages draw; pruned with the events). ``calibration``: the batch's
        calibration rows (batch id, payload), kept until ``forget_calibration`` says the calibration store has
        them. A result already recorded for the same (tool_id, frame_id) is kept as it was (a resent frame is
        answered from it); a die inspected again keeps its latest result."""
        self.record_all([Write(results, events, dies, summarised, calibration)])

    def record_all(self, writes: Sequence[Write]) -> None:
        """Several ``record`` calls in one transaction: each written as ``record`` writes it, in the order given, and
        one commit (one sync to the disk) for them all; none is written if any cannot be."""
        now = time.time()
        with self._writing("record batch"):
            for write in writes:
                self._record(write, now)

    def _record(self, w: Write, now: float) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?)",
            [(r.tool_id, r.frame_id, now, r.decision, r.event_id, r.reply) for r in w.results],
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO events (event_id, topic, decision, payload, created_at, held) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(e.event_id, e.topic, e.decision, e.payload, now, int(e.held)) for e in w.events],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO wafer_dies (tool_id, lot_id, wafer_id, x, y, recipe_id, decision, "
            "defect_class, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d.tool_id, d.lot_id, d.wafer_id, d.x, d.y, d.recipe_id, d.decision, d.defect_class, now) for d in w.dies],
        )
        if w.calibration is not None:
            self._db.execute("INSERT OR IGNORE INTO calibration_rows VALUES (?, ?, ?)", (*w.calibration, now))
        summaries = _summary_ids(w.events)
        for key in w.summarised:
            folded = self._db.execute(
                "SELECT x, y, decision, defect_class, recipe_id FROM wafer_dies WHERE tool_id = ? AND lot_id = ? "
                "AND wafer_id = ? ORDER BY seq", key).fetchall()  # fmt: skip
            if folded:
                self._db.execute(
                    "INSERT OR REPLACE INTO wafer_maps VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*key, folded[-1][4], summaries.get(key), json.dumps([d[:4] for d in folded]), now),
                )
        for table in ("wafer_dies", "wafer_ends"):
            self._db.executemany(f"DELETE FROM {table} WHERE tool_id = ? AND lot_id = ? AND wafer_id = ?", w.summarised)

    def calibration_rows(self) -> list[tuple[str, str]]:
        """The batches' calibration rows (batch id, payload) not yet in the calibration store, oldest first."""
        with _converted("read calibration rows"):
            rows = self._db.execute("SELECT batch, payload FROM calibration_rows ORDER BY recorded_at").fetchall()
        return [(batch, payload) for batch, payload in rows]

    def forget_calibration(self, batches: Sequence[str]) -> None:
        """The calibration store holds these batches' rows now (committed without a sync of its own: see
        ``_writing``)."""
        with self._writing("forget calibration rows", synced=False):
            self._db.executemany("DELETE FROM calibration_rows WHERE batch = ?", [(b,) for b in batches])

    def end_wafers(self, ended: Sequence[tuple[tuple[str, str, str], str]]) -> None:
        """Keep why open wafers ended ((tool_id, lot_id, wafer_id), ended_by) until they are summarised; the
        first reason given stays."""
        now = time.time()
        with self._writing("record wafer ends"):
            self._db.executemany(
                "INSERT OR IGNORE INTO wafer_ends VALUES (?, ?, ?, ?, ?)", [(*key, why, now) for key, why in ended]
            )

    def wafer_ends(self) -> list[tuple[tuple[str, str, str], str]]:
        """The ends ``end_wafers`` kept of wafers not yet summarised."""
        with _converted("read wafer ends"):
            rows = self._db.execute(
                "SELECT tool_id, lot_id, wafer_id, ended_by FROM wafer_ends ORDER BY recorded_at"
            ).fetchall()
        return [((tool, lot, wafer), why) for tool, lot, wafer, why in rows]

    def open_dies(self) -> list[DieRow]:
        """The dies of the wafers not yet summarised, in the order they were recorded (a die inspected
        again, at its latest place)."""
        with _converted("read open wafer dies"):
            rows = self._db.execute(
                "SELECT tool_id, lot_id, wafer_id, x, y, recipe_id, decision, defect_class FROM wafer_dies ORDER BY seq"
            ).fetchall()
        return [DieRow(*row) for row in rows]

    def recorded_reply(self, tool_id: str, frame_id: str) -> bytes | None:
        with _converted("read a recorded reply"):
            row = self._db.execute(
                "SELECT reply FROM results WHERE tool_id = ? AND frame_id = ?", (tool_id, frame_id)
            ).fetchone()
        return row[0] if row else None

    def pending(self, after_seq: int, limit: int) -> list[PendingEvent]:
        """Undelivered events after ``after_seq`` in order, up to the first one still held."""
        with _converted("read pending events"):
            rows = self._db.execute(
                "SELECT seq, event_id, topic, decision, payload FROM events WHERE delivered_at IS NULL AND seq > ? "
                "AND seq < coalesce((SELECT min(seq) FROM events WHERE held = 1), 9223372036854775807) "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [PendingEvent(*row) for row in rows]

    def release(self, event_ids: Iterable[str]) -> None:
        """These held events may go out: their captures are written (or known lost). Committed without a sync of
        its own (``_writing``): a release a power cut takes back is made again by the start's ``Keeper.settle``."""
        with self._writing("release held events", synced=False):
            self._db.executemany("UPDATE events SET held = 0 WHERE event_id = ?", [(e,) for e in event_ids])

    def held_events(self) -> list[str]:
        """The ids of the events still held, oldest first."""
        with _converted("read held events"):
            rows = self._db.execute("SELECT event_id FROM events WHERE held = 1 ORDER BY seq").fetchall()
        return [row[0] for row in rows]

    def mark_delivered(self, seqs: Iterable[int]) -> None:
        """The broker has these events. Committed without a sync of its own (``_writing``): a mark a power cut takes
        back means the event goes out again (at least once; its id lets subscribers drop the copy)."""
        now = time.time()
        with self._writing("mark events delivered", synced=False):
            self._db.executemany("UPDATE events SET delivered_at = ? WHERE seq = ?", [(now, s) for s in seqs])

    def mark_undelivered(self, seqs: Iterable[int]) -> None:
        """Take delivery marks back: the publisher hands these events to the broker again."""
        with self._writing("mark events undelivered"):
            self._db.executemany("UPDATE events SET delivered_at = NULL WHERE seq = ?", [(s,) for s in seqs])

    def backlog(self) -> int:
        with _converted("count the backlog"):
            count: int = self._db.execute("SELECT count(*) FROM events WHERE delivered_at IS NULL").fetchone()[0]
        return count

    def used_bytes(self) -> int:
        """Bytes held by live pages (free pages are reused before the file grows), plus the WAL."""
        with _converted("measure the outbox"):
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        wal = Path(f"{self._path}-wal")
        return int((pages - free) * size) + (wal.stat().st_size if wal.exists() else 0)

    def save_state(self, states: dict[str, dict[tuple[str, str], bytes]]) -> None:
        """Replace the kept line-watch state (detector -> (recipe_id, tool_id) -> bytes) in one transaction."""
        now = time.time()
        with self._writing("save the line-watch state"):
            self._db.execute("DELETE FROM watch_state")
            self._db.executemany(
                "INSERT INTO watch_state VALUES (?, ?, ?, ?, ?)",
                [
                    (name, recipe, tool, blob, now)
                    for name, keyed in states.items()
                    for (recipe, tool), blob in keyed.items()
                ],
            )

    def load_state(self) -> dict[str, dict[tuple[str, str], bytes]]:
        states: dict[str, dict[tuple[str, str], bytes]] = {}
        with _converted("read the line-watch state"):
            rows = self._db.execute("SELECT detector, recipe_id, tool_id, state FROM watch_state").fetchall()
        for name, recipe, tool, blob in rows:
            states.setdefault(name, {})[(recipe, tool)] = blob
        return states

    def prune(self, before: float) -> dict[str, int]:
        """Delete results recorded, acknowledged events created, open-wafer dies last seen and wafer ends
        with no die left recorded before ``before`` (epoch seconds). Events the broker has not acknowledged
        are kept whatever their age.
        Returns the rows deleted by table."""
        with self._writing("prune"):
            pruned = {
                "results": self._db.execute("DELETE FROM results WHERE recorded_at < ?", (before,)).rowcount,
                "events": self._db.execute(
                    "DELETE FROM events WHERE delivered_at IS NOT NULL AND created_at < ?", (before,)
                ).rowcount,
                "wafer_dies": self._db.execute(  # a wafer whose newest die is that old will not be summarised
                    "DELETE FROM wafer_dies WHERE (tool_id, lot_id, wafer_id) IN (SELECT tool_id, lot_id, "
                    "wafer_id FROM wafer_dies GROUP BY tool_id, lot_id, wafer_id HAVING MAX(recorded_at) < ?)",
                    (before,),
                ).rowcount,
                "wafer_maps": self._db.execute("DELETE FROM wafer_maps WHERE recorded_at < ?", (before,)).rowcount,
                "wafer_ends": self._db.execute(
                    "DELETE FROM wafer_ends WHERE recorded_at < ? AND (tool_id, lot_id, wafer_id) NOT IN "
                    "(SELECT tool_id, lot_id, wafer_id FROM wafer_dies)",
                    (before,),
                ).rowcount,
            }
        with _converted("checkpoint the WAL"):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return pruned

    @contextmanager
    def _writing(self, what: str, synced: bool = True) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error), SQLite errors converted.
        ``synced=False``: its commit does not sync the disk (``synchronous=NORMAL`` for it alone): it survives the
        daemon's crash at once, and a power cut from the next synced commit on (the WAL is synced to its end, these
        pages with it). Only for marks that a start makes again when a power cut takes them back: delivered
        (published again), released (settled again), calibration rows forgotten (applied again; the store skips
        batches it has, and had them synced before the mark was made)."""
        with _converted(what):
            if not synced:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with immediate(self._db):
                    yield
            finally:
                if not synced:
                    self._db.execute("PRAGMA synchronous=FULL")


def _summary_ids(events: Sequence[EventRow]) -> dict[tuple[str, str, str], str]:
    """(tool_id, lot_id, wafer_id) -> summary_id of the wafer summaries among ``events``."""
    found = {}
    for e in events:
        if e.decision == WAFER:
            body = json.loads(e.payload)
            key = tuple(body.get(k) for k in ("tool_id", "lot_id", "wafer_id"))
            if all(isinstance(k, str) for k in key):
                found[cast(tuple[str, str, str], key)] = e.event_id
    return found


@contextmanager
def _converted(what: str) -> Iterator[None]:
    """The outbox's error boundary: ``sqlite3.Error`` leaves as ``OutboxError("cannot <what>: ...")``."""
    try:
        yield
    except sqlite3.Error as err:
        raise OutboxError(f"cannot {what}: {err}") from err
