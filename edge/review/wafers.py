"""The wafers as the daemon's outbox holds them, read-only, for the review pages: each summarised wafer's map (its
dies, folded at the summary) with its summary event (clusters, signature, severity), and the dies so far of a
wafer still open. The daemon owns the file; the service opens it read-only (SQLite WAL lets it read beside the
writer) and an outbox not written yet reads as no wafers.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.flow import WAFER
from edge.review.pictures import Die

WaferKey = tuple[str, str, str]  # (tool_id, lot_id, wafer_id)


@dataclass(frozen=True)
class WaferView:
    key: WaferKey
    recipe_id: str
    dies: list[Die]
    summary: dict[str, Any] | None  # the wafer summary event; None while the wafer is open or once pruned

    @property
    def clusters(self) -> list[list[int]]:
        return [c["bbox"] for c in (self.summary or {}).get("clusters", [])]


class WaferBook:
    def __init__(self, outbox: Path) -> None:
        self._path = outbox
        self._db: sqlite3.Connection | None = None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._db is None:
            if not self._path.exists():
                return []
            self._db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):  # an outbox from before wafer maps: nothing summarised to show
                return []
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def recent(self, limit: int = 20, tool: str | None = None) -> list[WaferView]:
        """The last ``limit`` summarised wafers, newest first (of ``tool`` when given)."""
        sql = "SELECT tool_id, lot_id, wafer_id, recipe_id, summary_id, dies FROM wafer_maps"
        args: tuple[Any, ...] = ()
        if tool:
            sql, args = sql + " WHERE tool_id = ?", (tool,)
        rows = self._query(sql + " ORDER BY recorded_at DESC LIMIT ?", (*args, limit))
        summaries = self._summaries([r[4] for r in rows if r[4]])
        return [WaferView((r[0], r[1], r[2]), r[3], _dies(r[5]), summaries.get(r[4])) for r in rows]

    def wafer(self, key: WaferKey) -> WaferView | None:
        """One wafer: summarised (its map and summary) or still open (its dies so far); None when unknown."""
        rows = self._query("SELECT recipe_id, summary_id, dies FROM wafer_maps WHERE tool_id = ? AND lot_id = ? "
                           "AND wafer_id = ?", key)  # fmt: skip
        if rows:
            recipe, summary_id, dies = rows[0]
            return WaferView(key, recipe, _dies(dies), self._summaries([summary_id]).get(summary_id))
        open_dies = self._query("SELECT x, y, decision, defect_class, recipe_id FROM wafer_dies WHERE tool_id = ? "
                                "AND lot_id = ? AND wafer_id = ? ORDER BY seq", key)  # fmt: skip
        if not open_dies:
            return None
        return WaferView(key, open_dies[-1][4], [Die(*d[:4]) for d in open_dies], None)

    def _summaries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT event_id, payload FROM events WHERE decision = ? AND event_id IN ({marks})",
                           (WAFER, *ids))  # fmt: skip
        return {event_id: json.loads(payload) for event_id, payload in rows}


def _dies(text: str) -> list[Die]:
    return [Die(int(x), int(y), str(decision), cls) for x, y, decision, cls in json.loads(text)]
