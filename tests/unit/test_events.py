"""Event ids are time-ordered and unique; the event body carries the schema's fields."""

import json

import numpy as np

from calibration.table import Bands
from edge.decision.rule import decide
from edge.flow import HotRegion
from edge.inference.inputs import hot_region
from edge.publish.events import SCHEMA, EventIds, FrameFacts, event_body, event_topic
from edge.taxonomy import DEFAULT_CLASSES


def test_ids_sort_by_time_and_stay_unique_within_a_millisecond():
    clock = iter([1.0] * 500 + [1.002] * 500)
    ids = EventIds(clock=lambda: next(clock))
    out = [ids.new() for _ in range(1000)]
    assert len(set(out)) == 1000 and out == sorted(out)
    assert all(len(i) == 26 for i in out)


def test_event_body_has_every_schema_field_and_is_json():
    probs = np.zeros(len(DEFAULT_CLASSES), dtype=np.float32)
    probs[DEFAULT_CLASSES.index("CRACK")] = 0.9
    probs[0] = 0.1
    verdict = decide(0.5, Bands(0.1, 0.2), probs, DEFAULT_CLASSES, lambda c: 0.7, 0.5, 0.0)
    hot = HotRegion((10, 20), (0, 8, 31, 39))
    facts = FrameFacts(
        "ST",
        "T1",
        "R1",
        "L1",
        "W1",
        (2, 3),
        "f1",
        0.5,
        hot,
        True,
        (),
        {"anomaly": "1"},
        {"queue": 1.0, "infer": 2.0, "total": 4.0},
    )
    body = json.loads(json.dumps(event_body("01ABC", 1.0, "DEFECT", verdict, facts, {"status": "static"})))
    assert body["schema"] == SCHEMA and body["defect_class"] == "CRACK" and body["threshold"] == 0.7
    assert body["anomaly"] == {"score": 0.5, "band": "REJECT", "peak_xy": [10, 20], "bbox": [0, 8, 31, 39]}
    assert body["top_k"][0] == {"class": "CRACK", "p": 0.9}
    assert event_topic("fab/edge", "ST", "T1") == "fab/edge/ST/events/T1"


def test_hot_region_is_the_peak_cell_and_the_hot_cells_connected_to_it_in_image_pixels():
    heat = np.full((32, 32), 0.01, dtype=np.float32)
    heat[5, 30] = 1.0
    heat[6, 29] = heat[7, 28] = 0.6  # diagonal: 8-connected to the peak
    heat[20, 2] = 0.9  # hot, but not connected: another region
    heat[5, 31] = 0.4  # under half the peak
    region = hot_region(heat, (256, 256), floor=0.05)
    assert region.peak_xy == (30 * 8 + 4, 5 * 8 + 4)
    assert region.bbox == (28 * 8, 5 * 8, 31 * 8 - 1, 8 * 8 - 1)
    assert hot_region(heat, (256, 256), floor=0.7).bbox == (30 * 8, 5 * 8, 31 * 8 - 1, 6 * 8 - 1)


def test_a_frame_under_its_pass_band_has_the_peak_cell_as_its_region():
    heat = np.full((32, 32), 0.01, dtype=np.float32)
    heat[0, 0] = 0.02
    assert hot_region(heat, (256, 256), floor=0.5) == HotRegion((4, 4), (0, 0, 7, 7))
