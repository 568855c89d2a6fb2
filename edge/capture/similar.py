"""The similar-defect index: "where have we seen a die like this before?" over the captures' embeddings.

Each kept capture has one 128-d embedding (the classifier's pooled representation). The index answers, for an
event's or an uploaded image's embedding, the ``k`` kept captures most alike by cosine similarity: vectors are
L2-normalised on the way in and compared by inner product. Capture ids (strings) map to faiss int64 labels here;
labels are never reused, so a label can never name another capture.

Two index types, switched by size:

- up to ``EXACT_MAX`` (4,096) vectors, exact search (``IndexFlatIP`` under ``IndexIDMap2``): a small station gets
  exact answers, and below this size exact search costs under a millisecond anyway.
- above it, IVF-Flat (``IndexIVFFlat``, inner product): ``nlist`` coarse cells, the power of two nearest √n (1,024
  at 10^6, never under ``TRAIN_PER_CELL`` vectors a cell), trained by k-means on at most ``TRAIN_PER_CELL`` vectors
  a cell; a query scans the ``nprobe`` (32) nearest cells. The index is retrained from its own vectors when its size
  leaves [t/4, 4t] of the size t it was trained at (so ``nlist`` follows √n within 2x, and retraining costs O(1)
  amortised per add); it goes back to exact search when removals take it under ``EXACT_MAX`` / 2, or when such a
  retraining finds ``EXACT_MAX`` vectors or fewer.

Why IVF-Flat and not HNSW (``python -m tools.bench.similar --hnsw``: synthetic clustered embeddings, 2 cores, quiet
host, faiss 1.15.1): captures are pruned all the time (byte quota, retention), so removal is the everyday case.
IVF removes exactly and at once (``remove_ids``: 6 ms for a batch of 1,000 ids at 10^6). HNSW cannot remove at
all: it would need tombstones filtered at query time and a full rebuild whenever they pass a fraction, and the
rebuild is its weak point: HNSW (M=32, efConstruction=40) took 89 s to build 10^6 vectors on 2 threads against
7.4 s for IVF-Flat (k-means, adds and the id map), and 748 MB against 518 MB. At 10^6, nprobe=32 gives recall@10
0.992 against exact search (HNSW at efSearch=64: 0.989) with single-query p50 1.6 ms and p99 under 2 ms on one
thread; HNSW answers faster (p50 0.3 ms), but both are far under what a user notices.

faiss runs its loops on OpenMP threads; their number is process-wide and is set in one place, ``use_threads``,
from the ``threads`` argument (default 1: the daemon's cores belong to the data path). An instance is safe to share
between threads (one lock); its calls block, so the daemon runs them off its event loop.
"""

from __future__ import annotations

import json
import math
import os
import threading
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from edge.errors import CaptureError

DIM = 128
EXACT_MAX = 4096  # up to this many vectors: exact search
NPROBE = 32  # coarse cells scanned per query: recall@10 0.99 at 10^6 on the bench's clustered embeddings
TRAIN_PER_CELL = 64  # k-means sample per coarse cell (faiss warns under 39)
RETRAIN_FACTOR = 4  # retrain when the size leaves [trained / 4, trained x 4]
FORMAT = 1  # of the saved file
_SEED = 1234  # training sample and k-means: the same vectors give the same index

Float32Array = npt.NDArray[np.float32]


class SimilarIndexError(CaptureError):
    """The similar-defect index cannot take a vector or answer a query, or its file cannot be read or written."""


class SimilarIndexFileError(SimilarIndexError):
    """An index file is missing, truncated, corrupt, or for another dimension or model."""


class SimilarIndexInputError(SimilarIndexError):
    """A vector, an id or ``k`` is invalid: wrong shape, not finite, zero, or ``k`` under 1."""


def use_threads(threads: int) -> None:
    """The one place that sets faiss's OpenMP thread count (process-wide)."""
    if threads < 1:
        raise SimilarIndexInputError(f"threads must be at least 1, got {threads}")
    faiss.omp_set_num_threads(threads)


