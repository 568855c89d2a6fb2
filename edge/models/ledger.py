"""The model lifecycle's durable record (SQLite): the route in force, the answer to every command by its id, and an
append-only audit trail of who changed what serves, when and why. Blocking: the daemon calls it on its database
thread."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.models.served import Route

_SCHEMA = """
CREATE TABLE IF NOT EXISTS route (id INTEGER PRIMARY KEY CHECK (id = 1), route TEXT NOT NULL, previous TEXT,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, result TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    version TEXT, previous TEXT, reason TEXT NOT NULL, command_id TEXT, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows cannot change'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows cannot be deleted'); END;
"""


class LedgerError(EdgeError):
    pass


@dataclass(frozen=True)
class AuditRow:
    ts: float
    who: str
    action: str
    version: str | None
    previous: str | None
    reason: str
    command_id: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "by": self.who, "action": self.action, "version": self.version,
                "previous": self.previous, "reason": self.reason, "command_id": self.command_id,
                "detail": self.detail}  # fmt: skip


class Ledger:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise LedgerError(f"model ledger {path}: {err}") from err

    def close(self) -> None:
        self._db.close()

    def route(self) -> tuple[Route, str | None] | None:
        """The route in force and the version live before it, or None before the first."""
        row = self._db.execute("SELECT route, previous FROM route WHERE id = 1").fetchone()
        return None if row is None else (Route.from_json(json.loads(row[0])), row[1])

    def answered(self, command_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM commands WHERE command_id = ?", (command_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def record(self, route: Route | None, previous: str | None, audit: AuditRow | None, command_id: str | None,
               result: dict[str, Any] | None) -> None:  # fmt: skip
        """In one transaction: the new route (None: unchanged), its audit row, the command's answer."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if route is not None:
                    self._db.execute(
                        "INSERT INTO route (id, route, previous, updated_at) VALUES (1, ?, ?, ?) ON CONFLICT (id) "
                        "DO UPDATE SET route = excluded.route, previous = excluded.previous, "
                        "updated_at = excluded.updated_at",
                        (json.dumps(route.to_json()), previous, self._clock()),
                    )
                if audit is not None:
                    self._db.execute(
                        "INSERT INTO audit (ts, who, action, version, previous, reason, command_id, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (audit.ts, audit.who, audit.action, audit.version, audit.previous, audit.reason,
                         audit.command_id, json.dumps(audit.detail, sort_keys=True)),
                    )  # fmt: skip
                if command_id is not None and result is not None:
                    self._db.execute(
                        "INSERT OR IGNORE INTO commands (command_id, result, ts) VALUES (?, ?, ?)",
                        (command_id, json.dumps(result), self._clock()),
                    )
        except sqlite3.Error as err:
            raise LedgerError(f"model ledger: {err}") from err

    def audit(self, limit: int = 50) -> list[AuditRow]:
        """The most recent audit rows, newest first."""
        rows = self._db.execute(
            "SELECT ts, who, action, version, previous, reason, command_id, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [AuditRow(ts, who, action, version, previous, reason, command_id, json.loads(detail))
                for ts, who, action, version, previous, reason, command_id, detail in rows]  # fmt: skip


def read_route(path: Path) -> Route | None:
    """The route a daemon's ledger holds (for another process: the review service), or None."""
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT route FROM route WHERE id = 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return None if row is None else Route.from_json(json.loads(row[0]))
