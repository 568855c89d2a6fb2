"""The wafers the review pages show: a summarised wafer's dies folded into one outbox row with its summary, read
back read-only with an open wafer's dies so far; and the pictures drawn from them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from calibration.store import TrendPoint
from edge.flow import WAFER, DieRow, EventRow
from edge.publish.outbox import Outbox
from edge.review import pictures
from edge.review.pages import safe_next
from edge.review.wafers import WaferBook


def _summary(wafer: str) -> EventRow:
    body = {"summary_id": f"s-{wafer}", "tool_id": "T1", "lot_id": "L1", "wafer_id": wafer, "severity": 41.5,
            "signature": {"pattern": "cluster"}, "clusters": [{"size": 2, "bbox": [1, 0, 2, 0]}]}  # fmt: skip
    return EventRow(f"s-{wafer}", "p/s/wafers/T1", WAFER, json.dumps(body))


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_a_summarised_wafer_keeps_its_map_and_summary_and_an_open_one_its_dies_so_far(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    book = WaferBook(path)
    assert book.recent() == [] and book.wafer(("T1", "L1", "W1")) is None  # no outbox yet: nothing, no error
    box = Outbox(path)
    w1 = [DieRow("T1", "L1", "W1", x, 0, "R", "DEFECT" if x else "PASS", "CRACK" if x else "GOOD") for x in range(3)]
    box.record([], [], dies=[*w1, DieRow("T1", "L1", "W2", 5, 5, "R", "PASS", "GOOD")])
    box.record([], [_summary("W1")], summarised=[("T1", "L1", "W1")])
    [shown] = book.recent()
    assert shown.key == ("T1", "L1", "W1") and shown.recipe_id == "R" and len(shown.dies) == 3
    assert shown.summary is not None and shown.summary["severity"] == 41.5 and shown.clusters == [[1, 0, 2, 0]]
    assert [(d.x, d.decision, d.defect_class) for d in shown.dies] == [(0, "PASS", "GOOD"), (1, "DEFECT", "CRACK"),
                                                                        (2, "DEFECT", "CRACK")]  # fmt: skip
    still_open = book.wafer(("T1", "L1", "W2"))
    assert still_open is not None and still_open.summary is None and [(d.x, d.y) for d in still_open.dies] == [(5, 5)]
    assert book.recent(tool="T9") == []
    assert box.prune(time.time() + 1)["wafer_maps"] == 1 and book.recent() == []
    book.close()
    box.close()


def test_the_wafer_map_rings_the_die_and_colours_defective_dies_by_class() -> None:
    dies = [pictures.Die(x, y, "PASS") for x in range(5) for y in range(5)]
    dies[12] = pictures.Die(2, 2, "DEFECT", "CRACK")
    image = _decode(pictures.wafer_map(dies, clusters=[[2, 2, 2, 2]], mark=(0, 0), side=200))
    assert image.shape == (224, 200, 3)
    crack = np.array(pictures.class_colour("CRACK"), np.uint8)
    assert np.all(image[112 - 20 : 112, 100, :] == crack, axis=-1).any()  # the centre die in CRACK's colour
    assert np.all(image == np.array(pictures.MARK, np.uint8), axis=-1).sum() > 50  # the ring around (0, 0)
    assert pictures.class_colour("CRACK") == pictures.class_colour("CRACK") != pictures.class_colour("SCRATCH")
    empty = _decode(pictures.wafer_map([]))
    assert empty.shape[0] > 0


def test_the_trend_draws_one_point_per_lot_and_copes_with_none() -> None:
    points = [TrendPoint(f"L{i}", float(i), 0.6 + 0.01 * i, 0.0005 * i, None) for i in range(6)]
    drawn = _decode(pictures.trend(points, budget=0.001, lower=0.5, upper=0.95))
    blank = _decode(pictures.trend([], budget=0.001, lower=0.5, upper=0.95))
    assert drawn.shape == blank.shape == (220, 560, 3)
    red = np.all(drawn == np.array((40, 40, 220), np.uint8), axis=-1).sum()
    assert red > np.all(blank == np.array((40, 40, 220), np.uint8), axis=-1).sum()  # the FPR line is drawn


def test_after_the_login_only_a_path_of_this_service_is_followed() -> None:
    assert safe_next("/items/E1?tool=T1") == "/items/E1?tool=T1"
    for hostile in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "", None, "queue"):
        assert safe_next(hostile) == "/queue"
