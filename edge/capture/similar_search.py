"""Similar-defect search over a capture store: "where have we seen a die like this before?"

One ``SimilarIndex`` (``edge.capture.similar``) per embedding space (``edge.capture.store.embedding_space``: the
classifier version that made the embeddings; another version's are not comparable), kept up with the store by
reading only the embeddings written since the last look (``CaptureStore.embeddings_after``), and saved beside the
store so a restart does not rebuild it:

    <store>/similar/state.json        the last embedding read, and each space's index file and dimension
    <store>/similar/<space>.npz       an index (``SimilarIndex.save``: written whole, renamed into place)

A hit whose capture the store has since forgotten leaves the index at that query. An index file that cannot be read
is rebuilt from the store. Blocking calls: callers run them off their event loop (the review service on its store
thread).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.capture.similar import SimilarIndex, SimilarIndexFileError
from edge.capture.store import CaptureStore, Stored
from edge.errors import CaptureError
from edge.ops.logs import get

log = get("edge.capture.similar")

FOLDER = "similar"
STATE = "state.json"
SAVE_EVERY = 4096  # embeddings added between saves (and on close)
READ_CHUNK = 65536


@dataclass(frozen=True)
class Hit:
    """A capture like the one asked about, with its similarity (cosine, 1 = the same direction)."""

    similarity: float
    capture: Stored

    def summary(self) -> dict[str, Any]:
        c = self.capture
        return {"capture_id": c.capture_id, "event_id": c.event_id, "similarity": round(self.similarity, 4),
                "ts": c.ts, "tool_id": c.tool_id, "recipe_id": c.recipe_id, "lot_id": c.lot_id,
                "wafer_id": c.wafer_id, "die": list(c.die), "decision": c.decision, "defect_class": c.defect_class,
                "confidence": c.confidence, "reason": c.reason,
                "gone": None if c.gone is None else c.gone_detail}  # fmt: skip


class SimilarCaptures:
    """The captures of ``store`` searchable by embedding (see the module's description)."""

    def __init__(self, store: CaptureStore, threads: int = 1) -> None:
        self.store = store
        self.threads = threads
        self.folder = store.root / FOLDER
        self._indexes: dict[str, SimilarIndex] = {}
        self._seq = 0
        self._unsaved = 0
        try:
            self.folder.mkdir(exist_ok=True)
            self._load()
        except (OSError, ValueError, SimilarIndexFileError) as err:
            log.warning("similar_index_rebuilt", reason=str(err))
            self._indexes, self._seq = {}, 0

    @property
    def spaces(self) -> dict[str, int]:
        """Each embedding space and how many captures its index holds."""
        return {space: len(index) for space, index in self._indexes.items()}

    def sync(self) -> int:
        """Add what the store wrote since the last look; how many embeddings were added."""
        added = 0
        while True:
            batch = self.store.embeddings_after(self._seq, READ_CHUNK)
            if not batch.capture_ids:
                break
            by_space: dict[str, tuple[list[str], list[npt.NDArray[np.float32]]]] = {}
            for cid, space, vector in zip(batch.capture_ids, batch.spaces, batch.vectors, strict=True):
                if np.isfinite(vector).all() and np.any(vector):
                    ids, vectors = by_space.setdefault(space, ([], []))
                    ids.append(cid)
                    vectors.append(vector)
            for space, (ids, vectors) in by_space.items():
                index = self._indexes.get(space)
                if index is None or index.dim != len(vectors[0]):
                    index = self._indexes[space] = SimilarIndex(len(vectors[0]), model=space, threads=self.threads)
                same = [i for i, v in enumerate(vectors) if len(v) == index.dim]
                added += index.add([ids[i] for i in same], np.stack([vectors[i] for i in same]))
            self._seq = batch.seq
        self._unsaved += added
        if self._unsaved >= SAVE_EVERY:
            self.save()
        return added

    def like_capture(self, capture_id: str, k: int) -> list[Hit] | None:
        """The ``k`` captures most like ``capture_id`` (itself left out); None when it has no embedding."""
        found = self.store.embedding(capture_id)
        if found is None:
            return None
        space, vector = found
        return self.like(space, vector, k, exclude=capture_id)

    def like(self, space: str, vector: npt.NDArray[np.float32], k: int, exclude: str | None = None) -> list[Hit]:
        """The ``k`` captures of ``space`` most like ``vector``."""
        self.sync()
        index = self._indexes.get(space)
        if index is None or len(vector) != index.dim:
            return []
        pairs = [(cid, s) for cid, s in index.search(vector, k + (exclude is not None)) if cid != exclude][:k]
        known = {c.capture_id: c for c in self.store.facts([cid for cid, _ in pairs])}
        forgotten = [cid for cid, _ in pairs if cid not in known]
        if forgotten:
            index.remove(forgotten)
        return [Hit(s, known[cid]) for cid, s in pairs if cid in known]

    def save(self) -> None:
        """Write every index and then the state that names them (a crash between leaves an older state: the
        embeddings read since are read again, and adding an id twice changes nothing)."""
        try:
            files = {}
            for space, index in self._indexes.items():
                name = hashlib.sha256(space.encode()).hexdigest()[:16] + ".npz"
                index.save(self.folder / name)
                files[space] = {"file": name, "dim": index.dim}
            tmp = self.folder / (STATE + ".tmp")
            tmp.write_text(json.dumps({"seq": self._seq, "spaces": files}))
            os.replace(tmp, self.folder / STATE)
        except OSError as err:
            raise CaptureError(f"cannot save the similar-defect index in {self.folder}: {err}") from err
        self._unsaved = 0

    def _load(self) -> None:
        state_file = self.folder / STATE
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        indexes = {space: SimilarIndex.load(self.folder / str(saved["file"]), int(saved["dim"]), model=space,
                                            threads=self.threads)
                   for space, saved in dict(state["spaces"]).items()}  # fmt: skip
        self._indexes, self._seq = indexes, int(state["seq"])
