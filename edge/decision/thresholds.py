"""The daemon's side of calibration: thresholds from the store, what each batch adds to it, reviews and lot ends.

The store (``calibration.store``) is shared with the engineers' CLI; this module reads thresholds into a cache and
reloads it when the file changed (SQLite's ``data_version``), so an override from the CLI applies without a restart.
All store calls run on the daemon's calibration thread (``Shared.calibration_db``), never the outbox's: a lot end
holds no reply. A batch's rows (``CalibrationRows``) are recorded in the outbox with its results, in the same
transaction, and moved here after the replies; a crash in between leaves them in the outbox for the next start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from calibration.controller import ClassSettings, Stages
from calibration.errors import RequestRefused, UnknownEvent
from calibration.store import DISPOSITIONS, CalibrationStore, Candidate, Reviewable, certified_bound
from calibration.table import ThresholdTable
from edge.config import Config
from edge.flow import DEFECT, REVIEW, Outcome, Rejected
from edge.ops.logs import get
from edge.ops.metrics import Metrics

log = get("edge.decision.thresholds")
MAX_COMMENT = 1000  # characters of a review's comment


@dataclass(frozen=True)
class CalibrationRows:
    """What one batch adds to the calibration store, written to the outbox with the batch (durable with its results)
    and moved to the store after the replies."""

    inspected: list[tuple[str, str, str]]  # (recipe, tool, lot_id) per inspected die
    candidates: list[Candidate]
    reviewable: list[Reviewable]

    def dumps(self) -> str:
        return json.dumps([self.inspected, self.candidates, self.reviewable], separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> CalibrationRows:
        inspected, candidates, reviewable = json.loads(text)
        return cls([tuple(r) for r in inspected], [tuple(r) for r in candidates], [tuple(r) for r in reviewable])


@dataclass(frozen=True)
class Review:
    event_id: str
    disposition: str  # real, false, relabel or novel
    reviewer: str
    label: str | None = None  # the class a relabel names
    comment: str = ""


def parse_review(payload: bytes, classes: tuple[str, ...]) -> Review | Rejected:
    """``{"event_id": str, "disposition": "real" | "false" | "relabel" | "novel", "reviewer": str,
    "class": str (a relabel's; one of ``classes``), "comment": str (optional)}`` from the reviews topic."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        return Rejected("bad_json", str(err)[:200])
    if not isinstance(data, dict):
        return Rejected("bad_json", "a review is a JSON object")
    event_id, disposition, reviewer = data.get("event_id"), data.get("disposition"), data.get("reviewer")
    label, comment = data.get("class"), data.get("comment", "")
    if not isinstance(event_id, str) or not event_id:
        return Rejected("missing_key", "event_id")
    if not isinstance(disposition, str) or disposition not in DISPOSITIONS:
        return Rejected("bad_value", f"disposition must be one of {list(DISPOSITIONS)}")
    if not isinstance(reviewer, str) or not reviewer:
        return Rejected("missing_key", "reviewer")
    if disposition == "relabel" and (not isinstance(label, str) or label not in classes):
        return Rejected("bad_value", "class: a relabel names one of the model's classes")
    if label is not None and disposition != "relabel":
        return Rejected("bad_value", "class: only a relabel names a class")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        return Rejected("bad_value", f"comment: text of at most {MAX_COMMENT} characters")
    return Review(event_id, disposition, reviewer, label, " ".join(comment.split()))


def apply_review(store: CalibrationStore, payload: bytes, classes: tuple[str, ...]) -> str:
    """One review message (MQTT, or the review service on a reviewer's behalf) into the calibration store: the
    one path every disposition takes. ``accepted``, or why not (the MQTT rejection reasons, ``unknown_event``,
    ``already_used``)."""
    parsed = parse_review(payload, classes)
    if isinstance(parsed, Rejected):
        return parsed.reason
    try:
        store.review(parsed.event_id, parsed.disposition, parsed.reviewer, parsed.label, parsed.comment)
    except RequestRefused as err:
        log.warning("review_rejected", event_id=parsed.event_id, error=str(err))
        return "unknown_event" if isinstance(err, UnknownEvent) else "already_used"
    return "accepted"


def candidate_id(tool_id: str, frame_id: str) -> str:
    """Id of a suppressed candidate that made no event (an AUDIT sample uses its event id)."""
    return f"candidate:{tool_id}:{frame_id}"


class Calibration:
    """Thresholds per recipe x tool x class from the store, cached; batch records; reviews; lot ends."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        c = cfg.calibration
        self.cfg, self.metrics = cfg, metrics
        self.store = CalibrationStore(c.path, Stages(c.initial_lots, c.window_lots, c.real_rate))
        static = ThresholdTable(cfg.decision.default_threshold, {
            (t.recipe, t.tool, t.defect_class): t.threshold for t in cfg.decision.thresholds})  # fmt: skip
        classes = cfg.decision.classes[1:]
        for recipe in cfg.recipes:
            kind = c.controllers.get(recipe, c.controller)
            for tool in sorted(cfg.tool_ids):
                for name in classes:  # per class: the configured start value inside the configured bounds
                    start = min(max(static.get(recipe, tool, name), c.lower), c.upper)
                    settings = ClassSettings(start, c.lower, c.upper, c.step_up, c.step_down, c.fpr_budget)
                    self.store.ensure_profile(recipe, tool, (name,), kind, settings)
                    changed = self.store.reconcile(recipe, tool, name, kind, settings)
                    if changed:  # a config changed since the last start: applied, audited under "config"
                        log.info("calibration_config_applied", recipe=recipe, tool=tool, defect_class=name,
                                 keys=changed)  # fmt: skip
        self._seen = -1
        self._thresholds: dict[tuple[str, str, str], float] = {}
        self._statuses: dict[tuple[str, str, str], str] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self.refresh()

    def close(self) -> None:
        self.store.close()

    def refresh(self, force: bool = False) -> bool:
        """Reload the cache when another connection (the CLI) changed the store since the last look, or when
        ``force``d after this one's own change; True when it reloaded."""
        version = self.store.data_version()
        if version == self._seen and self._thresholds and not force:
            return False
        self._seen = version
        for recipe, tool, _, profile_version in self.store.profiles():
            self._versions[(recipe, tool)] = profile_version
            for name, state in self.store.states(recipe, tool).items():
                key = (recipe, tool, name)
                self._thresholds[key] = state.threshold
                self._statuses[key] = state.status
                labels = (recipe, tool, name)
                self.metrics.calib_threshold.labels(*labels).set(state.threshold)
                self.metrics.calib_fpr.labels(*labels).set(state.fpr_window)
                bound = certified_bound(state)
                if bound is not None:
                    self.metrics.calib_certified.labels(*labels).set(bound)
                self.metrics.calib_status.labels(*labels).state(state.status)
                self.metrics.calib_budget.labels(*labels).set(state.settings.fpr_budget)
        return True

    def threshold(self, recipe: str, tool: str, defect_class: str) -> float:
        return self._thresholds.get((recipe, tool, defect_class), self.cfg.decision.default_threshold)

    def facts(self, recipe: str, tool: str, defect_class: str) -> dict[str, int | str]:
        """What an event carries: the recipe x tool profile version and the status of its class (``n/a`` for an
        event without a defect class, such as an UNCLASSIFIED review)."""
        return {"profile_version": self._versions.get((recipe, tool), 0),
                "status": self._statuses.get((recipe, tool, defect_class), "n/a")}  # fmt: skip

    def rows(self, outcomes: Iterable[Outcome], event_ids: Iterable[str | None],
             live: Mapping[str, str] | None = None) -> CalibrationRows | None:  # fmt: skip
        """What a batch adds to calibration (pure): every inspected die counts; every defect-class candidate
        (flagged or suppressed) is kept with its confidence, under its event id when it made an event. None when
        no die of the batch was inspected. ``live``: the live model versions; a die another version decided (a
        canary) leaves only its reviewable event: its confidences are not the ones these thresholds are tuned to."""
        inspected, candidates, reviewable = [], [], []
        for outcome, event_id in zip(outcomes, event_ids):
            v, h = outcome.verdict, outcome.frame.header
            if v is None:
                continue
            counted = not live or not outcome.models or outcome.models == live
            if counted:
                inspected.append((h.recipe_id, h.tool_id, h.lot_id))
            flagged = v.decision == DEFECT
            name = v.defect_class if flagged else v.top_k[0][0]
            judged = event_id is not None and (flagged or v.audit or v.decision == REVIEW)  # events reviewers judge
            if judged:
                predicted = v.defect_class if v.decision == REVIEW else name  # UNCLASSIFIED for a REVIEW
                reviewable.append((cast(str, event_id), h.recipe_id, h.tool_id, h.lot_id,
                                   cast(str, outcome.event_decision), predicted))  # fmt: skip
            if counted and (flagged or v.suppressed):
                reviewed = judged and v.decision != REVIEW  # DEFECT and AUDIT events: their class is judged
                cid = cast(str, event_id) if reviewed else candidate_id(h.tool_id, h.frame_id)
                candidates.append((cid, h.recipe_id, h.tool_id, h.lot_id, name, v.confidence, flagged))
        return CalibrationRows(inspected, candidates, reviewable) if inspected or reviewable else None

    def apply(self, batch: str | None, rows: CalibrationRows) -> None:
        """Write a batch's rows into the store; a ``batch`` id already applied changes nothing (a restart applies
        what the outbox still holds, perhaps again)."""
        self.store.record(rows.inspected, rows.candidates, rows.reviewable, batch=batch)

    def record(self, outcomes: Iterable[Outcome], event_ids: Iterable[str | None]) -> None:
        """``rows`` then ``apply``, for a caller with no outbox."""
        rows = self.rows(outcomes, event_ids)
        if rows is not None:
            self.apply(None, rows)

    def review(self, payload: bytes) -> str:
        """Apply one review message; returns ``accepted`` or the reason it was rejected."""
        return apply_review(self.store, payload, self.cfg.decision.classes)

    def lot_end(self, recipe: str, tool: str, lot_id: str) -> dict[str, tuple[float, float]]:
        c = self.cfg.calibration
        moved = self.store.close_lot(recipe, tool, lot_id, c.denominators.get(recipe, c.fpr_denominator))
        self.refresh(force=True)
        for name in self.cfg.decision.classes[1:]:
            escape = self.store.escape_estimate(recipe, tool, name, c.escape_window_lots)
            if escape is not None:
                self.metrics.calib_escape.labels(recipe, tool, name).set(escape)
        return moved
