"""The ad-hoc inspection's pure parts: what an upload may hold, and the per-user rate limit."""

from __future__ import annotations

import pytest

from edge.config import parse_config
from edge.review.inspect import InspectRefused, RateLimiter, upload_of

CFG = parse_config({"tools": [{"id": "AOI-02"}, {"id": "AOI-01"}], "recipes": {"R1": {}}})
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_an_upload_takes_the_first_recipe_and_tool_and_reads_process_values() -> None:
    upload = upload_of(CFG, {"image": PNG, "params": "chamber_pressure = 7.9\n\nrf_power=1200", "note": "  PM  "})
    assert (upload.recipe_id, upload.tool_id) == ("R1", "AOI-01")
    assert upload.params == {"chamber_pressure": 7.9, "rf_power": 1200.0} and upload.note == "PM"


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({}, "image"),
        ({"image": b""}, "image"),
        ({"image": PNG, "recipe": "R9"}, "recipe"),
        ({"image": PNG, "tool": "AOI-99"}, "tool"),
        ({"image": PNG, "params": "pressure"}, "params line 1"),
        ({"image": PNG, "params": "ok=1\npressure=nan"}, "params line 2"),
        ({"image": PNG, "params": "=3"}, "params line 1"),
        ({"image": PNG, "note": "x" * 2001}, "note"),
    ],
)
def test_a_bad_upload_is_refused_naming_the_field(fields: dict[str, object], names: str) -> None:
    with pytest.raises(InspectRefused, match=names):
        upload_of(CFG, fields)


def test_each_user_gets_so_many_inspections_in_any_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.wait("li") == 0 and limiter.wait("li") == 0
    assert limiter.wait("li") == pytest.approx(60.0) and limiter.wait("ann") == 0  # per user
    now[0] = 30.0
    assert limiter.wait("li") == pytest.approx(30.0)  # refused calls do not count
    now[0] = 60.5
    assert limiter.wait("li") == 0 and limiter.wait("li") == 0 and limiter.wait("li") > 0
