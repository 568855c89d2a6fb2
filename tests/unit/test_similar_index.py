"""The similar-defect index: exact answers while small, recall against brute force once approximate, ids that are
added once and removed for good, a save that is atomic and a load that refuses a damaged or foreign file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge.capture import similar
from edge.capture.similar import SimilarIndex, SimilarIndexError, SimilarIndexFileError, SimilarIndexInputError
from edge.errors import CaptureError
from tools.bench.similar import clustered_embeddings

Vectors = npt.NDArray[np.float32]


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"cap-{i}" for i in range(start, start + n)]


def _brute_force(vectors: Vectors, query: Vectors, k: int) -> list[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")[:k].tolist()


@pytest.fixture(scope="module")
def clustered() -> Vectors:
    return clustered_embeddings(20_000, seed=3)


@pytest.fixture(scope="module")
def queries() -> Vectors:
    return clustered_embeddings(200, seed=4)


def test_small_index_is_exact_and_finds_a_stored_vector_first(clustered: Vectors) -> None:
    vectors = clustered[:1000]
    index = SimilarIndex.build(_ids(1000), vectors)
    assert index.exact and index.nlist == 0 and len(index) == 1000
    for row in (0, 17, 999):
        answer = index.search(vectors[row], 10)
        assert answer[0][0] == f"cap-{row}"
        assert answer[0][1] == pytest.approx(1.0, abs=1e-5)
        assert [capture_id for capture_id, _ in answer] == [f"cap-{i}" for i in _brute_force(vectors, vectors[row], 10)]


def test_large_index_is_approximate_with_recall_over_0_9_against_brute_force(
    clustered: Vectors, queries: Vectors
) -> None:
    index = SimilarIndex.build(_ids(len(clustered)), clustered)
    assert not index.exact and index.nlist > 0
    unit = clustered / np.linalg.norm(clustered, axis=1, keepdims=True)
    hits = 0
    for query in queries:
        answer = index.search(query, 10)
        assert len(answer) == 10
        similarities = [s for _, s in answer]
        assert similarities == sorted(similarities, reverse=True)
        found = [int(capture_id.split("-")[1]) for capture_id, _ in answer]
        # the similarity reported is the cosine of the stored vector and the query
        np.testing.assert_allclose(similarities, unit[found] @ (query / np.linalg.norm(query)), atol=1e-4)
        hits += len(set(found) & set(_brute_force(clustered, query, 10)))
    assert hits / (10 * len(queries)) >= 0.9


def test_adding_one_at_a_time_crosses_the_switch_and_retrains_as_it_grows(clustered: Vectors) -> None:
    index = SimilarIndex(exact_max=500)
    for start in range(0, 2500, 100):
        assert index.add(_ids(100, start), clustered[start : start + 100]) == 100
        assert index.exact == (start + 100 <= 500)
    first_nlist = index.nlist
    index.add(_ids(9500, 2500), clustered[2500:12_000])  # over 4x the size it was last trained at
    assert len(index) == 12_000 and index.nlist > first_nlist
    for row in (0, 499, 2600, 11_999):  # from before the switch, after it, and after the retraining
        assert index.search(clustered[row], 1)[0][0] == f"cap-{row}"


def test_an_id_already_present_changes_nothing() -> None:
    rows = np.eye(128, dtype=np.float32)[:5]  # orthogonal: each vector is similar to itself only
    index = SimilarIndex()
    assert index.add(["a", "b", "a"], rows[:3]) == 2  # repeated within one call: the first is kept
    assert index.add(["a", "c"], rows[3:5]) == 1
    assert len(index) == 3 and "a" in index and "c" in index
    assert index.search(rows[0], 1) == [("a", pytest.approx(1.0, abs=1e-6))]
    for ignored in (rows[2], rows[3]):  # a's vector was not replaced by its repeats
        assert index.search(ignored, 1)[0][1] == pytest.approx(0.0, abs=1e-6)


def test_removed_ids_are_never_returned_and_a_rebuild_after_many_removals_keeps_answers(clustered: Vectors) -> None:
    vectors = clustered[:4000]
    index = SimilarIndex.build(_ids(4000), vectors, exact_max=1000)
    assert not index.exact
    removed = set(_ids(3600))
    assert index.remove([*removed, "never-added"]) == 3600
    assert index.remove(["cap-0"]) == 0 and len(index) == 400
    assert index.exact  # under exact_max / 2: rebuilt as an exact index from the vectors it still held
    for row in (0, 10, 3599, 3600, 3999):
        answer = index.search(vectors[row], 50)
        assert len(answer) == 50 and not removed & {capture_id for capture_id, _ in answer}
    kept = vectors[3600:]
    for row in (0, 200, 399):
        expected = [f"cap-{3600 + i}" for i in _brute_force(kept, kept[row], 10)]
        assert [capture_id for capture_id, _ in index.search(kept[row], 10)] == expected
    index.add(["cap-0"], vectors[:1])  # a removed id can come back (the store wrote it again)
    assert index.search(vectors[0], 1)[0][0] == "cap-0"


def test_removal_from_the_approximate_index_is_immediate_and_shrinking_retrains(
    clustered: Vectors, queries: Vectors
) -> None:
    index = SimilarIndex.build(_ids(20_000), clustered, exact_max=1000)
    index.remove(["cap-5"])
    assert "cap-5" not in index and len(index) == 19_999
    assert "cap-5" not in {capture_id for capture_id, _ in index.search(clustered[5], 20)}
    nlist = index.nlist
    index.remove(_ids(16_000, start=4000))  # a quarter of the size it was trained at: retrained for 4,000
    assert not index.exact and 0 < index.nlist < nlist and len(index) == 3999
    kept = np.array([i for i in range(4000) if i != 5])
    hits = 0
    for query in queries[:50]:
        found = [int(capture_id.split("-")[1]) for capture_id, _ in index.search(query, 10)]
        assert 5 not in found and all(i < 4000 for i in found)
        hits += len(set(found) & set(kept[_brute_force(clustered[kept], query, 10)].tolist()))
    assert hits / 500 >= 0.9


@pytest.mark.parametrize("n", [300, 6000], ids=["exact", "approximate"])
def test_save_then_load_gives_identical_answers(tmp_path: Path, clustered: Vectors, queries: Vectors, n: int) -> None:
    index = SimilarIndex.build(_ids(n), clustered[:n], model="classifier:3")
    index.remove(["cap-1", "cap-2"])
    path = tmp_path / "similar.npz"
    index.save(path)
    assert os.listdir(tmp_path) == ["similar.npz"]  # no temporary file left behind
    loaded = SimilarIndex.load(path, model="classifier:3")
    assert len(loaded) == len(index) and loaded.exact == index.exact and loaded.nlist == index.nlist
    for query in queries[:50]:
        assert loaded.search(query, 10) == index.search(query, 10)
    loaded.add(["new"], clustered[n : n + 1])  # labels go on from where they were: no collision with a stored one
    assert loaded.search(clustered[n], 1)[0][0] == "new"
    assert loaded.search(clustered[0], 1)[0][0] == "cap-0"


def test_a_failed_save_leaves_the_previous_file(
    tmp_path: Path, clustered: Vectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "similar.npz"
    SimilarIndex.build(_ids(10), clustered[:10]).save(path)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(similar.os, "replace", crash)
    with pytest.raises(SimilarIndexFileError, match="disk went away"):
        SimilarIndex.build(_ids(20), clustered[:20]).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["similar.npz"]


def test_a_damaged_or_foreign_file_raises_a_clear_error(tmp_path: Path, clustered: Vectors) -> None:
    path = tmp_path / "similar.npz"
    SimilarIndex.build(_ids(6000), clustered[:6000], model="classifier:3").save(path)
    data = path.read_bytes()
    broken = tmp_path / "broken.npz"
    damaged = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "flipped": data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :],
        "not an index": b"PK\x03\x04" + os.urandom(1000),
    }
    for what, content in damaged.items():
        broken.write_bytes(content)
        with pytest.raises(SimilarIndexFileError):
            SimilarIndex.load(broken)
            pytest.fail(f"{what} file loaded")
    with pytest.raises(SimilarIndexFileError):
        SimilarIndex.load(tmp_path / "missing.npz")
    with pytest.raises(SimilarIndexFileError, match="64-d"):
        SimilarIndex.load(path, dim=64)
    with pytest.raises(SimilarIndexFileError, match="classifier:3"):
        SimilarIndex.load(path, model="classifier:4")
    assert issubclass(SimilarIndexFileError, SimilarIndexError) and issubclass(SimilarIndexError, CaptureError)


def test_bad_inputs_raise_input_errors(clustered: Vectors) -> None:
    index = SimilarIndex.build(_ids(10), clustered[:10])
    nan = clustered[:1].copy()
    nan[0, 5] = np.nan
    bad_adds = {
        "wrong dimension": (["x"], np.ones((1, 64), np.float32)),
        "NaN": (["x"], nan),
        "inf": (["x"], np.full((1, 128), np.inf, np.float32)),
        "zero vector": (["x"], np.zeros((1, 128), np.float32)),
        "ids for another count": (["x", "y"], clustered[:1]),
        "empty id": ([""], clustered[:1]),
        "not numbers": (["x"], [["a"] * 128]),
    }
    for what, (ids, vectors) in bad_adds.items():
        with pytest.raises(SimilarIndexInputError):
            index.add(ids, vectors)
            pytest.fail(f"{what} was added")
    assert len(index) == 10
    for k in (0, -1, 1.5, True):
        with pytest.raises(SimilarIndexInputError, match="k must be"):
            index.search(clustered[0], k)  # type: ignore[arg-type]
    for query in (nan[0], np.zeros(128), np.ones(127), clustered[:2]):
        with pytest.raises(SimilarIndexInputError):
            index.search(query, 5)
    with pytest.raises(SimilarIndexInputError):
        SimilarIndex(threads=0)


def test_an_empty_index_answers_nothing_and_k_over_its_size_answers_all(clustered: Vectors) -> None:
    index = SimilarIndex()
    assert index.search(clustered[0], 10) == []
    index.add(_ids(3), clustered[:3])
    assert {capture_id for capture_id, _ in index.search(clustered[0], 10**9)} == set(_ids(3))
