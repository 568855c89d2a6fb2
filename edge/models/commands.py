"""Model lifecycle commands and what answers them (pure): ``edge.model_command/1`` in, ``edge.model_result/1`` and
``edge.model_event/1`` out.

A command, as ``edge-inspect models`` sends it on ``{prefix}/{station}/{models.commands_topic}``::

    {"schema": "edge.model_command/1", "command_id": "5f0c...", "action": "canary", "version": "3",
     "tools": ["AOI-01"], "fraction": 0.0, "by": "j.doe", "reason": "retrain on the Nov scratches", "ts": 1795000000.0}

``action``: ``list``, ``status``, ``shadow-report`` (read only), ``deploy`` (``source``: a folder on the station, as
``edge.models.repository.locate`` reads it; ``version`` in it, default its newest), ``shadow`` (``version``,
``fraction`` of frames, default 1), ``canary`` (``version``, ``tools`` and/or ``fraction``), ``promote``
(``version``), ``rollback`` (``version``, default the one live before). ``by`` (who) is required; ``reason`` is
free text. ``command_id`` (required) makes it idempotent: a command seen before is answered with its first result,
never applied twice.

The result goes to ``{prefix}/{station}/{models.results_topic}`` with the same ``command_id``; every change of what
serves also publishes ``edge.model_event/1`` on ``{prefix}/{station}/{models.events_topic}``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from edge.flow import Rejected
from edge.mes.context import json_object, string_fields

SCHEMA = "edge.model_command/1"
RESULT_SCHEMA = "edge.model_result/1"
EVENT_SCHEMA = "edge.model_event/1"
READ_ONLY = ("list", "status", "shadow-report")
CHANGES = ("deploy", "shadow", "canary", "promote", "rollback")
ACTIONS = READ_ONLY + CHANGES
MAX_REASON = 200
MAX_COMMAND_ID = 64
MAX_SOURCE = 4096
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
DONE, REPEATED, REFUSED, FAILED = "done", "repeated", "refused", "failed"


@dataclass(frozen=True)
class Command:
    command_id: str
    action: str
    by: str
    reason: str = ""
    version: str | None = None
    source: str | None = None
    fraction: float | None = None
    tools: tuple[str, ...] = ()
    stop: bool = False  # shadow / canary: end the trial of ``version`` instead of starting one

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"schema": SCHEMA, "command_id": self.command_id, "action": self.action,
                                "by": self.by, "reason": self.reason}  # fmt: skip
        for key in ("version", "source", "fraction"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.tools:
            body["tools"] = list(self.tools)
        if self.stop:
            body["stop"] = True
        return body


def parse(payload: bytes, tool_ids: Collection[str]) -> Command | Rejected:
    """The command in ``payload``, its fields checked (not yet against what the station holds)."""
    data = json_object(payload)
    if isinstance(data, Rejected):
        return data
    if data.get("schema", SCHEMA) != SCHEMA:
        return Rejected("bad_value", f"schema must be {SCHEMA}")
    ids = string_fields(data, ("command_id", "action", "by"))
    if isinstance(ids, Rejected):
        return ids
    action = ids["action"]
    if action not in ACTIONS:
        return Rejected("bad_value", f"action must be one of {', '.join(ACTIONS)}, not {action[:40]!r}")
    if len(ids["command_id"]) > MAX_COMMAND_ID:
        return Rejected("bad_value", f"command_id must have at most {MAX_COMMAND_ID} characters")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        return Rejected("bad_value", "reason must be a string")
    fields = _fields(action, data, tool_ids)
    if isinstance(fields, Rejected):
        return fields
    version, source, fraction, tools, stop = fields
    return Command(ids["command_id"], action, ids["by"], reason[:MAX_REASON], version, source, fraction,
                   tuple(dict.fromkeys(tools)), stop)  # fmt: skip


def _fields(
    action: str, data: dict[str, Any], tool_ids: Collection[str]
) -> tuple[str | None, str | None, float | None, list[str], bool] | Rejected:
    """The action's own fields: version, source, fraction, tools, stop."""
    version = data.get("version")
    if version is not None and not (isinstance(version, str | int) and _VERSION.match(str(version))):
        return Rejected("bad_value", f"version must be a positive version number, not {str(version)[:20]!r}")
    version = None if version is None else str(version)
    if action in ("shadow", "canary", "promote") and version is None:
        return Rejected("missing_key", f"{action} needs a version")
    source = data.get("source")
    if action == "deploy" and not (isinstance(source, str) and 0 < len(source) <= MAX_SOURCE):
        return Rejected("missing_key", "deploy needs source: a model repository folder on the station")
    if action != "deploy" and source is not None:
        return Rejected("bad_value", f"{action} takes no source")
    fraction = data.get("fraction")
    if fraction is not None and action not in ("shadow", "canary"):
        return Rejected("bad_value", f"{action} takes no fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, int | float)
                                 or not 0 <= fraction <= 1):  # fmt: skip
        return Rejected("bad_value", "fraction must be a number from 0 to 1")
    tools = data.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        return Rejected("bad_value", "tools must be a list of tool ids")
    if tools and action != "canary":
        return Rejected("bad_value", f"{action} takes no tools")
    unknown = sorted(set(tools) - set(tool_ids))
    if unknown:
        return Rejected("unknown_tool", f"tools not configured: {', '.join(unknown)[:120]}")
    stop = data.get("stop", False)
    if not isinstance(stop, bool) or (stop and action not in ("shadow", "canary")):
        return Rejected("bad_value", "stop is true or false, for shadow and canary only")
    if action == "canary" and not stop and not tools and not fraction:
        return Rejected("missing_key", "canary needs tools, a fraction above 0, or both")
    return version, source, None if fraction is None else float(fraction), tools, stop


def result(command: Command | None, command_id: str, status: str, detail: str, body: Mapping[str, Any],
           station: str, ts: float) -> dict[str, Any]:  # fmt: skip
    """The answer to a command: ``done`` (``ok``), ``repeated`` (the first answer again), ``refused`` (not applied:
    a bad command, or one the station's state does not allow) or ``failed`` (tried, and undone)."""
    return {
        "schema": RESULT_SCHEMA, "command_id": command_id, "action": command.action if command else None,
        "ok": status in (DONE, REPEATED), "status": status, "detail": detail, "result": dict(body),
        "station": station, "by": command.by if command else None, "ts": ts,
    }  # fmt: skip


def event(event_id: str, action: str, version: str | None, previous: str | None, route: Mapping[str, Any],
          models: Mapping[str, Mapping[str, str]], by: str, reason: str, command_id: str | None, station: str,
          ts: float, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """``edge.model_event/1``: a change of what serves (``action``: deploy, shadow, canary, promote, rollback, or
    ``guardrail_rollback`` when a guardrail ended a canary), with the route it leaves and the versions' digests."""
    return {
        "schema": EVENT_SCHEMA, "event_id": event_id, "ts": ts, "station": station, "action": action,
        "version": version, "previous": previous, "route": dict(route),
        "models": {k: dict(v) for k, v in models.items()}, "by": by, "reason": reason, "command_id": command_id,
        "detail": dict(detail or {}),
    }  # fmt: skip
