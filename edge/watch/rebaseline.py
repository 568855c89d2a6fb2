"""Re-baselining a tool's line watch after a service (pure): the command message and its checks.

A preventive maintenance, an optics swap or a recipe change moves a tool's anomaly scores and
process parameters on purpose. Without a new reference, drift would stay raised for as long as the
daemon runs, and a lasting parameter step would be named an excursion on every wafer. The command
``edge.rebaseline/1`` on ``{prefix}/{station}/{drift.rebaseline_topic}`` tells the daemon to forget
the drift references and the parameter statistics of one tool (one recipe, or all of them): what
comes next forms the new reference.

The message, as ``edge-inspect rebaseline`` sends it::

    {"schema": "edge.rebaseline/1", "command_id": "5f0c...", "tool_id": "AOI-01", "recipe_id": "M1-LITHO",
     "by": "j.doe", "reason": "PM 2026-11-23, lamp replaced", "ts": 1795000000.0}

``recipe_id`` may be left out (every configured recipe); ``by`` is required, for the audit trail;
``reason`` is optional free text, cut to ``MAX_REASON`` characters. ``command_id`` (optional, up to
``MAX_COMMAND_ID`` characters) makes the command idempotent: the broker may hand a QoS 1 message
over twice, and a command the daemon has applied already is not applied again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from edge.flow import Rejected
from edge.mes.context import json_object, string_fields

SCHEMA = "edge.rebaseline/1"
MAX_REASON = 200
MAX_COMMAND_ID = 64
RESULTS = (
    "accepted",
    "repeated",
    "bad_json",
    "not_an_object",
    "missing_key",
    "bad_value",
    "unknown_tool",
    "unknown_recipe",
)


@dataclass(frozen=True)
class Rebaseline:
    tool_id: str
    recipes: tuple[str, ...]  # the recipe asked for, or every configured recipe
    by: str
    reason: str
    command_id: str | None = None  # None: not de-duplicated


def message(
    tool_id: str, recipe_id: str | None, by: str, reason: str, ts: float, command_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": SCHEMA, "tool_id": tool_id, "by": by, "reason": reason, "ts": ts}
    if command_id is not None:
        body["command_id"] = command_id
    if recipe_id is not None:
        body["recipe_id"] = recipe_id
    return body


def parse(payload: bytes, tool_ids: Collection[str], recipes: Collection[str]) -> Rebaseline | Rejected:
    """The command in ``payload``, checked against the configured tools and recipes."""
    data = json_object(payload)
    if isinstance(data, Rejected):
        return data
    if data.get("schema", SCHEMA) != SCHEMA:
        return Rejected("bad_value", f"schema must be {SCHEMA}")
    ids = string_fields(data, ("tool_id", "by"))
    if isinstance(ids, Rejected):
        return ids
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        return Rejected("bad_value", "reason must be a string")
    command_id = data.get("command_id")
    if command_id is not None and not (isinstance(command_id, str) and 0 < len(command_id) <= MAX_COMMAND_ID):
        return Rejected("bad_value", f"command_id must be a string of 1 to {MAX_COMMAND_ID} characters")
    if ids["tool_id"] not in tool_ids:
        return Rejected("unknown_tool", f"tool {ids['tool_id']!r} is not configured")
    if "recipe_id" in data:
        recipe = string_fields(data, ("recipe_id",))
        if isinstance(recipe, Rejected):
            return recipe
        if recipe["recipe_id"] not in recipes:
            return Rejected("unknown_recipe", f"recipe {recipe['recipe_id']!r} is not configured")
        chosen: tuple[str, ...] = (recipe["recipe_id"],)
    else:
        chosen = tuple(recipes)
    return Rebaseline(ids["tool_id"], chosen, ids["by"], reason[:MAX_REASON], command_id)
