"""The capture store: the dies kept for review, bounded by bytes and by age.

    <root>/captures.sqlite                 the index: every fact of a capture, its heatmap and attention (float16)
    <root>/images/<YYYY-MM-DD>/<id>.png    the die as the models saw it (RGB, lossless)

The classifier's embedding of a capture (float16, where the served classifier has one) sits in its own table,
numbered in write order (``seq``) so a search index can follow the store by reading only what is new
(``embeddings_after``); it goes with the capture's row, when its tombstone is forgotten.

A capture is written whole or not at all: its PNG goes to a temporary name, is flushed to disk and renamed, and only
then is its row committed (a crash leaves at most an orphan file, which ``prune`` removes). Writing a capture id
again changes nothing, so a batch written twice counts once. When the kept bytes pass ``max_bytes`` the oldest
captures go first; a capture older than ``retention_s`` goes at the next prune. A capture that goes keeps its row
as a tombstone (why and when it went, no pixels) for ``tombstone_s``, so a reader can answer "gone, and why"
(410) instead of "never existed" (404). Blocking calls: the daemon runs them on the store's own thread, the review
service reads the same file (SQLite WAL).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from edge import png
from edge.capture.record import Capture, CaptureFacts
from edge.errors import CaptureError
from edge.ops.transaction import immediate

INDEX = "captures.sqlite"
HEATMAP_SHAPE = (32, 32)

# Why a capture is no longer kept: by age, by the byte quota, never written (the daemon stopped between recording
# its event and writing it), its write failed, or it was given up with the write queue full.
GONE_REASONS = {
    "retention": "older than the capture retention",
    "quota": "the oldest capture when the store reached its byte quota",
    "not_written": "the daemon stopped before the capture was written",
    "write_failed": "the capture could not be written",
    "queue_full": "the capture queue was full (the disk did not keep up) and the capture was given up",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    capture_id   TEXT PRIMARY KEY,
    event_id     TEXT,
    reason       TEXT NOT NULL,
    ts           REAL NOT NULL,
    tool_id      TEXT NOT NULL,
    recipe_id    TEXT NOT NULL,
    lot_id       TEXT NOT NULL,
    wafer_id     TEXT NOT NULL,
    die_x        INTEGER NOT NULL,
    die_y        INTEGER NOT NULL,
    frame_id     TEXT NOT NULL,
    decision     TEXT NOT NULL,
    defect_class TEXT NOT NULL,
    confidence   REAL NOT NULL,
    threshold    REAL,
    score        REAL NOT NULL,
    band         TEXT NOT NULL,
    facts        TEXT NOT NULL,
    heatmap      BLOB,
    attention    BLOB,
    image        TEXT,
    bytes        INTEGER NOT NULL,
    gone         TEXT,
    gone_at      REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS captures_kept ON captures (ts) WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS captures_gone ON captures (gone_at) WHERE gone IS NOT NULL;
CREATE TABLE IF NOT EXISTS embeddings (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    capture_id TEXT NOT NULL UNIQUE,
    model      TEXT NOT NULL,
    vector     BLOB NOT NULL
);
"""
FILTERS = ("tool_id", "recipe_id", "defect_class", "decision", "lot_id", "wafer_id")  # what a queue filters on
_COLUMNS = ("capture_id", "event_id", "reason", "ts", "tool_id", "recipe_id", "lot_id", "wafer_id", "die_x", "die_y",
            "frame_id", "decision", "defect_class", "confidence", "threshold", "score", "band", "facts", "heatmap",
            "attention", "image", "bytes", "gone", "gone_at")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stored(CaptureFacts):
    """A capture as the index holds it; ``gone`` set (and no pixels) once it was pruned or never written."""

    heatmap: npt.NDArray[np.float32] | None
    attention: npt.NDArray[np.float32] | None
    image: str | None  # the PNG's path under the store's root
    bytes: int
    gone: str | None
    gone_at: float | None

    @property
    def gone_detail(self) -> str | None:
        return None if self.gone is None else GONE_REASONS.get(self.gone, self.gone)

    def summary(self) -> dict[str, Any]:
        """The JSON-able facts (no pixels): what a listing or an API shows."""
        return {
            "capture_id": self.capture_id, "event_id": self.event_id, "reason": self.reason, "ts": self.ts,
            "tool_id": self.tool_id, "recipe_id": self.recipe_id, "lot_id": self.lot_id, "wafer_id": self.wafer_id,
            "die": list(self.die), "frame_id": self.frame_id, "decision": self.decision,
            "defect_class": self.defect_class, "confidence": self.confidence, "threshold": self.threshold,
            "anomaly": {"score": self.score, "band": self.band}, **self.facts, "bytes": self.bytes,
            "gone": None if self.gone is None else {"reason": self.gone, "detail": self.gone_detail,
                                                    "at": self.gone_at},
        }  # fmt: skip


