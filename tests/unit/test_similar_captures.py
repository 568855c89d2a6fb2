"""Similar-defect search over a real capture store: embeddings kept with their captures, one index per classifier
version's space, saved beside the store and followed incrementally, forgotten captures dropped."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.capture.record import Capture, capture_of
from edge.capture.similar_search import FOLDER, STATE, SimilarCaptures
from edge.capture.store import CaptureStore, embedding_space
from edge.flow import Frame, FrameHeader, Outcome, Tensors, Verdict

DAY = 86400.0
CENTRES = np.random.default_rng(0).normal(size=(4, 128)).astype(np.float32)  # four kinds of die


def _capture(i: int, kind: int, digest: str = "d1", ts: float | None = None) -> Capture:
    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    header = FrameHeader(f"f{i}", "AOI-01", "R1", f"L{kind}", "W1", (i, 0), 0.0, "png", None, None, None)
    verdict = Verdict("DEFECT", f"K{kind}", 0.9, 0.5, "REJECT", False, False, ((f"K{kind}", 0.9),))
    embedding = CENTRES[kind] + 0.05 * rng.normal(size=128).astype(np.float32)
    outcome = Outcome(Frame(b"id", header, Tensors(rgb, rgb[:1]), 0.0, 1.0, 0.0), verdict, 0.1,
                      digests={"classifier": digest}, embedding=embedding)  # fmt: skip
    return capture_of(outcome, f"C{i}", "DEFECT", {"classifier": "1"}, time.time() if ts is None else ts)


def _store(tmp_path: Path, tombstone_s: float = 90 * DAY) -> CaptureStore:
    return CaptureStore(tmp_path / "captures", 10**9, 30 * DAY, tombstone_s)


def test_the_nearest_captures_are_of_the_same_kind_and_never_the_query_itself(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write([_capture(i, i % 4) for i in range(40)])
    space, vector = store.embedding("C5") or ("", np.zeros(0))
    assert space == "d1" and vector.shape == (128,) and vector.dtype == np.float32
    search = SimilarCaptures(store)
    hits = search.like_capture("C5", 5)
    assert hits is not None and len(hits) == 5
    assert all(h.capture.capture_id != "C5" and h.capture.defect_class == "K1" for h in hits)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    assert 0.9 < hits[0].similarity <= 1.0 and hits[0].summary()["lot_id"] == "L1"
    assert search.like_capture("C-none", 5) is None


def test_each_classifier_version_is_searched_in_its_own_space(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write([_capture(i, 0, digest="old") for i in range(10)] + [_capture(i, 0, "new") for i in range(10, 20)])
    search = SimilarCaptures(store)
    search.sync()
    assert search.spaces == {"old": 10, "new": 10}
    hits = search.like_capture("C3", 50)
    assert hits is not None and len(hits) == 9 and all(int(h.capture.capture_id[1:]) < 10 for h in hits)
    assert embedding_space({"models": {"classifier": "4"}}) == "version 4"  # no digest recorded


def test_the_index_follows_the_store_is_saved_and_comes_back_without_a_rebuild(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write([_capture(i, i % 4) for i in range(20)])
    search = SimilarCaptures(store)
    assert search.sync() == 20 and search.sync() == 0
    store.write([_capture(i, i % 4) for i in range(20, 30)])
    assert search.sync() == 10, "only what was written since is read"
    store.write([_capture(5, 1)])  # a capture written again changes nothing
    assert search.sync() == 0
    before = [(h.capture.capture_id, round(h.similarity, 5)) for h in search.like_capture("C2", 6) or []]
    search.save()
    again = SimilarCaptures(store)
    assert again.spaces == {"d1": 30} and again.sync() == 0, "loaded from its files, nothing read again"
    assert [(h.capture.capture_id, round(h.similarity, 5)) for h in again.like_capture("C2", 6) or []] == before
    (store.root / FOLDER / STATE).write_text("{not json")
    rebuilt = SimilarCaptures(store)
    assert rebuilt.sync() == 30 and rebuilt.spaces == {"d1": 30}, "an unreadable state: rebuilt from the store"


def test_captures_the_store_forgot_leave_the_index(tmp_path: Path) -> None:
    store = _store(tmp_path, tombstone_s=1.0)
    old = time.time() - 60 * DAY
    store.write([_capture(i, 2, ts=old) for i in range(5)] + [_capture(i, 2) for i in range(5, 10)])
    search = SimilarCaptures(store)
    search.sync()
    store.prune()  # the old five go past the retention (tombstones) ...
    hits = search.like_capture("C7", 9) or []
    assert {h.capture.capture_id for h in hits if h.capture.gone} == {f"C{i}" for i in range(5)}
    assert store.prune(time.time() + 10)["forgotten"] == 5  # ... and then are forgotten, embeddings with them
    assert store.embedding("C1") is None
    hits = search.like_capture("C7", 9) or []
    assert {h.capture.capture_id for h in hits} == {"C5", "C6", "C8", "C9"}
    assert search.spaces == {"d1": 5}


def test_a_capture_without_an_embedding_is_kept_and_simply_not_searchable(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plain = replace(_capture(1, 0), embedding=None)
    store.write([plain, _capture(2, 0)])
    assert store.get("C1") is not None and store.embedding("C1") is None
    search = SimilarCaptures(store)
    assert search.like_capture("C1", 3) is None
    hits = search.like_capture("C2", 3)
    assert hits == [], "C2 alone has an embedding: nothing else to find"
