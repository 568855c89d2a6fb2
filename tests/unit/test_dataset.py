"""The own-data contract: a labelled folder is checked whole before anything trains. Every refusal names its file
and line; suspicious but usable data warns; an empty split column gets a split by wafer, stratified by class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import cli
from edge.contract.images import model_input, read
from edge.process_params import DEFAULT_PARAMETERS
from edge.taxonomy import DEFAULT_CLASSES
from tools.dataset import check, second_fab, synth_export
from tools.dataset.arrays import arrays
from tools.dataset.folder import DataSetRefused, load, validate
from tools.dataset.split import SPLITS, missing, split_by_wafer

CLASSES = ("GOOD", "SCRATCH", "PARTICLE")
HEADER = ["id", "split", "class", "tool_id", "recipe_id", "lot_id", "wafer_id", "die_x", "die_y", "path"]


def write_png(path: Path, shape=(16, 16), dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, 7, dtype))


def make_folder(root: Path, wafers: int = 6, per_class: int = 2, split: bool = True) -> Path:
    """A valid set: every wafer has ``per_class`` dies of each class; wafers 0-3 train, 4 val, 5 test."""
    rows, process = [], []
    for w in range(wafers):
        part = "train" if w < wafers - 2 else ("val" if w == wafers - 2 else "test")
        tool = f"AOI-{w % 2 + 1}"
        for cls in CLASSES:
            for i in range(per_class):
                die_id = f"w{w}-{cls}-{i}"
                rel = f"images/{part if split else 'all'}/{cls}/{die_id}.png"
                write_png(root / rel, (16, 16, 3) if i % 2 else (16, 16))
                rows.append([die_id, part if split else "", cls, tool, "R1", "L1", f"W{w}", str(i), "0", rel])
        process.append(["L1", f"W{w}", "R1", tool, f"{1.0 + w}", f"{20 + w % 3}"])
    write_csv(root / "labels.csv", HEADER, rows)
    write_csv(root / "process.csv", ["lot_id", "wafer_id", "recipe_id", "tool_id", "dose", "temp"], process)
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def edit_labels(root: Path, line: int, **changes: str) -> None:
    """Change fields of ``labels.csv``'s ``line`` (the header is line 1)."""
    rows = read_rows(root / "labels.csv")
    for key, value in changes.items():
        rows[line - 1][HEADER.index(key)] = value
    write_csv(root / "labels.csv", rows[0], rows[1:])


def errors(root: Path) -> list[str]:
    data, report = validate(root)
    assert data is None and not report.ok
    return [str(p) for p in report.errors]


def test_a_valid_folder_loads_with_its_classes_parameters_and_splits(tmp_path):
    data, report = load(make_folder(tmp_path))
    assert report.ok and data.split_given
    assert data.classes == ("GOOD", "PARTICLE", "SCRATCH") and data.parameters == ("dose", "temp")
    assert len(data.split("train")) == 24 and len(data.split("val")) == len(data.split("test")) == 6
    assert data.process[("L1", "W0", "R1", "AOI-1")] == (1.0, 20.0)
    assert report.warnings == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"split": "holdout"}, "labels.csv:2: unknown split 'holdout'"),
    ({"path": "../outside.png"}, "labels.csv:2: path '../outside.png' is outside the data folder"),
    ({"path": "/etc/hostname"}, "labels.csv:2: path '/etc/hostname' is outside the data folder"),
    ({"path": "images/train/GOOD/nowhere.png"}, "labels.csv:2: image missing: images/train/GOOD/nowhere.png"),
    ({"die_x": "left"}, "labels.csv:2: die_x 'left' is not an integer"),
    ({"wafer_id": ""}, "labels.csv:2: empty wafer_id"),
    ({"id": "w0-GOOD-1"}, "labels.csv:2: duplicate id 'w0-GOOD-1' (first on line 2)"),
])  # fmt: skip
def test_each_bad_label_row_is_refused_by_file_and_line(tmp_path, change, expected):
    root = make_folder(tmp_path)
    edit_labels(root, 2, **change)
    found = errors(root)
    if change.get("id"):  # the second row keeps its own id: the duplicate is reported on it
        expected = "labels.csv:3: duplicate id 'w0-GOOD-1' (first on line 2)"
    assert any(e.startswith(expected) for e in found), found


