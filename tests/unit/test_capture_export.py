"""Reviewed captures back into curation: ``edge-inspect captures export`` writes the dies a station kept and its
engineers judged as a labelled folder that the data tools and training read (real stores, real files)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from calibration.store import CalibrationStore
from edge.capture.export import export_reviewed
from edge.capture.store import CaptureStore
from edge.errors import CaptureError
from tests.unit.test_similar_captures import _capture
from tools.dataset.folder import load

R, T = "R1", "AOI-01"


def test_reviewed_captures_become_a_labelled_folder_the_data_tools_read(tmp_path: Path) -> None:
    captures = CaptureStore(tmp_path / "captures", 10**9, 30 * 86400, 90 * 86400)
    calibration = CalibrationStore(tmp_path / "calibration.sqlite")
    calibration.ensure_profile(R, T, ("K0", "K1", "K2", "K3"))
    old = time.time() - 60 * 86400
    captures.write([_capture(i, i % 4, ts=old if i == 5 else None) for i in range(7)])
    for i in range(7):
        calibration.add_candidate(f"C{i}", R, T, "L1", f"K{i % 4}", 0.9, flagged=True)
        calibration.record([], [], [(f"C{i}", R, T, "L1", "DEFECT", f"K{i % 4}")])
    reviews = {0: ("real", None), 1: ("false", None), 2: ("relabel", "K3"), 3: ("novel", None), 5: ("real", None),
               6: ("false", None)}  # fmt: skip
    for i, (disposition, label) in reviews.items():
        calibration.review(f"C{i}", disposition, "eve", label=label)
    captures.prune()  # C5 is past the retention: its pixels are gone
    done = export_reviewed(captures, calibration, tmp_path / "reviewed")
    assert done.dies == {"K0": 1, "GOOD": 2, "K3": 1} and dict(done.left_out) == {"labelled NOVEL": 1,
                                                                                  "capture gone": 1}  # fmt: skip
    data, report = load(tmp_path / "reviewed", training=False)
    assert sorted((d.id, d.cls) for d in data.dies) == [("C0", "K0"), ("C1", "GOOD"), ("C2", "K3"), ("C6", "GOOD")]
    assert not report.errors and data.dies[0].path.read_bytes() == captures.image_bytes(captures.get("C0"))
    assert not (tmp_path / "reviewed.partial").exists()
    with pytest.raises(CaptureError, match="exists"):
        export_reviewed(captures, calibration, tmp_path / "reviewed")
