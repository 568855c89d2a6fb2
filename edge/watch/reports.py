"""The station's messages besides defect events (pure): wafer summaries, wafer alerts and drift events.

Each carries its schema name and version, a time-ordered id (the consumers' idempotency key, like
``event_id``) and goes through the durable outbox to MQTT:

    {prefix}/{station}/wafers/{tool_id}   edge.wafer_summary/1
    {prefix}/{station}/alerts/{tool_id}   edge.wafer_alert/1   (severity at or over wafers.alert_severity)
    {prefix}/{station}/drift/{tool_id}    edge.drift_event/1   (raised, then cleared)
"""

from __future__ import annotations

from typing import Any

WAFER_SCHEMA = "edge.wafer_summary/1"
ALERT_SCHEMA = "edge.wafer_alert/1"
DRIFT_SCHEMA = "edge.drift_event/1"


def topic(prefix: str, station: str, kind: str, tool_id: str) -> str:
    """``kind``: wafers | alerts | drift."""
    return f"{prefix}/{station}/{kind}/{tool_id}"


def wafer_summary(
    summary_id: str,
    ts: float,
    station: str,
    tool_id: str,
    recipe_id: str,
    lot_id: str,
    wafer_id: str,
    ended_by: str,
    analysis: dict[str, Any],
) -> dict[str, Any]:
    """``analysis``: ``edge.watch.wafer_map.summarise`` of the wafer's dies."""
    return {
        "schema": WAFER_SCHEMA,
        "summary_id": summary_id,
        "ts": ts,
        "station": station,
        "tool_id": tool_id,
        "recipe_id": recipe_id,
        "lot_id": lot_id,
        "wafer_id": wafer_id,
        "ended_by": ended_by,
        **analysis,
    }


def wafer_alert(alert_id: str, summary: dict[str, Any], level: float) -> dict[str, Any]:
    """An alert for a wafer whose severity reached ``level``; it names the summary it comes from."""
    return {
        "schema": ALERT_SCHEMA,
        "alert_id": alert_id,
        "ts": summary["ts"],
        "station": summary["station"],
        "tool_id": summary["tool_id"],
        "recipe_id": summary["recipe_id"],
        "lot_id": summary["lot_id"],
        "wafer_id": summary["wafer_id"],
        "summary_id": summary["summary_id"],
        "severity": summary["severity"],
        "level": level,
        "pattern": summary["signature"]["pattern"],
        "defective_dies": sum(summary["classes"].values()),
        "dies_inspected": summary["dies_inspected"],
    }


def drift_event(
    event_id: str,
    ts: float,
    station: str,
    tool_id: str,
    recipe_id: str,
    kind: str,
    raised: bool,
    statistic: float,
    threshold: float,
    detail: dict[str, Any],
) -> dict[str, Any]:
    """``kind``: score (KS of PASS anomaly scores) | process (parameter mean shift, in sigmas)."""
    return {
        "schema": DRIFT_SCHEMA,
        "event_id": event_id,
        "ts": ts,
        "station": station,
        "tool_id": tool_id,
        "recipe_id": recipe_id,
        "kind": kind,
        "state": "raised" if raised else "cleared",
        "statistic": round(float(statistic), 4),
        "threshold": threshold,
        "detail": detail,
    }