@pytest.mark.parametrize(("write", "expected"), [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "image unreadable (truncated or corrupt PNG)"),
    (lambda p: p.write_bytes(b"GIF89a" + b"\x00" * 40), "not a PNG"),
    (lambda p: write_png(p, (16, 2049)), "16x2049 px: at most 2048 px a side"),
    (lambda p: write_png(p, (16, 16, 4)), "4 channels: grey or RGB only"),
])  # fmt: skip
def test_unusable_images_are_refused(tmp_path, write, expected):
    root = make_folder(tmp_path)
    write(root / "images/train/GOOD/w0-GOOD-0.png")
    assert f"labels.csv:2: {expected}: images/train/GOOD/w0-GOOD-0.png" in errors(root)


def test_sixteen_bit_grey_images_are_accepted(tmp_path):
    root = make_folder(tmp_path)
    write_png(root / "images/train/GOOD/w0-GOOD-0.png", (32, 48), np.uint16)
    assert validate(root)[1].ok


def test_a_class_with_fewer_than_five_training_images_is_refused(tmp_path):
    root = make_folder(tmp_path, wafers=4, per_class=1)  # 2 training wafers: 2 training images a class
    assert "labels.csv: class 'GOOD' has 2 training images (at least 5)" in errors(root)


def test_a_wafer_in_two_splits_is_refused(tmp_path):
    root = make_folder(tmp_path)
    edit_labels(root, 2, split="test")
    assert any("wafer W0 of lot L1 is in more than one split: test (lines 2); train (lines 3," in e
               for e in errors(root))  # fmt: skip


def test_a_split_given_on_some_rows_only_is_refused(tmp_path):
    root = make_folder(tmp_path)
    edit_labels(root, 5, split="")
    assert any("split is empty on 1 rows (lines 5) and given on others" in e for e in errors(root))


def test_a_set_without_good_is_refused(tmp_path):
    root = make_folder(tmp_path)
    rows = [r for r in read_rows(root / "labels.csv") if r[2] != "GOOD"]
    write_csv(root / "labels.csv", rows[0], rows[1:])
    assert "labels.csv: no GOOD dies: the anomaly model trains on GOOD only" in errors(root)


def test_process_rows_with_non_numeric_values_and_duplicates_are_refused(tmp_path):
    root = make_folder(tmp_path)
    rows = read_rows(root / "process.csv")
    rows[1][4] = "high"
    rows.append(rows[2])
    write_csv(root / "process.csv", rows[0], rows[1:])
    found = errors(root)
    assert "process.csv:2: parameter 'dose': 'high' is not a number" in found
    assert "process.csv:8: a second row for lot L1 wafer W1 (first on line 3)" in found


def test_a_process_header_without_its_keys_is_refused(tmp_path):
    root = make_folder(tmp_path)
    rows = read_rows(root / "process.csv")
    rows[0][0] = "lot"
    write_csv(root / "process.csv", rows[0], rows[1:])
    assert "process.csv:1: header lacks lot_id" in errors(root)


def test_missing_labels_and_a_bad_header_are_refused(tmp_path):
    root = make_folder(tmp_path)
    (root / "labels.csv").unlink()
    assert errors(root) == ["labels.csv: missing"]
    write_csv(root / "labels.csv", HEADER[:-1], [])
    assert errors(root)[0].startswith("labels.csv:1: header lacks path")


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    root = make_folder(tmp_path)
    edit_labels(root, 2, split="holdout")
    edit_labels(root, 9, die_y="up")
    (root / "images/test/SCRATCH/w5-SCRATCH-1.png").unlink()
    found = errors(root)
    assert any(e.startswith("labels.csv:2: unknown split") for e in found)
    assert "labels.csv:9: die_y 'up' is not an integer" in found
    assert any("image missing: images/test/SCRATCH/w5-SCRATCH-1.png" in e for e in found)
    with pytest.raises(DataSetRefused, match="problem"):
        load(root)


