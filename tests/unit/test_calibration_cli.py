"""``edge-inspect calib``: the engineer's commands against a real store file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibration.controller import Stages
from calibration.store import CalibrationStore
from edge.cli import main

R, T = "R-7NM-L4", "AOI-01"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "calib.sqlite"
    s = CalibrationStore(path, stages=Stages(initial_lots=1))
    s.ensure_profile(R, T, ("PART-SM", "SCR-FINE"))
    s.add_candidate("E1", R, T, "L1", "PART-SM", 0.7)
    s.close()
    return path


def calib(store_path: Path, *args: str) -> list[str]:
    return ["calib", "--store", str(store_path), "--who", "eng1", *args]


def test_show_prints_one_line_per_class(store_path: Path, capsys) -> None:
    assert main(calib(store_path, "show", "--recipe", R, "--tool", T)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["PART-SM threshold=0.55 fpr_3lot=0.00% status=calibrating",
                       "SCR-FINE threshold=0.55 fpr_3lot=0.00% status=calibrating"]  # fmt: skip


def test_override_lock_unlock_transfer_history_review(store_path: Path, capsys) -> None:
    where = ["--recipe", R, "--tool", T, "--class", "PART-SM"]
    assert main(calib(store_path, "override", *where, "--threshold", "0.8", "--lock-lots", "3", "--reason", "x")) == 0
    assert capsys.readouterr().out.strip() == "PART-SM threshold=0.80 fpr_3lot=0.00% status=locked"
    assert main(calib(store_path, "unlock", *where, "--reason", "done")) == 0
    assert "status=adjusting" in capsys.readouterr().out
    assert main(calib(store_path, "set-bounds", *where, "--lower", "0.6", "--budget", "0.002", "--reason", "y")) == 0
    assert main(calib(store_path, "transfer", "--recipe", R, "--from", T, "--to", "AOI-02", "--reason", "swap")) == 0
    assert "PART-SM threshold=0.80 fpr_3lot=0.00% status=revalidating" in capsys.readouterr().out
    assert main(calib(store_path, "review", "E1", "--false")) == 0
    assert main(calib(store_path, "history", "--recipe", R, "--tool", T, "--class", "PART-SM")) == 0
    history = capsys.readouterr().out
    assert "threshold: 0.55 -> 0.8 by eng1 (x (lock 3 lots))" in history and "lower: 0.5 -> 0.6 by eng1 (y)" in history
    assert "disposition: None -> False by eng1" in history
    store = CalibrationStore(store_path)
    store.add_candidate("E2", R, T, "L1", "PART-SM", 0.9)
    store.close()
    assert main(calib(store_path, "review", "E2", "--relabel", "PART-MD", "--comment", "larger")) == 0
    assert capsys.readouterr().out.strip() == "E2: a PART-MD by eng1"
    assert main(calib(store_path, "history", "--recipe", R, "--tool", T, "--class", "PART-SM")) == 0
    assert "disposition: None -> False by eng1 (review of E2: larger)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["override", "--recipe", R, "--tool", T, "--class", "PART-SM", "--threshold", "0.99", "--reason", "x"],
            "threshold",
        ),
        (["override", "--recipe", R, "--tool", T, "--class", "NOPE", "--threshold", "0.7", "--reason", "x"], "class"),
        (["show", "--recipe", R, "--tool", "AOI-99"], "recipe/tool"),
        (["review", "NOPE", "--real"], "event_id"),
        (["set-bounds", "--recipe", R, "--tool", T, "--class", "PART-SM", "--reason", "x"], "set-bounds"),
        (
            [
                "set-bounds",
                "--recipe",
                R,
                "--tool",
                T,
                "--class",
                "PART-SM",
                "--lower",
                "0.9",
                "--upper",
                "0.8",
                "--reason",
                "x",
            ],
            "bounds",
        ),
    ],
)
def test_errors_name_the_bad_argument(store_path: Path, capsys, args: list[str], named: str) -> None:
    assert main(calib(store_path, *args)) == 2
    assert named in capsys.readouterr().err


def test_missing_store_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["calib", "--store", str(tmp_path / "none.sqlite"), "show", "--recipe", R, "--tool", T]) == 2
    assert "--store" in capsys.readouterr().err


def test_show_and_history_as_json(store_path: Path, capsys) -> None:
    assert (
        main(
            calib(
                store_path,
                "override",
                "--recipe",
                R,
                "--tool",
                T,
                "--class",
                "PART-SM",
                "--threshold",
                "0.8",
                "--reason",
                "x",
            )
        )
        == 0
    )
    capsys.readouterr()
    assert main(calib(store_path, "show", "--recipe", R, "--tool", T, "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["recipe"], shown["tool"], shown["mode"]) == (R, T, "calibrating")
    part = shown["classes"][0]
    assert (part["class"], part["threshold"], part["escape_estimate"]) == ("PART-SM", 0.8, None)
    assert part["settings"]["fpr_budget"] > 0 and [c["class"] for c in shown["classes"]] == ["PART-SM", "SCR-FINE"]
    assert main(calib(store_path, "history", "--recipe", R, "--tool", T, "--class", "PART-SM", "--json")) == 0
    newest = json.loads(capsys.readouterr().out)[0]
    assert (newest["field"], newest["old"], newest["new"], newest["who"]) == ("threshold", "0.55", "0.8", "eng1")
    assert newest["time"].endswith("Z") and newest["reason"].startswith("x")


def test_show_and_override_work_on_a_statistical_profile(tmp_path: Path, capsys) -> None:
    path = tmp_path / "stat.sqlite"
    s = CalibrationStore(path)
    s.ensure_profile(R, T, ("PART-SM",), "statistical")
    s.close()
    assert main(calib(path, "show", "--recipe", R, "--tool", T)) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "PART-SM threshold=0.550 fpr_3lot=0.00% certified=100.00% status=calibrating"
    )
    where = ["--recipe", R, "--tool", T, "--class", "PART-SM"]
    assert main(calib(path, "override", *where, "--threshold", "0.7", "--lock-lots", "2", "--reason", "x")) == 0
    assert capsys.readouterr().out.startswith("PART-SM threshold=0.700 ")
    assert main(calib(path, "show", "--recipe", R, "--tool", T, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["classes"][0]["status"] == "locked"