class Flagged(NamedTuple):
    """A kept capture of an event, as a queue lists it."""

    capture_id: str
    event_id: str
    tool_id: str
    decision: str
    defect_class: str


@dataclass(frozen=True)
class Written:
    """One ``write``: captures new to the store, their bytes, and what the quota pushed out."""

    captures: int
    bytes: int
    pruned_for_quota: int


@dataclass(frozen=True)
class Embeddings:
    """Embeddings read in write order: ``seq`` is the last one's number, to read on from."""

    seq: int
    capture_ids: list[str]
    spaces: list[str]  # each one's ``embedding_space``
    vectors: list[npt.NDArray[np.float32]]


def embedding_space(facts: Mapping[str, Any]) -> str:
    """The space a capture's embedding lies in: the digest of the classifier version that made it (versions'
    embeddings are not comparable), its version number where no digest is known."""
    digest = facts.get("model_digests", {}).get("classifier")
    return str(digest or f"version {facts.get('models', {}).get('classifier', '?')}")


def encode_png(rgb: npt.NDArray[np.uint8]) -> bytes:
    """A (3, H, W) RGB die as PNG bytes (``edge.png``); ``CaptureError`` when it is not one."""
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise CaptureError(f"cannot encode a die of shape {rgb.shape} as PNG: not (3, H, W)")
    try:  # the planes interleaved by OpenCV: about 0.01 ms a die, where NumPy's transposed copy takes 0.5
        return png.encode_png(cv2.merge(list(rgb)))
    except (ValueError, cv2.error) as err:
        raise CaptureError(f"cannot encode a die of shape {rgb.shape} as PNG: {err}") from err


def _blob(array: npt.NDArray[np.float32] | None) -> bytes | None:
    return None if array is None else np.asarray(array, np.float16).tobytes()


def _array(blob: bytes | None, shape: tuple[int, ...]) -> npt.NDArray[np.float32] | None:
    return None if blob is None else np.frombuffer(blob, np.float16).astype(np.float32).reshape(shape)


