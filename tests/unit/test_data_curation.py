"""The data loop's offline tools: the classifier's embedding output, subset selection, the label audit and their
commands (``edge-inspect data select`` / ``data audit``) on a generated labelled folder and a tiny real model."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge.cli import main as edge_inspect
from edge.process_params import DEFAULT_PARAMETERS
from edge.taxonomy import DEFAULT_CLASSES
from tools.build_repository import SOURCE, config_text, contract_parameters
from tools.curation.audit import audit
from tools.curation.select import BORDERLINE, COVERAGE, allocate, select
from tools.dataset.folder import load
from tools.dataset.synth_export import export
from tools.embedding_output import EMBEDDING, declared, write_with_embedding
from tools.quantize import feeds
from tools.synth import make_dataset
from tools.tiny_models import export_tiny


def _clusters(rng: np.random.Generator, centres: int, per: int, spread: float, dim: int = 16) -> np.ndarray:
    means = rng.normal(size=(centres, dim))
    return np.concatenate([m + spread * rng.normal(size=(per, dim)) for m in means]).astype(np.float32)


def _flat_probs(n: int, classes: list[str], labels: list[str]) -> np.ndarray:
    """A confident model that agrees with every label: no borderline die from the model's side."""
    probs = np.full((n, len(classes)), 0.01 / len(classes), np.float32)
    for i, label in enumerate(labels):
        probs[i, classes.index(label)] = 0.99
    return probs


# --- selection ---------------------------------------------------------------------------------------------------


def test_allocation_follows_spread_with_a_floor_and_never_passes_a_class_size() -> None:
    alloc = allocate(60, {"A": 100, "B": 100, "C": 3}, {"A": 0.3, "B": 0.1, "C": 0.5}, floor=5)
    assert sum(alloc.values()) == 60
    assert alloc["C"] == 3, "a class gives all it has, never more"
    assert alloc["A"] > 2 * alloc["B"] - 3, "three times the spread: about three times the share"
    assert allocate(2, {"A": 10, "B": 10, "C": 10}, {"A": 1, "B": 1, "C": 1}) == {"A": 1, "B": 1, "C": 0}
    promised = allocate(60, {"A": 100, "B": 100, "C": 3}, {"A": 0.3, "B": 0.1, "C": 0.5}, floor=5, reserved={"B": 30})
    assert promised["B"] >= 30 and sum(promised.values()) == 60 and promised["C"] == 3