def _nlist(n: int) -> int:
    """Coarse cells for ``n`` vectors: the power of two nearest √n, with at least ``TRAIN_PER_CELL`` vectors a cell."""
    return max(1, min(1 << round(math.log2(max(n, 1)) / 2), n // TRAIN_PER_CELL))


def _unit_rows(vectors: npt.ArrayLike, dim: int) -> Float32Array:
    """``vectors`` as a C-contiguous (n, dim) float32 array of unit rows; a clear error for anything else."""
    try:
        array = np.array(vectors, dtype=np.float32, ndmin=2)
    except (TypeError, ValueError) as e:
        raise SimilarIndexInputError(f"vectors must be numbers: {e}") from e
    if array.ndim != 2 or array.shape[1] != dim:
        raise SimilarIndexInputError(f"vectors must have shape (n, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(array).all():
        raise SimilarIndexInputError(f"{int((~np.isfinite(array)).any(axis=1).sum())} vector(s) hold NaN or inf")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms <= 1e-12).any():
        raise SimilarIndexInputError(f"{int((norms <= 1e-12).sum())} vector(s) are zero: no direction to compare")
    return np.ascontiguousarray(array / norms, dtype=np.float32)


class SimilarIndex:
    """Capture ids and their embeddings; ``search`` gives the most similar kept captures."""

    def __init__(self, dim: int = DIM, *, model: str = "", threads: int = 1, exact_max: int = EXACT_MAX,
                 nprobe: int = NPROBE) -> None:  # fmt: skip
        if dim < 1 or exact_max < 1 or nprobe < 1:
            raise SimilarIndexInputError(f"dim, exact_max and nprobe must be positive: {dim}, {exact_max}, {nprobe}")
        use_threads(threads)
        self.dim = dim
        self.model = model  # the model whose embeddings these are: another model's are not comparable
        self.exact_max = exact_max
        self.nprobe = nprobe
        self._lock = threading.Lock()
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._trained_at = 0  # the size the IVF index was trained at; 0 while exact
        self._index: faiss.IndexIDMap2 | faiss.IndexIVFFlat = self._exact_index()

    @classmethod
    def build(cls, ids: Sequence[str], vectors: npt.ArrayLike, dim: int = DIM, *, model: str = "", threads: int = 1,
              exact_max: int = EXACT_MAX, nprobe: int = NPROBE) -> SimilarIndex:  # fmt: skip
        """A new index of ``ids`` and their ``vectors`` (what the capture store keeps), trained once on all of them."""
        index = cls(dim, model=model, threads=threads, exact_max=exact_max, nprobe=nprobe)
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, capture_id: object) -> bool:
        return capture_id in self._label_of

    @property
    def exact(self) -> bool:
        """Whether searches are exact (small index) or approximate (IVF)."""
        return self._trained_at == 0

    @property
    def nlist(self) -> int:
        """The IVF index's coarse cells; 0 while exact."""
        return int(self._index.nlist) if isinstance(self._index, faiss.IndexIVFFlat) else 0

    def add(self, ids: Sequence[str], vectors: npt.ArrayLike) -> int:
        """Add captures; an id already present (or repeated in ``ids``) changes nothing. Returns how many were new."""
        unit = _unit_rows(vectors, self.dim)
        if len(ids) != len(unit):
            raise SimilarIndexInputError(f"{len(ids)} ids for {len(unit)} vectors")
        if not all(isinstance(i, str) and i for i in ids):
            raise SimilarIndexInputError("capture ids must be non-empty strings")
        with self._lock:
            rows: dict[str, int] = {}
            for row, capture_id in enumerate(ids):
                if capture_id not in self._label_of and capture_id not in rows:
                    rows[capture_id] = row
            if not rows:
                return 0
            labels = np.arange(self._next_label, self._next_label + len(rows), dtype=np.int64)
            self._next_label += len(rows)
            for capture_id, label in zip(rows, labels.tolist()):
                self._label_of[capture_id] = label
                self._id_of[label] = capture_id
            new = unit[np.fromiter(rows.values(), dtype=np.int64, count=len(rows))]
            limit = self.exact_max if self.exact else self._trained_at * RETRAIN_FACTOR
            if len(self) > limit:  # outgrown: retrain for the new size with the new vectors in the sample
                old_labels, old_vectors = self._contents()
                self._retrain(np.concatenate([old_labels, labels]), np.concatenate([old_vectors, new]))
            else:
                self._index.add_with_ids(new, labels)
            return len(rows)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove captures (pruned from the store); unknown ids are ignored. Returns how many were removed."""
        with self._lock:
            labels = [self._label_of.pop(i) for i in set(ids) if i in self._label_of]
            if not labels:
                return 0
            for label in labels:
                del self._id_of[label]
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(labels, dtype=np.int64))))
            if removed != len(labels):
                raise SimilarIndexError(f"faiss removed {removed} of {len(labels)} vectors: the id map is out of step")
            if not self.exact and (len(self) <= self.exact_max // 2 or len(self) < self._trained_at / RETRAIN_FACTOR):
                self._retrain(*self._contents())
            return len(labels)

    def search(self, vector: npt.ArrayLike, k: int) -> list[tuple[str, float]]:
        """The ``k`` kept captures most similar to ``vector``, most similar first, as (capture id, cosine)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SimilarIndexInputError(f"k must be a positive integer, got {k!r}")
        query = _unit_rows(vector, self.dim)
        if len(query) != 1:
            raise SimilarIndexInputError(f"search takes one vector, got {len(query)}")
        with self._lock:
            k = min(k, len(self))
            if k == 0:
                return []
            similarities, labels = self._index.search(query, k)
            return [(self._id_of[label], float(s))
                    for s, label in zip(similarities[0].tolist(), labels[0].tolist()) if label >= 0]  # fmt: skip

    def save(self, path: Path | str) -> None:
        """Write the index and its id map to ``path`` as one file, atomically: a crash leaves the old file or none."""
        target = Path(path)
        with self._lock:
            ids = list(self._label_of)
            encoded = [i.encode() for i in ids]
            arrays = {
                "meta": np.array(json.dumps({"format": FORMAT, "dim": self.dim, "model": self.model,
                                             "trained_at": self._trained_at, "next_label": self._next_label})),
                "index": faiss.serialize_index(self._index),
                "labels": np.fromiter((self._label_of[i] for i in ids), dtype=np.int64, count=len(ids)),
                "ids_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
                "ids_end": np.cumsum([len(e) for e in encoded], dtype=np.int64),
            }  # fmt: skip
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except OSError as e:
            temporary.unlink(missing_ok=True)
            raise SimilarIndexFileError(f"cannot write the similar-defect index {target}: {e}") from e
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: Path | str, dim: int = DIM, *, model: str | None = None, threads: int = 1,
             exact_max: int = EXACT_MAX, nprobe: int = NPROBE) -> SimilarIndex:  # fmt: skip
        """The index saved at ``path``; ``SimilarIndexFileError`` if it is unreadable or for another dim or model."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                blob, labels = data["index"], data["labels"]
                ids_utf8, ids_end = data["ids_utf8"].tobytes(), data["ids_end"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise SimilarIndexFileError(f"cannot read the similar-defect index {path}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SimilarIndexFileError(f"{path}: not a similar-defect index of format {FORMAT}")
        if meta["dim"] != dim or (model is not None and meta["model"] != model):
            raise SimilarIndexFileError(f"{path} holds {meta['dim']}-d embeddings of model {meta['model']!r}, "
                                        f"wanted {dim}-d of {model!r}")  # fmt: skip
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
        except RuntimeError as e:
            raise SimilarIndexFileError(f"{path}: the faiss index is corrupt: {e}") from e
        starts = np.concatenate([[0], ids_end[:-1]]).tolist()
        try:
            ids = [ids_utf8[a:b].decode() for a, b in zip(starts, ids_end.tolist())]
        except UnicodeDecodeError as e:
            raise SimilarIndexFileError(f"{path}: the id map is corrupt: {e}") from e
        exact = meta["trained_at"] == 0
        kind = faiss.IndexIDMap2 if exact else faiss.IndexIVFFlat
        if (index.d != dim or index.ntotal != len(ids) or len(labels) != len(ids) or not isinstance(index, kind)
                or index.metric_type != faiss.METRIC_INNER_PRODUCT):  # fmt: skip
            raise SimilarIndexFileError(f"{path}: the faiss index ({index.ntotal} x {index.d}) and the id map "
                                        f"({len(ids)} ids) do not match")  # fmt: skip
        loaded = cls(dim, model=meta["model"], threads=threads, exact_max=exact_max, nprobe=nprobe)
        loaded._label_of = dict(zip(ids, labels.tolist()))
        loaded._id_of = {label: i for i, label in loaded._label_of.items()}
        if len(loaded._label_of) != len(ids) or len(loaded._id_of) != len(ids):
            raise SimilarIndexFileError(f"{path}: the id map repeats an id or a label")
        loaded._next_label = int(meta["next_label"])
        loaded._trained_at = int(meta["trained_at"])
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = nprobe
        loaded._index = index
        return loaded

    def _exact_index(self) -> faiss.IndexIDMap2:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _contents(self) -> tuple[npt.NDArray[np.int64], Float32Array]:
        """Every (label, unit vector) the faiss index holds, read back from it (no second copy is kept)."""
        index = self._index
        if isinstance(index, faiss.IndexIDMap2):
            labels = faiss.vector_to_array(index.id_map).astype(np.int64)
            return labels, np.asarray(index.index.reconstruct_n(0, index.ntotal), dtype=np.float32)
        lists = index.invlists
        assert lists is not None  # an IVF index always has its lists
        label_parts, vector_parts = [np.empty(0, np.int64)], [np.empty((0, self.dim), np.float32)]
        for cell in range(index.nlist):
            size = lists.list_size(cell)
            if size:
                label_parts.append(faiss.rev_swig_ptr(lists.get_ids(cell), size).astype(np.int64))
                codes = faiss.rev_swig_ptr(lists.get_codes(cell), size * lists.code_size).copy()
                vector_parts.append(codes.view(np.float32).reshape(size, self.dim))
        return np.concatenate(label_parts), np.concatenate(vector_parts)

    def _retrain(self, labels: npt.NDArray[np.int64], vectors: Float32Array) -> None:
        """Replace the faiss index by one made for this many vectors: exact when small, else IVF trained on them."""
        index: faiss.IndexIDMap2 | faiss.IndexIVFFlat
        if len(vectors) <= self.exact_max:
            index = self._exact_index()
            self._trained_at = 0
        else:
            nlist = _nlist(len(vectors))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = _SEED
            index.cp.niter = 10
            sample = min(len(vectors), nlist * TRAIN_PER_CELL)
            rows = np.random.default_rng(_SEED).choice(len(vectors), size=sample, replace=False)
            index.train(vectors[np.sort(rows)])
            index.nprobe = self.nprobe
            self._trained_at = len(vectors)
        index.add_with_ids(vectors, labels)
        self._index = index