class CaptureStore:
    """Every method raises ``CaptureError`` (never ``sqlite3.Error`` or ``OSError``)."""

    def __init__(self, root: Path, max_bytes: int, retention_s: float, tombstone_s: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self.tombstone_s = tombstone_s
        with _converted(f"open the capture store in {root}"):
            (root / "images").mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(root / INDEX, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._used = int(self._db.execute("SELECT coalesce(sum(bytes), 0) FROM captures WHERE gone IS NULL")
                             .fetchone()[0])  # fmt: skip

    def close(self) -> None:
        with _converted("close the capture store"):
            self._db.close()

    @property
    def used_bytes(self) -> int:
        """Bytes of the captures kept (PNG files and their heatmap and attention)."""
        return self._used

    def write(self, captures: Sequence[Capture]) -> Written:
        """Keep ``captures`` (ids already kept or gone are left as they are), then hold the quota."""
        with _converted("read the capture index"):
            known = {row[0] for row in self._db.execute(
                f"SELECT capture_id FROM captures WHERE capture_id IN ({','.join('?' * len(captures))})",
                [c.capture_id for c in captures],
            )} if captures else set()  # fmt: skip
        fresh = [c for c in captures if c.capture_id not in known]
        rows, written, vectors = [], [], []
        try:
            for capture in fresh:
                relative, size = self._write_image(capture)
                written.append(self.root / relative)
                heatmap, attention = _blob(capture.heatmap), _blob(capture.attention)
                size += len(heatmap or b"") + len(attention or b"")
                vector = _blob(capture.embedding)
                if vector is not None:
                    vectors.append((capture.capture_id, embedding_space(capture.facts), vector))
                size += len(vector or b"")
                rows.append(_row(capture, relative, heatmap, attention, size))
            if written:
                _sync_dirs({path.parent for path in written})
            with self._writing("index captures"):
                self._db.executemany(f"INSERT OR IGNORE INTO captures VALUES ({','.join('?' * len(_COLUMNS))})",
                                     rows)  # fmt: skip
                self._db.executemany(
                    "INSERT OR IGNORE INTO embeddings (capture_id, model, vector) VALUES (?, ?, ?)", vectors
                )
        except BaseException:
            for path in written:  # not indexed: no orphan left behind
                path.unlink(missing_ok=True)
            raise
        added = sum(row[-3] for row in rows)
        self._used += added
        return Written(len(rows), added, self._hold_quota(time.time()))

    def mark_gone(self, capture_ids: Sequence[str], reason: str, facts: Sequence[Capture] = ()) -> None:
        """Record ``capture_ids`` as gone for ``reason`` (a tombstone; ``facts`` give the rows of captures never
        written their facts, without pixels)."""
        now = time.time()
        with self._writing("record gone captures"):
            self._db.executemany(
                f"INSERT OR IGNORE INTO captures VALUES ({','.join('?' * len(_COLUMNS))})",
                [(*_row(c, None, None, None, 0)[:-2], reason, now) for c in facts],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO captures (capture_id, event_id, reason, ts, tool_id, recipe_id, lot_id, "
                "wafer_id, die_x, die_y, frame_id, decision, defect_class, confidence, score, band, facts, bytes, "
                "gone, gone_at) VALUES (?, ?, '', ?, '', '', '', '', 0, 0, '', '', '', 0, 0, '', '{}', 0, ?, ?)",
                [(cid, cid, now, reason, now) for cid in capture_ids],
            )

    def get(self, capture_id: str) -> Stored | None:
        """The capture (kept or a tombstone), or None when the store never had it or has forgotten it."""
        with _converted("read a capture"):
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM captures WHERE capture_id = ?", (capture_id,)
            ).fetchone()
        return None if row is None else self._stored(row)

    def image_bytes(self, stored: Stored) -> bytes:
        """The PNG of a kept capture; ``CaptureError`` when it is gone or its file cannot be read."""
        if stored.image is None:
            raise CaptureError(f"capture {stored.capture_id} is gone: {stored.gone_detail}")
        with _converted(f"read {stored.image}"):
            return (self.root / stored.image).read_bytes()

    def kept_by_reason(self) -> dict[str, int]:
        """How many captures are kept, per reason they were kept for (their bytes: ``used_bytes``)."""
        with _converted("count captures"):
            rows = self._db.execute("SELECT reason, count(*) FROM captures WHERE gone IS NULL GROUP BY reason")
            return {reason: n for reason, n in rows.fetchall()}

    def recent(self, limit: int = 50, reason: str | None = None) -> list[Stored]:
        """The newest kept captures, newest first (``reason``: only those kept for it)."""
        where, args = ("AND reason = ?", [reason]) if reason else ("", [])
        with _converted("list captures"):
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM captures WHERE gone IS NULL {where} ORDER BY ts DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [self._stored(row) for row in rows]

    def flagged(self, where: Mapping[str, str]) -> list[Flagged]:
        """Every kept capture of an event (DEFECT, REVIEW, AUDIT), oldest first, whose columns equal ``where``'s
        values (keys among ``FILTERS``): the few columns a queue sorts and counts by."""
        unknown = set(where) - set(FILTERS)
        if unknown:
            raise ValueError(f"no capture filter {sorted(unknown)}")
        clauses = "".join(f" AND {column} = ?" for column in where)
        with _converted("list flagged captures"):
            rows = self._db.execute(
                "SELECT capture_id, event_id, tool_id, decision, defect_class FROM captures "
                f"WHERE gone IS NULL AND event_id IS NOT NULL{clauses} ORDER BY ts",
                list(where.values()),
            ).fetchall()
        return [Flagged(*row) for row in rows]

    def facts(self, capture_ids: Sequence[str]) -> list[Stored]:
        """The captures ``capture_ids`` that exist, in that order, without their heatmap and attention (a listing)."""
        columns = ", ".join("NULL" if c in ("heatmap", "attention") else c for c in _COLUMNS)
        with _converted("read captures"):
            rows = self._db.execute(
                f"SELECT {columns} FROM captures WHERE capture_id IN ({','.join('?' * len(capture_ids))})",
                list(capture_ids),
            ).fetchall() if capture_ids else []  # fmt: skip
        found = {row[0]: self._stored(row) for row in rows}
        return [found[c] for c in capture_ids if c in found]

    def embedding(self, capture_id: str) -> tuple[str, npt.NDArray[np.float32]] | None:
        """A capture's embedding and the space it lies in (``embedding_space``), or None (no such capture, or its
        classifier had no embedding)."""
        with _converted("read an embedding"):
            row = self._db.execute("SELECT model, vector FROM embeddings WHERE capture_id = ?",
                                   (capture_id,)).fetchone()  # fmt: skip
        return None if row is None else (row[0], np.frombuffer(row[1], np.float16).astype(np.float32))

    def embeddings_after(self, seq: int, limit: int = 65536) -> Embeddings:
        """Up to ``limit`` embeddings written after ``seq``, in write order (nothing new: ``seq`` back, no rows)."""
        with _converted("read embeddings"):
            rows = self._db.execute(
                "SELECT seq, capture_id, model, vector FROM embeddings WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return Embeddings(
            int(rows[-1][0]) if rows else seq,
            [row[1] for row in rows],
            [row[2] for row in rows],
            [np.frombuffer(row[3], np.float16).astype(np.float32) for row in rows],
        )

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Captures past the retention and over the quota go (kept as tombstones), tombstones past theirs are
        forgotten, files no row names are removed. Counts by what was done."""
        now = time.time() if now is None else now
        aged = self._evict("SELECT capture_id, image, bytes FROM captures WHERE gone IS NULL AND ts < ?",
                           (now - self.retention_s,), "retention", now)  # fmt: skip
        quota = self._hold_quota(now)
        with self._writing("forget old tombstones"):
            forgotten = self._db.execute(
                "DELETE FROM captures WHERE gone IS NOT NULL AND gone_at < ?", (now - self.tombstone_s,)
            ).rowcount
            self._db.execute("DELETE FROM embeddings WHERE capture_id NOT IN (SELECT capture_id FROM captures)")
        with _converted("checkpoint the capture index"):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"retention": aged, "quota": quota, "forgotten": forgotten, "orphans": self._remove_orphans(now)}

    # --- inside -------------------------------------------------------------------------------------------------

    def _write_image(self, capture: Capture) -> tuple[str, int]:
        data = capture.png or encode_png(capture.image)
        relative = f"images/{time.strftime('%Y-%m-%d', time.gmtime(capture.ts))}/{capture.capture_id}.png"
        target = self.root / relative
        with _converted(f"write {target}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(target.name + ".tmp")
            with temporary.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        return relative, len(data)

    def _hold_quota(self, now: float) -> int:
        """Evict the oldest kept captures until the kept bytes are within the quota; how many went."""
        if self._used <= self.max_bytes:
            return 0
        with _converted("read the oldest captures"):
            rows = self._db.execute("SELECT capture_id, bytes FROM captures WHERE gone IS NULL ORDER BY ts").fetchall()
        over, chosen = self._used - self.max_bytes, []
        for capture_id, size in rows:
            if over <= 0:
                break
            chosen.append(capture_id)
            over -= size
        marks = ",".join("?" * len(chosen))
        return self._evict(f"SELECT capture_id, image, bytes FROM captures WHERE capture_id IN ({marks})",
                           tuple(chosen), "quota", now) if chosen else 0  # fmt: skip

    def _evict(self, query: str, args: tuple[Any, ...], why: str, now: float) -> int:
        with self._writing(f"prune captures ({why})"):
            rows = self._db.execute(query, args).fetchall()
            self._db.executemany(
                "UPDATE captures SET heatmap = NULL, attention = NULL, image = NULL, gone = ?, gone_at = ? "
                "WHERE capture_id = ?",
                [(why, now, capture_id) for capture_id, _, _ in rows],
            )
        for _, image, _ in rows:  # the rows say gone first: a crash here leaves orphans, never a dangling row
            if image:
                with _converted(f"remove {image}"):
                    (self.root / image).unlink(missing_ok=True)
        self._used -= sum(size for _, _, size in rows)
        return len(rows)

    def _remove_orphans(self, now: float) -> int:
        """PNG files (and temporaries) no kept row names, left by a crash; an hour's grace for writes in flight."""
        with _converted("list kept images"):
            named = {row[0] for row in self._db.execute("SELECT image FROM captures WHERE image IS NOT NULL")}
        removed = 0
        for day in (self.root / "images").iterdir():
            for path in day.iterdir() if day.is_dir() else ():
                relative = path.relative_to(self.root).as_posix()
                if relative not in named and path.stat().st_mtime < now - 3600:
                    path.unlink(missing_ok=True)
                    removed += 1
            if day.is_dir() and not any(day.iterdir()):
                day.rmdir()
        return removed

    def _stored(self, row: tuple[Any, ...]) -> Stored:
        v = dict(zip(_COLUMNS, row, strict=True))
        return Stored(
            capture_id=v["capture_id"], event_id=v["event_id"], reason=v["reason"], ts=v["ts"], tool_id=v["tool_id"],
            recipe_id=v["recipe_id"], lot_id=v["lot_id"], wafer_id=v["wafer_id"], die=(v["die_x"], v["die_y"]),
            frame_id=v["frame_id"], decision=v["decision"], defect_class=v["defect_class"],
            confidence=v["confidence"], threshold=v["threshold"], score=v["score"], band=v["band"],
            facts=json.loads(v["facts"]), heatmap=_array(v["heatmap"], HEATMAP_SHAPE),
            attention=_array(v["attention"], (-1,)), image=v["image"],
            bytes=v["bytes"], gone=v["gone"], gone_at=v["gone_at"],
        )  # fmt: skip

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        with _converted(what), immediate(self._db):
            yield


def _row(capture: Capture, image: str | None, heatmap: bytes | None, attention: bytes | None,
         size: int) -> tuple[Any, ...]:  # fmt: skip
    c = capture
    return (c.capture_id, c.event_id, c.reason, c.ts, c.tool_id, c.recipe_id, c.lot_id, c.wafer_id, c.die[0],
            c.die[1], c.frame_id, c.decision, c.defect_class, c.confidence, c.threshold, c.score, c.band,
            json.dumps(c.facts, separators=(",", ":")), heatmap, attention, image, size, None, None)  # fmt: skip


def _sync_dirs(folders: set[Path]) -> None:
    """Make the renames into ``folders`` durable."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _converted(what: str) -> Iterator[None]:
    """The store's error boundary: SQLite and file-system errors leave as ``CaptureError("cannot <what>: ...")``."""
    try:
        yield
    except (sqlite3.Error, OSError) as err:
        raise CaptureError(f"cannot {what}: {err}") from err