def test_suspicious_data_warns_and_still_loads(tmp_path):
    root = make_folder(tmp_path, per_class=3)
    rows = read_rows(root / "process.csv")
    for row in rows[1:]:
        row[5] = "20"  # temp constant
    write_csv(root / "process.csv", rows[0], rows[2:])  # and wafer W0 without a process row
    labels = read_rows(root / "labels.csv")
    kept = [r for r in labels[1:] if r[2] != "PARTICLE" or r[3] == "AOI-1"]  # PARTICLE seen by one tool only
    write_csv(root / "labels.csv", labels[0], kept)
    data, report = validate(root)
    warnings = [str(w) for w in report.warnings]
    assert data is not None and report.ok
    assert "process.csv: parameter 'temp' is constant (20)" in warnings
    assert "labels.csv: 9 dies on 1 wafer(s) have no process row: they train with the process log absent" in warnings
    assert any("class 'PARTICLE' is only on tool AOI-1" in w for w in warnings)
    assert "labels.csv: class 'PARTICLE' has no test images" in warnings


def test_without_a_split_column_the_set_is_split_by_wafer_with_every_class_everywhere(tmp_path):
    root = make_folder(tmp_path, wafers=10, per_class=3, split=False)
    data, report = load(root)
    assert not data.split_given and report.ok
    by_wafer: dict[tuple[str, str], set[str]] = {}
    for die in data.dies:
        by_wafer.setdefault(die.wafer, set()).add(die.split)
    assert all(len(splits) == 1 for splits in by_wafer.values())
    assert {(d.cls, d.split) for d in data.dies} == {(c, s) for c in CLASSES for s in SPLITS}


def test_a_class_on_too_few_wafers_for_a_split_by_wafer_is_refused(tmp_path):
    root = make_folder(tmp_path, wafers=10, per_class=3, split=False)
    labels = read_rows(root / "labels.csv")
    kept = [r for r in labels[1:] if r[2] != "SCRATCH" or r[6] in ("W0", "W1")]
    write_csv(root / "labels.csv", labels[0], kept)
    found = errors(root)
    assert any(e.startswith("labels.csv: class 'SCRATCH' is on 2 wafer(s): a split by wafer cannot put it in")
               for e in found)  # fmt: skip


def test_the_split_rule_is_stratified_grouped_and_near_its_shares():
    rng = np.random.default_rng(3)
    dies = []
    for w in range(60):
        dies += [(("L", f"W{w}"), "GOOD")] * int(rng.integers(20, 40))
        if w % 12 == 0:
            dies.append((("L", f"W{w}"), "RARE"))  # 5 wafers carry the rare class
    split = split_by_wafer(dies, seed=1)
    assert missing(split, dies) == {}
    shares = {s: sum(1 for w, _ in dies if split[w] == s) / len(dies) for s in SPLITS}
    assert abs(shares["train"] - 0.70) < 0.05 and abs(shares["val"] - 0.15) < 0.05
    assert split == split_by_wafer(dies, seed=1)  # deterministic for a seed