def test_selection_covers_every_mode_of_a_class_and_skips_duplicates() -> None:
    rng = np.random.default_rng(3)
    varied = _clusters(rng, centres=6, per=40, spread=0.05)  # class V: six tight modes far apart
    copies = np.repeat(rng.normal(size=(1, 16)).astype(np.float32), 200, axis=0)  # class D: one die, 200 times
    vectors = np.concatenate([varied, copies + 1e-4 * rng.normal(size=copies.shape).astype(np.float32)])
    labels = ["V"] * len(varied) + ["D"] * len(copies)
    chosen = select(vectors, labels, _flat_probs(len(labels), ["D", "V"], labels), ["D", "V"], budget=20)
    picked_v = [i for i in chosen.chosen if labels[i] == "V"]
    assert len(chosen.chosen) == 20 and len(set(chosen.chosen)) == 20
    assert {i // 40 for i in picked_v} == set(range(6)), "k-center reaches every mode of the varied class"
    assert chosen.allocation["V"] > chosen.allocation["D"], "the varied class gets the larger share"
    assert chosen.allocation["D"] == 5, "near-identical dies: the floor only"
    held = select(vectors, labels, _flat_probs(len(labels), ["D", "V"], labels), ["D", "V"], budget=20,
                  min_share={"D": 0.5})  # fmt: skip
    assert held.allocation == {"D": 10, "V": 10}


def test_borderline_dies_are_kept_and_say_why() -> None:
    rng = np.random.default_rng(5)
    vectors = _clusters(rng, centres=2, per=100, spread=0.1)
    labels = ["GOOD"] * 100 + ["SCRATCH"] * 100
    classes = ["GOOD", "SCRATCH"]
    probs = _flat_probs(200, classes, labels)
    probs[7] = (0.52, 0.48)  # a near tie between the two classes
    probs[150] = (0.45, 0.55)
    chosen = select(vectors, labels, probs, classes, budget=30)
    assert chosen.why[7] == BORDERLINE and chosen.why[150] == BORDERLINE
    assert "class boundary" in chosen.reasons[7] and "decision threshold" in chosen.reasons[150]
    assert Counter(chosen.why.values())[COVERAGE] == 28
    with pytest.raises(ValueError, match="budget"):
        select(vectors, labels, probs, classes, budget=0)


# --- label audit --------------------------------------------------------------------------------------------------


def test_the_audit_ranks_flipped_labels_first_and_offers_the_likely_label() -> None:
    rng = np.random.default_rng(11)
    names = [f"C{k}" for k in range(8)]
    vectors = _clusters(rng, centres=8, per=50, spread=0.2)
    truth = [names[i // 50] for i in range(400)]
    probs = _flat_probs(400, names, truth)
    flipped = rng.choice(400, 20, replace=False)
    noisy = list(truth)
    for i in flipped:
        noisy[i] = names[(names.index(truth[i]) + 1) % 8]
    ranked = audit(vectors, noisy, probs, names, k=10)
    top = {s.index for s in ranked[:20]}
    assert top == set(flipped.tolist()), "each flipped die is among the 20 most suspect"
    first = ranked[0]
    assert first.neighbour_label == truth[first.index] == first.model_class
    assert first.label_p is not None and first.label_p < 0.01 < (first.model_p or 0)


def test_the_audit_uses_neighbours_alone_for_a_class_the_model_does_not_know() -> None:
    rng = np.random.default_rng(2)
    vectors = _clusters(rng, centres=2, per=30, spread=0.1)
    labels = ["NEW"] * 30 + ["GOOD"] * 30
    labels[3] = "GOOD"
    ranked = audit(vectors, labels, np.full((60, 1), 1.0, np.float32), ["GOOD"], k=5)
    assert ranked[0].index == 3 and ranked[0].neighbour_label == "NEW"
    assert all(s.label_p is None for s in ranked if labels[s.index] == "NEW")


# --- the embedding output ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tiny"))


def test_the_embedding_output_leaves_the_other_outputs_bit_for_bit(tiny: Path, tmp_path: Path) -> None:
    served = tmp_path / "model.onnx"
    assert write_with_embedding(tiny / "classifier.onnx", served)
    x = feeds("classifier", make_dataset(seed=3, n=5))
    before = ort.InferenceSession(str(tiny / "classifier.onnx")).run(["PROBS", "ATTENTION"], x)
    after = ort.InferenceSession(str(served)).run(["PROBS", "ATTENTION", EMBEDDING], x)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert after[2].shape == (5, 32) and after[2].dtype == np.float32 and np.abs(after[2]).sum() > 0


def test_a_graph_without_the_head_is_served_as_it_is_and_declares_no_embedding(tiny: Path, tmp_path: Path) -> None:
    for source in (tiny / "anomaly.onnx", tmp_path / "garbage.onnx"):
        if not source.exists():
            source.write_bytes(b"not an onnx file")
        assert not write_with_embedding(source, tmp_path / "out.onnx")
        assert (tmp_path / "out.onnx").read_bytes() == source.read_bytes()
    config = (SOURCE / "classifier" / "config.pbtxt").read_text()
    assert EMBEDDING in config and declared(config, True) == config
    stripped = declared(config, False)
    assert EMBEDDING not in stripped and '{ name: "ATTENTION", data_type: TYPE_FP32, dims: [ 64 ] }\n]' in stripped


# --- the commands on a labelled folder -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def station(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generated labelled folder of 200 dies and a repository holding the tiny classifier as version 1."""
    root = tmp_path_factory.mktemp("station")
    folder = export(root / "dies", 200, seed=4, defect_rate=0.5)
    version = root / "repo" / "classifier" / "1"
    version.mkdir(parents=True)
    assert write_with_embedding(tiny / "classifier.onnx", version / "model.onnx")
    template = (SOURCE / "classifier" / "config.pbtxt").read_text()
    (version / "config.pbtxt").write_text(
        config_text(template, contract_parameters(DEFAULT_CLASSES, DEFAULT_PARAMETERS))
    )
    return folder, root / "repo"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_data_select_writes_a_manifest_a_map_and_a_folder_training_accepts(station, tmp_path: Path, capsys) -> None:
    folder, repo = station
    out = tmp_path / "sel.csv"
    code = edge_inspect(["data", "select", "--data", str(folder), "--repository", str(repo), "--budget", "40",
                         "--out", str(out), "--folder", str(tmp_path / "subset"),
                         "--min-share", "GOOD=0.25"])  # fmt: skip
    assert code == 0
    rows = _rows(out)
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    assert {r["why"] for r in rows} <= {BORDERLINE, COVERAGE}
    pool, _ = load(folder, training=False)
    assert {r["class"] for r in rows} == set(pool.classes), "every class of the pool is represented"
    assert [r["class"] for r in rows].count("GOOD") >= 10, "GOOD holds the share it was promised"
    picture = cv2.imread(str(tmp_path / "sel.png"))
    assert picture is not None and picture.shape[0] > 500
    subset, _ = load(tmp_path / "subset", training=False)
    assert sorted(d.id for d in subset.dies) == sorted(r["id"] for r in rows)
    assert "total" in capsys.readouterr().out


def test_data_audit_lists_suspects_with_their_neighbours(station, tmp_path: Path) -> None:
    folder, repo = station
    out = tmp_path / "audit.csv"
    code = edge_inspect(["data", "audit", "--data", str(folder), "--repository", str(repo), "--min-score", "0",
                         "--k", "5", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = _rows(out)
    assert len(rows) == 200 and [int(r["rank"]) for r in rows] == list(range(1, 201))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(len(r["neighbours"].split(";")) == 5 for r in rows)
    assert cv2.imread(str(tmp_path / "audit.png")) is not None


def test_the_data_commands_refuse_bad_input_with_a_reason(station, tmp_path: Path, capsys) -> None:
    folder, repo = station
    assert edge_inspect(["data", "select", "--data", str(tmp_path / "none"), "--repository", str(repo),
                         "--budget", "5"]) == 1  # fmt: skip
    assert "not a folder" in capsys.readouterr().err
    assert edge_inspect(["data", "audit", "--data", str(folder), "--repository", str(tmp_path)]) == 1
    assert "holds no classifier version" in capsys.readouterr().err
    for bad in (
        ["--budget", "0"],
        ["--budget", "5", "--min-share", "GOOD"],
        ["--budget", "5", "--min-share", "GOOD=2"],
    ):
        with pytest.raises(SystemExit) as exit_:
            edge_inspect(["data", "select", "--data", str(folder), "--repository", str(repo), *bad])
        assert exit_.value.code == 2
