"""The re-baseline command: what the CLI sends parses back, and every bad message says why."""

import json

import pytest

from edge.flow import Rejected
from edge.watch import rebaseline

TOOLS = ("AOI-01", "AOI-02")
RECIPES = ("M1", "M2")


def parse(body) -> rebaseline.Rebaseline | Rejected:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return rebaseline.parse(payload, TOOLS, RECIPES)


def test_the_message_the_cli_sends_parses_back():
    body = rebaseline.message("AOI-01", "M2", "j.doe", "PM, lamp replaced", 1.0, "c0ffee")
    assert parse(body) == rebaseline.Rebaseline("AOI-01", ("M2",), "j.doe", "PM, lamp replaced", "c0ffee")
    assert parse({"tool_id": "AOI-01", "by": "mes"}).command_id is None  # optional: MES may leave it out


def test_without_a_recipe_every_configured_recipe_is_rebaselined_and_the_reason_is_cut():
    command = parse({"tool_id": "AOI-02", "by": "ops", "reason": "x" * 1000})
    assert command.recipes == RECIPES and command.reason == "x" * rebaseline.MAX_REASON


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "bad_json"),
        ([1, 2], "not_an_object"),
        ({"tool_id": "AOI-01"}, "missing_key"),  # no `by`: a re-baseline is always someone's
        ({"tool_id": "AOI-01", "by": ""}, "bad_value"),
        ({"tool_id": "AOI-01", "by": "ops", "reason": 7}, "bad_value"),
        ({"tool_id": "AOI-01", "by": "ops", "schema": "edge.rebaseline/2"}, "bad_value"),
        ({"tool_id": "AOI-01", "by": "ops", "recipe_id": ["M1"]}, "bad_value"),
        ({"tool_id": "AOI-01", "by": "ops", "command_id": 5}, "bad_value"),
        ({"tool_id": "AOI-01", "by": "ops", "command_id": ""}, "bad_value"),
        ({"tool_id": "AOI-01", "by": "ops", "command_id": "x" * 65}, "bad_value"),
        ({"tool_id": "AOI-09", "by": "ops"}, "unknown_tool"),
        ({"tool_id": "AOI-01", "by": "ops", "recipe_id": "M9"}, "unknown_recipe"),
    ],
)
def test_a_bad_command_is_rejected_with_its_reason(body, reason):
    rejected = parse(body)
    assert isinstance(rejected, Rejected) and rejected.reason == reason and rejected.detail
    assert reason in rebaseline.RESULTS