def test_the_check_command_prints_errors_and_a_summary(tmp_path, capsys):
    root = make_folder(tmp_path)
    assert check.main(["--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "36 dies on 6 wafers, split given; tools AOI-1, AOI-2; 2 process parameters" in out
    edit_labels(root, 2, split="holdout")
    assert cli.main(["data", "check", "--data", str(root), "--json"]) == 1  # the installed command
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["errors"][0].startswith("labels.csv:2: unknown split")


def test_the_second_fab_writes_a_valid_folder_of_its_own_look(tmp_path):
    root = second_fab.generate(tmp_path, 600, seed=3)
    data, report = load(root)
    assert report.ok and data.split_given and len(data.dies) == 600
    assert set(data.classes) == set(second_fab.CLASS_SHARES) and data.parameters == tuple(second_fab.PARAMETERS)
    image = cv2.imread(str(data.dies[0].path), cv2.IMREAD_UNCHANGED)
    assert image.shape == second_fab.SHAPE and image.dtype == np.uint8
    bake = data.parameters.index("bake_temp_c")
    nominal, sigma, _ = second_fab.PARAMETERS["bake_temp_c"]
    hot = {key for key, values in data.process.items() if values[bake] > nominal + 4 * sigma}
    haze = {d.process_key for d in data.dies if d.cls == "HAZE"}
    assert haze and haze <= hot  # HAZE is a defect only after a hot bake
    assert {d.tool_id for d in data.dies} == set(second_fab.TOOLS)


def test_a_notes_column_is_the_wafers_note_not_a_parameter(tmp_path):
    root = make_folder(tmp_path)
    rows = read_rows(root / "process.csv")
    rows[0].append("notes")
    for i, row in enumerate(rows[1:]):
        row.append("rework after a slow etch" if i == 0 else "")
    write_csv(root / "process.csv", rows[0], rows[1:])
    data, _ = load(root)
    assert data.parameters == ("dose", "temp")
    assert data.notes == {("L1", "W0", "R1", "AOI-1"): "rework after a slow etch"}
    rows[2][-1] = "x" * 2001
    write_csv(root / "process.csv", rows[0], rows[1:])
    assert "process.csv:3: note of 2001 characters (at most 2000)" in errors(root)


def test_the_data_command_says_what_is_missing_on_a_serving_only_install(monkeypatch, capsys):
    monkeypatch.setitem(cli.DATA_COMMANDS, "check", "tools.not_installed_here")
    assert cli.main(["data", "check", "--data", "."]) == 2
    assert "needs the project's tools (tools.not_installed_here)" in capsys.readouterr().err


def test_a_split_becomes_the_arrays_training_takes_by_the_serving_rules(tmp_path):
    root = make_folder(tmp_path)
    rows = read_rows(root / "process.csv")
    rows[0].append("notes")
    for i, row in enumerate(rows[1:]):
        row.append("slow etch" if i == 4 else "")
    write_csv(root / "process.csv", rows[0], rows[2:])  # W0 has no process row
    data, _ = load(root)
    train, val = arrays(data, "train"), arrays(data, "val")
    assert len(train) == 24 and train.images.shape == (24, 3, 256, 256) and train.process.shape == (24, 2)
    first = data.split("train")[0]
    tensors = model_input(read(str(first.path)), (256, 256))
    assert np.array_equal(train.images[0], tensors.rgb) and np.array_equal(train.grey[0], tensors.grey)
    assert [data.classes[i] for i in train.labels[:6]] == [d.cls for d in data.split("train")[:6]]
    w0 = [i for i, d in enumerate(data.split("train")) if d.wafer_id == "W0"]
    assert not train.present[w0, 0].any() and not train.process[w0].any()  # no row: the modality absent
    w1 = [i for i, d in enumerate(data.split("train")) if d.wafer_id == "W1"]
    assert train.present[w1, 0].all() and train.process[w1[0]].tolist() == [2.0, 21.0]
    assert val.present[:, 1].all() and not train.present[:, 1].any()  # the note is on W4, a val wafer
    assert set(train.tool.tolist()) == {0, 1}


@pytest.mark.parametrize("cls", ["BRIDGE", "OPEN"])
def test_the_second_fabs_bridges_span_a_gap_and_its_opens_cut_a_line(cls):
    rng = np.random.default_rng(5)
    for recipe in range(2):
        layout = second_fab.layout(np.random.default_rng([7, recipe]))
        for _ in range(20):
            die = layout[: second_fab.SHAPE[0], : second_fab.SHAPE[1]].copy()
            second_fab.draw_defect(die, cls, rng)
            changed = die != layout[: second_fab.SHAPE[0], : second_fab.SHAPE[1]]
            before = layout[: second_fab.SHAPE[0], : second_fab.SHAPE[1]][changed]
            assert changed.sum() >= 9
            if cls == "BRIDGE":  # metal laid over background only
                assert np.all(before == 0.25) and np.all(die[changed] == 0.7)
            else:  # metal removed from a line, and from nothing else
                assert np.all((before > 0.6) & (before < 0.8)) and np.all(die[changed] == 0.25)


def test_the_projects_generator_exports_in_the_own_data_format(tmp_path):
    root = synth_export.export(tmp_path / "synth", 60, seed=3, split=True, process_rate=1.0)
    rows = read_rows(root / "labels.csv")
    assert rows[0] == HEADER and len(rows) == 1 + 75  # whole wafers of 25
    assert {r[2] for r in rows[1:]} <= set(DEFAULT_CLASSES) and {r[1] for r in rows[1:]} == {"train"}  # one lot
    image = read(str(root / rows[1][-1]))
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    process = read_rows(root / "process.csv")
    assert process[0] == ["lot_id", "wafer_id", "recipe_id", "tool_id", *DEFAULT_PARAMETERS, "notes"]
    assert len(process) == 1 + 3  # every wafer's log at rate 1
    _, report = validate(root, images=False)
    assert all("training images" in str(p) or "wafer(s)" in str(p) for p in report.errors)  # too few dies, only
