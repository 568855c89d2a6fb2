"""Watching the line beside the per-frame verdicts: process excursions of each wafer's MES log, drift of
each recipe x tool (PASS anomaly scores and process parameters), and wafer summaries with alerts.

Bookkeeping only: it keeps bounded state per recipe x tool and per open wafer, updates the metrics,
and returns the outbox rows (wafer summaries, alerts, drift events) for the daemon to record. The
drift references and windows and the parameter statistics live in memory; the daemon saves them
(``export_state``) and a restart picks them up (``restore_state``), so a restart is not a silent
re-baseline. They start again for one tool when an engineer re-baselines it (``edge.watch.rebaseline``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from edge.config import Config
from edge.flow import PASS, WAFER, DieRow, EventRow, LotEvent, Outcome, ProcessLog, WaferKey
from edge.ops.metrics import Metrics
from edge.publish.events import EventIds
from edge.watch import reports, state_codec
from edge.watch.drift import PROCESS, SCORE, Change, ScoreDrift
from edge.watch.param_drift import ParamDrift
from edge.watch.process_stats import ProcessStats
from edge.watch.rebaseline import Rebaseline
from edge.watch.wafer_map import DieResult, summarise
from edge.watch.wafers import OpenWafer, WaferTracker

REBASELINED = "rebaselined"  # the state name of the command ids applied per recipe x tool
REMEMBERED_COMMANDS = 32  # per recipe x tool: far more than a broker redelivers


class LineWatch:
    def __init__(self, cfg: Config, metrics: Metrics, ids: EventIds, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._ids = ids
        self._clock = clock
        d = cfg.drift
        self._stats = ProcessStats(cfg.process.anomaly_sigma, cfg.process.min_wafers)
        self._scores = ScoreDrift(d.reference_frames, d.window_frames, d.ks_threshold, d.clear_ratio)
        self._params = ParamDrift(d.reference_wafers, d.window_wafers, d.shift_sigma, d.clear_ratio)
        self._wafers = WaferTracker()
        self._detectors = {"score": self._scores, "process": self._params, "parameters": self._stats}
        self._applied: dict[tuple[str, str], deque[str]] = {}  # re-baseline command ids, newest last
        metrics.drift_threshold.labels("score").set(d.ks_threshold)
        metrics.drift_threshold.labels("process").set(d.shift_sigma)

    def _known(self, recipe_id: str, tool_id: str) -> bool:
        return recipe_id in self.cfg.recipes and tool_id in self.cfg.tool_ids

    # ---- MES ----------------------------------------------------------------------------------
    def process_log(self, log: ProcessLog) -> tuple[ProcessLog, list[EventRow]]:
        """The log with its anomalous parameters, and a drift row when process drift flips."""
        if not self._known(log.recipe_id, log.tool_id):
            return log, []
        key = (log.recipe_id, log.tool_id)
        names = self.cfg.recipes[log.recipe_id].parameters
        anomalous = self._stats.observe(key, names, log.params)
        if anomalous:
            self.metrics.process_excursions.labels(log.tool_id).inc()
        change = self._params.add(key, names, log.params)
        largest = self._params.largest(key)
        if largest is not None:
            self.metrics.drift_param_shift.labels(*key).set(largest[1])
        rows = [self._drift_row(change, self.cfg.drift.shift_sigma)] if change else []
        return replace(log, anomalous=tuple(anomalous)), rows

    def lot_event(self, event: LotEvent) -> list[tuple[WaferKey, str]]:
        """The open wafers the event ends, with why, for the daemon to keep until they are summarised."""
        keys: list[WaferKey] = []
        if event.kind == "wafer_end" and event.wafer_id is not None:
            keys = self._wafers.end_wafer((event.tool_id, event.lot_id, event.wafer_id))
        elif event.kind == "lot_end":
            keys = self._wafers.end_lot(event.tool_id, event.lot_id)
        return [(key, event.kind) for key in keys]

    def export_state(self) -> dict[str, dict[tuple[str, str], bytes]]:
        """Drift and parameter statistics by detector and recipe x tool, as bytes to keep."""
        states = {name: detector.export() for name, detector in self._detectors.items()}
        states[REBASELINED] = {key: state_codec.dump(list(ids)) for key, ids in self._applied.items()}
        return states

    def restore_state(self, states: dict[str, dict[tuple[str, str], bytes]]) -> dict[str, list[tuple[str, str]]]:
        """Take what ``export_state`` gave in a previous run, for configured recipes and tools; per
        detector, the keys that start afresh instead (unreadable, or their windows were resized)."""
        refused = {}
        for name, detector in self._detectors.items():
            known = {key: blob for key, blob in states.get(name, {}).items() if self._known(*key)}
            refused[name] = detector.restore(known)
        refused[REBASELINED] = []
        for key, blob in states.get(REBASELINED, {}).items():
            if not self._known(*key):
                continue
            try:
                ids = state_codec.load(blob, {})
            except ValueError:
                ids = None
            if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                self._applied[key] = deque(ids, REMEMBERED_COMMANDS)
            else:
                refused[REBASELINED].append(key)
        for key in self._scores.tracked_keys():
            statistic = self._scores.statistic(key)
            if statistic is not None:
                self.metrics.drift_ks.labels(*key).set(statistic)
            self.metrics.drift_active.labels(*key, SCORE).set(int(self._scores.raised(key)))
        for key in self._params.tracked_keys():
            largest = self._params.largest(key)
            if largest is not None:
                self.metrics.drift_param_shift.labels(*key).set(largest[1])
            self.metrics.drift_active.labels(*key, PROCESS).set(int(self._params.raised(key)))
        return refused

    def repeated(self, command: Rebaseline) -> bool:
        """Whether this command (by its ``command_id``) was applied already to every recipe it names."""
        return command.command_id is not None and all(
            command.command_id in self._applied.get((recipe, command.tool_id), ()) for recipe in command.recipes
        )

    def rebaseline(self, command: Rebaseline) -> list[EventRow]:
        """Forget the tool's drift references and parameter statistics for the recipes named.

        What comes next forms the new reference. A drift that was raised is cleared with an event
        saying who re-baselined and why; the statistic gauges go until the new reference is full.
        """
        rows = []
        for recipe in command.recipes:
            key = (recipe, command.tool_id)
            if command.command_id is not None:
                self._applied.setdefault(key, deque(maxlen=REMEMBERED_COMMANDS)).append(command.command_id)
            self._stats.reset(key)
            self.metrics.drift_ks.remove(*key)
            self.metrics.drift_param_shift.remove(*key)
            for detector, threshold in (
                (self._scores, self.cfg.drift.ks_threshold),
                (self._params, self.cfg.drift.shift_sigma),
            ):
                change = detector.reset(key)
                if change:
                    detail = {**change.detail, "by": command.by, "reason": command.reason}
                    rows.append(self._drift_row(replace(change, detail=detail), threshold))
        return rows

    # ---- frames -------------------------------------------------------------------------------
    def results(self, outcomes: Iterable[Outcome], now: float) -> list[EventRow]:
        """Feed a batch's outcomes to the wafers and to score drift; drift rows when it flips."""
        rows = []
        for outcome in outcomes:
            h = outcome.frame.header
            d = die_row(outcome)
            die = DieResult(d.x, d.y, d.decision, d.defect_class)
            if not self._wafers.add(outcome.frame.wafer_key, h.recipe_id, die, now):
                self.metrics.wafer_late_dies.labels(h.tool_id).inc()
            if outcome.decision != PASS:
                continue
            key = (h.recipe_id, h.tool_id)
            change = self._scores.add(key, outcome.score)
            statistic = self._scores.statistic(key)
            if statistic is not None:
                self.metrics.drift_ks.labels(*key).set(statistic)
            if change:
                rows.append(self._drift_row(change, self.cfg.drift.ks_threshold))
        return rows

    def due(self, now: float, in_work: Callable[[WaferKey], bool]) -> Summaries:
        """Summaries (and alerts) of the wafers that ended and have no frame in work."""
        w = self.cfg.wafers
        return self._summaries(self._wafers.due(now, w.idle_close_s, w.end_grace_s, in_work))

    def close_ended(self) -> Summaries:
        """At a stop: summaries of the wafers that ended; the open ones go on after the restart."""
        return self._summaries(self._wafers.close_ended())

    def restore(self, dies: Iterable[DieRow], now: float, ends: Iterable[tuple[WaferKey, str]] = ()) -> int:
        """Reopen the wafers a previous run left open, from their recorded dies (oldest first, so each
        tool's last wafer is its current one) and the ends the MES had announced; the number of wafers
        reopened."""
        wafers = set()
        for d in dies:
            self._wafers.add(d.wafer_key, d.recipe_id, DieResult(d.x, d.y, d.decision, d.defect_class), now)
            wafers.add(d.wafer_key)
        for key, why in ends:
            self._wafers.end_wafer(key, why)
        return len(wafers)

    def _summaries(self, wafers: list[OpenWafer]) -> Summaries:
        return Summaries([row for wafer in wafers for row in self._summary_rows(wafer)], [w.key for w in wafers])

    # ---- rows ---------------------------------------------------------------------------------
    def _summary_rows(self, wafer: OpenWafer) -> list[EventRow]:
        tool, lot, wafer_id = wafer.key
        prefix, station = self.cfg.mqtt.prefix, self.cfg.station
        body = reports.wafer_summary(
            self._ids.new(),
            self._clock(),
            station,
            tool,
            wafer.recipe_id,
            lot,
            wafer_id,
            wafer.ended_by or "idle",
            summarise(list(wafer.dies.values())),
        )
        self.metrics.wafers_summarised.labels(tool).inc()
        self.metrics.wafer_severity.labels(tool).observe(body["severity"])
        rows = [_row(body["summary_id"], reports.topic(prefix, station, "wafers", tool), WAFER, body)]
        level = self.cfg.wafers.alert_severity
        if body["severity"] >= level:
            alert = reports.wafer_alert(self._ids.new(), body, level)
            self.metrics.wafer_alerts.labels(tool, alert["pattern"]).inc()
            rows.append(_row(alert["alert_id"], reports.topic(prefix, station, "alerts", tool), "ALERT", alert))
        return rows

    def _drift_row(self, change: Change, threshold: float) -> EventRow:
        recipe, tool = change.key
        self.metrics.drift_active.labels(recipe, tool, change.kind).set(int(change.raised))
        if change.raised:
            self.metrics.drift_events.labels(tool, change.kind).inc()
        body = reports.drift_event(
            self._ids.new(),
            self._clock(),
            self.cfg.station,
            tool,
            recipe,
            change.kind,
            change.raised,
            change.statistic,
            threshold,
            change.detail,
        )
        return _row(
            body["event_id"], reports.topic(self.cfg.mqtt.prefix, self.cfg.station, "drift", tool), "DRIFT", body
        )


@dataclass(frozen=True)
class Summaries:
    """Outbox rows of wafer summaries (and alerts), and the wafers they summarise."""

    rows: list[EventRow]
    wafers: list[WaferKey]


def die_row(outcome: Outcome) -> DieRow:
    """What the outbox keeps of a die until its wafer is summarised."""
    h, verdict = outcome.frame.header, outcome.verdict
    return DieRow(
        h.tool_id,
        h.lot_id,
        h.wafer_id,
        h.die[0],
        h.die[1],
        h.recipe_id,
        outcome.decision,
        verdict.defect_class if verdict else None,
    )


def _row(row_id: str, topic: str, kind: str, body: dict[str, Any]) -> EventRow:
    return EventRow(row_id, topic, kind, json.dumps(body, separators=(",", ":")))
