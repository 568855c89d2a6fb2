"""The model lifecycle on a running station: deploy a version beside the live one, try it in shadow or as a canary
under guardrails, promote it, roll back; every change audited, answered and announced.

Triton runs in explicit model control on the served view (``edge.models.repository.sync_view``): a change links the
new set of versions, asks Triton to load each model (it loads the versions added and drops those taken away; the
others keep serving untouched), and reads back what it serves. The live pointer (``Route``) switches between
two batches; a batch in flight finishes on the versions it started with, and a version leaves Triton only once no
batch uses it. Commands run one at a time; each has an id, and a repeated id gets its first answer again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from edge.decision.thresholds import parse_review
from edge.errors import EdgeError
from edge.flow import EventRow, Outcome, Rejected
from edge.inference.inspector import Inspector
from edge.inference.model_watch import ModelWatch, misfit
from edge.models import commands, repository
from edge.models.agreement import Agreement
from edge.models.commands import DONE, FAILED, REFUSED, REPEATED, Command
from edge.models.compare import Comparisons
from edge.models.guardrails import Breach, Guardrails
from edge.models.ledger import AuditRow, Ledger
from edge.models.served import CANARY, SHADOW, Route, Serving
from edge.ops.logs import get
from edge.publish.events import EventIds
from edge.shared import Shared

log = get("edge.models.lifecycle")

DRAIN_TIMEOUT_S = 30.0  # how long a version leaving Triton waits for the batches still using it
REVIEWABLE_KEPT = 20000  # canary-period events remembered for the review guardrails
CHECK_VALID_S = 600.0  # a check this recent, made since the version was loaded, stands for a switch
CHECK_BATCH = 2  # held frames per request of a check: small and paced, so the live batches get the CPU in between


class Refused(EdgeError):
    """A command the station's state does not allow: nothing was changed."""


class Loader(Protocol):
    """What the lifecycle asks Triton (``edge.inference.triton_client.TritonClient``)."""

    anomaly_model: str
    classifier_model: str

    async def load(self, model: str, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class Change:
    """What a command changed: the route it leaves, the version live before it, what to announce."""

    action: str
    version: str | None
    route: Route
    previous: str | None
    detail: dict[str, Any]


class Lifecycle:
    def __init__(
        self, shared: Shared, triton: Loader, inspector: Inspector, watch: ModelWatch, ledger: Ledger, ids: EventIds,
        record_rows: Callable[[list[EventRow]], Awaitable[None]],
        on_live_changed: Callable[[str, str, str, str], Awaitable[str]] | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg = shared.cfg
        self._db = shared.db
        self._spawn = shared.spawn
        self._metrics = shared.metrics
        self._triton = triton
        self._inspector = inspector
        self._watch = watch
        self._ledger = ledger
        self._ids = ids
        self._record_rows = record_rows
        self._on_live_changed = on_live_changed  # (old, new, who, why) -> how the calibration profiles followed
        self._names = (triton.anomaly_model, triton.classifier_model)
        self._lock = asyncio.Lock()
        self.route = Route("0")
        self.previous: str | None = None
        self.held: deque[Outcome] = deque(maxlen=cfg.models.held_frames)  # recent live verdicts, for checks
        self.agreement = Agreement(cfg.models.disagreements_kept)
        self.guard: Guardrails | None = None
        self._reviewable: dict[str, tuple[bool, str]] = {}  # event id -> (decided by the canary, decision)
        self._rolling_back = False
        self._switched_at = 0.0  # when the last change moved the route
        self._checks: dict[str, tuple[float, dict[str, Any]]] = {}  # version -> (when, its check since loaded)
        self.comparisons = Comparisons(inspector, self._metrics, cfg.models.compare_queue_batches, self._compared,
                                       self.agreement.timed, self.agreement.dropped)  # fmt: skip
        inspector.on_scored = self._scored

    @property
    def repository(self) -> Path | None:
        return self.cfg.models.repository

    # -- start ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Before the first frame: the route the ledger holds (or, the first time, the newest version served, adopted
        with an audit row), pinned on disk and loaded in Triton."""
        stored = await self._db(self._ledger.route)
        if stored is None:
            route, previous = Route(max(self._watch.pairs, key=int)), None
        else:
            route, previous = stored
        view = self.cfg.models.view
        if self.repository is not None and view is not None:
            served = set(self._watch.pairs)
            on_disk = repository.pairs(self.repository, self._names_list)
            missing = [v for v in route.serving if int(v) not in on_disk]
            for version in missing:  # a version gone from disk cannot serve again
                log.error("model_version_missing", version=version, repository=str(self.repository))
                route = route.without(version) if version != route.live else Route(max(served, key=int))
            linked = {str(v) for v in repository.served(view, self._names[0])}
            if set(route.serving) != served or linked != set(route.serving):
                try:
                    await self._pin_and_load(route.serving)
                except EdgeError as err:  # serve what Triton has; the next command tries again
                    log.error("model_pins_not_applied", error=str(err), wanted=route.serving)
        self._watch.route = route
        self.route = self._watch.apply(route)
        self.previous = previous
        if self.route.canary is not None:
            self.guard = Guardrails(self.cfg.models.guardrails, self.route.canary, time.time())
        if stored is None or self.route != stored[0]:
            audit = self._audit("adopt", "daemon", self.route.live, previous, "the route at start", None,
                                {"route": self.route.to_json()})  # fmt: skip
            await self._db(self._ledger.record, self.route, previous, audit, None, None)
        log.info("models_routed", route=self.route.to_json(), previous=previous)

    @property
    def _names_list(self) -> list[str]:
        return list(self._names)

    # -- commands ------------------------------------------------------------------------------------------------

    def on_command(self, payload: bytes) -> None:
        """A command from MQTT (router callback): handled in turn, answered on the results topic."""
        self._spawn(self._answer(payload))

    async def _answer(self, payload: bytes) -> None:
        await self.handle(payload)

    async def handle(self, payload: bytes) -> dict[str, Any]:
        """Apply one command; its answer (also recorded and published)."""
        parsed = commands.parse(payload, self.cfg.tool_ids)
        if isinstance(parsed, Rejected):
            return await self._rejected(payload, parsed)
        async with self._lock:
            first = await self._db(self._ledger.answered, parsed.command_id)
            if first is not None:
                self._metrics.model_commands.labels(parsed.action, REPEATED).inc()
                answer = {**first, "status": REPEATED, "ok": first.get("ok", False), "first_status": first["status"]}
                await self._publish([self._result_row(answer)])
                return answer
            t0, live_before = time.monotonic(), self.route.live
            change: Change | None = None
            try:
                body, change = await self._apply(parsed)
                status, detail = DONE, body.pop("detail", "")
            except Refused as err:
                body, status, detail = {}, REFUSED, str(err)
                await self._settle()
            except EdgeError as err:
                body, status, detail = {}, FAILED, str(err)
                log.error("model_command_failed", action=parsed.action, version=parsed.version, error=str(err))
                await self._settle()
            body["seconds"] = round(time.monotonic() - t0, 3)
            answer = commands.result(parsed, parsed.command_id, status, detail, body, self.cfg.station, time.time())
            self._metrics.model_commands.labels(parsed.action, status).inc()
            audit = None
            if parsed.action in commands.CHANGES:
                audit = self._audit(parsed.action, parsed.by, parsed.version if change is None else change.version,
                                    live_before, parsed.reason, parsed.command_id,
                                    {"status": status, "detail": detail, **body})  # fmt: skip
            await self._db(self._ledger.record, None, None, audit, parsed.command_id, answer)
            rows = [self._result_row(answer)]
            if change is not None:
                rows.append(self._event_row(change, parsed.by, parsed.reason, parsed.command_id))
            await self._publish(rows)
            log.info("model_command", action=parsed.action, status=status, version=parsed.version, by=parsed.by,
                     detail=detail, seconds=body["seconds"])  # fmt: skip
            return answer

    async def _apply(self, command: Command) -> tuple[dict[str, Any], Change | None]:
        action = command.action
        if action == "list":
            return {"versions": await self._list()}, None
        if action == "status":
            return {**self.status(), "audit": await self.audit(10)}, None
        if action == "shadow-report":
            return self.agreement.report(self.cfg.models.disagreements_kept), None
        if self.repository is None:
            raise Refused("models.repository is not set: this station reads its versions but does not change them")
        if action == "deploy":
            return await self._deploy(command)
        assert command.version is not None or action == "rollback"
        if action == "shadow":
            return await self._trial(command, SHADOW)
        if action == "canary":
            return await self._trial(command, CANARY)
        if action == "promote":
            assert command.version is not None
            return await self._switch(command.version, command, checked=True)
        target = command.version or self.previous
        if target is None:
            raise Refused("no version to roll back to: none was live before this one (name one)")
        return await self._switch(target, command, checked=False)

    async def _deploy(self, command: Command) -> tuple[dict[str, Any], Change | None]:
        assert self.repository is not None and command.source is not None
        wanted = int(command.version) if command.version is not None else None
        try:
            number, copied = await asyncio.to_thread(
                repository.install, Path(command.source), wanted, self.repository, self._names_list
            )
        except (OSError, EdgeError) as err:
            raise Refused(f"cannot install from {command.source}: {err}") from None
        version = str(number)
        self._check_contract(version)
        role = self.route.role(version)
        if role is not None:
            return {"version": version, "copied": copied, "detail": f"version {version} is already {role}"}, None
        route = replace(self.route.without(self.route.staged) if self.route.staged else self.route, staged=version)
        t0 = time.monotonic()
        await self._pin_and_load(sorted(set(self.route.serving) | {version}, key=int))
        load_s = time.monotonic() - t0
        check = await self._checked(version, enforce=False)
        change = await self._commit(route, self.previous, "deploy", version, {"check": check})
        body = {"version": version, "copied": copied, "load_s": round(load_s, 3), "check": check,
                "models": self._watch.pairs[version].report()}  # fmt: skip
        return body, change

    async def _trial(self, command: Command, role: str) -> tuple[dict[str, Any], Change | None]:
        version = command.version
        assert version is not None
        current = self.route.canary if role == CANARY else self.route.shadow
        if command.stop:
            if current != version:
                raise Refused(f"version {version} is not the {role} (the {role} is {current or 'none'})")
            change = await self._commit(self.route.without(version), self.previous, f"{role}_stop", version, {})
            if role == CANARY:
                self.guard = None
            return {"version": version, "detail": f"{role} of version {version} ended"}, change
        if version == self.route.live:
            raise Refused(f"version {version} is live already")
        self._known(version)
        self._check_contract(version)
        route = self.route.without(version)
        if role == CANARY:
            route = replace(route.without(route.canary) if route.canary else route, canary=version,
                            canary_tools=frozenset(command.tools), canary_fraction=command.fraction or 0.0)  # fmt: skip
        else:
            route = replace(route.without(route.shadow) if route.shadow else route, shadow=version,
                            shadow_fraction=1.0 if command.fraction is None else command.fraction)  # fmt: skip
        await self._ensure_loaded(version)
        check = await self._checked(version, enforce=role == CANARY)
        self.agreement.forget(version)
        if role == CANARY:
            self.guard = Guardrails(self.cfg.models.guardrails, version, time.time())
            self._reviewable.clear()
        change = await self._commit(route, self.previous, role, version, {"check": check})
        return {"version": version, "route": route.to_json(), "check": check}, change

    async def _switch(self, version: str, command: Command, checked: bool) -> tuple[dict[str, Any], Change | None]:
        """Make ``version`` live: loaded beside the live one if it is not, checked on the held frames, then the
        pointer moves between two batches and the version that was live leaves once no batch uses it; the
        calibration profiles follow (``CalibrationStore.switch_model``)."""
        action, old = command.action, self.route.live
        if version == old:
            raise Refused(f"version {version} is live already")
        self._known(version)
        self._check_contract(version)
        t0 = time.monotonic()
        await self._ensure_loaded(version)
        load_s = time.monotonic() - t0
        check = await self._checked(version, enforce=checked)
        route = replace(self.route.without(version), live=version)
        if action == "promote" and self.route.canary == version:
            self.guard = None
        change = await self._commit(route, old, action, version, {"check": check})
        calibration = await self._thresholds_follow(old, version, command)
        change.detail["calibration"] = calibration
        body = {"version": version, "previous": old, "check": check, "calibration": calibration,
                "load_s": round(load_s, 3),
                "switch_s": round(self._switched_at - t0, 3),
                "release_s": round(time.monotonic() - self._switched_at, 3)}  # fmt: skip
        return body, change

    async def _thresholds_follow(self, old: str, new: str, command: Command) -> str:
        """The calibration profiles of the new live version: its own back, or the old ones carried over to
        revalidate; ``unchanged`` when this station keeps none."""
        if self._on_live_changed is None:
            return "unchanged"
        try:
            return await self._on_live_changed(old, new, command.by, command.reason or command.action)
        except EdgeError as err:  # the switch stands; the thresholds in force stay until an engineer acts
            log.error("calibration_not_switched", old=old, new=new, error=str(err))
            return f"failed: {err}"

    async def _commit(self, route: Route, previous: str | None, action: str, version: str | None,
                      detail: dict[str, Any]) -> Change:  # fmt: skip
        """Record the new route, route by it (between two batches), then let go of the versions it no longer
        names once no batch in work uses them."""
        leaving = [v for v in self.route.serving if v not in route.serving]
        await self._db(self._ledger.record, route, previous, None, None, None)
        self._watch.route = route
        self.route = self._watch.apply(route)
        self._switched_at = time.monotonic()
        self.previous = previous
        if leaving:
            await self._drain(leaving)
            try:
                await self._pin_and_load(self.route.serving)
            except EdgeError as err:  # still loaded: harmless but for memory; the next change tries again
                log.error("model_unload_failed", versions=leaving, error=str(err))
        return Change(action, version, self.route, previous, detail)

    async def _settle(self) -> None:
        """After a command that did not go through: Triton holds the route's versions again, no more."""
        if self.repository is None or set(self._watch.pairs) == set(self.route.serving):
            return
        try:
            await self._pin_and_load(self.route.serving)
        except EdgeError as err:
            log.error("model_unload_failed", versions=sorted(set(self._watch.pairs) - set(self.route.serving)),
                      error=str(err))  # fmt: skip

    async def _drain(self, versions: list[str]) -> None:
        if not await self._inspector.drained(versions, DRAIN_TIMEOUT_S):
            log.warning("model_drain_timed_out", versions=versions, seconds=DRAIN_TIMEOUT_S)

    async def _ensure_loaded(self, version: str) -> None:
        if version not in self._watch.pairs:
            await self._pin_and_load(sorted(set(self.route.serving) | {version}, key=int))
        if version not in self._watch.pairs:
            raise EdgeError(f"Triton did not bring version {version} up")

    async def _pin_and_load(self, versions: list[str]) -> None:
        """Link ``versions`` in the served view and have Triton load both models; what it serves is read back."""
        assert self.repository is not None and self.cfg.models.view is not None
        wanted = [int(v) for v in versions]
        try:
            await asyncio.to_thread(
                repository.sync_view, self.repository, self.cfg.models.view, self._names_list, wanted
            )
        except OSError as err:
            raise EdgeError(f"cannot update the served view {self.cfg.models.view}: {err}") from err
        timeout = self.cfg.models.load_timeout_s
        await asyncio.gather(*(self._triton.load(name, timeout) for name in self._names))
        await self._watch.learn()
        self._checks = {v: c for v, c in self._checks.items() if v in self._watch.pairs}  # a reload checks again

    async def _checked(self, version: str, enforce: bool) -> dict[str, Any]:
        """Score the held frames with ``version`` (warming it up): the share of decisions and top classes it shares
        with the verdicts the frames got. A version that cannot score them is refused; with ``enforce``, so is one
        agreeing less than ``models.min_check_agreement``. A check made since the version was loaded, at most
        ``CHECK_VALID_S`` ago, stands (``reused``): a staged version then switches in with no request of its own."""
        found = self._checks.get(version)
        if found is not None and time.monotonic() - found[0] <= CHECK_VALID_S:
            check = {**found[1], "reused": True}
        else:
            check = await self._check(version)
        decisions = check["decision_agreement"]
        if enforce and decisions is not None and decisions < self.cfg.models.min_check_agreement:
            raise Refused(f"version {version} agrees on {decisions:.1%} of {check['frames']} held frames' decisions, "
                          f"under models.min_check_agreement {self.cfg.models.min_check_agreement:.1%}")  # fmt: skip
        return check

    async def _check(self, version: str) -> dict[str, Any]:
        held = list(self.held)
        pair = self._watch.pairs[version]
        if not held:  # no live frame yet: a blank die warms it up, and proves it answers
            await self._inspector.warm(version)
            return {"frames": 0, "decision_agreement": None, "top_class_agreement": None}
        t0 = time.monotonic()
        copies = []
        for start in range(0, len(held), CHECK_BATCH):
            chunk = held[start : start + CHECK_BATCH]
            frames = [o.frame for o in chunk]
            t_chunk = time.monotonic()
            copies += await self._inspector.score(frames, self._inspector.inputs(frames), pair, live=False)
            await asyncio.sleep(time.monotonic() - t_chunk)  # paced: the live frames keep half the CPU
        failed = sum(c.verdict is None for c in copies)
        if failed:
            raise EdgeError(f"version {version} could not score {failed} of {len(held)} held frames")
        decisions = sum(o.decision == c.decision for o, c in zip(held, copies, strict=True)) / len(held)
        classes = sum(
            o.verdict is not None and c.verdict is not None and o.verdict.defect_class == c.verdict.defect_class
            for o, c in zip(held, copies, strict=True)
        ) / len(held)  # fmt: skip
        check = {"frames": len(held), "decision_agreement": round(decisions, 4),
                 "top_class_agreement": round(classes, 4), "seconds": round(time.monotonic() - t0, 3)}  # fmt: skip
        self._checks[version] = (time.monotonic(), check)
        return check

    def _known(self, version: str) -> None:
        assert self.repository is not None
        if int(version) not in repository.pairs(self.repository, self._names_list):
            raise Refused(f"version {version} is not in {self.repository} (deploy it first)")

    def _check_contract(self, version: str) -> None:
        """Refuse a version whose classifier declares other classes or process parameters than the station's."""
        assert self.repository is not None
        found = misfit(self.cfg, repository.facts(self.repository, self._names[1], int(version)))
        if found:
            raise Refused(f"version {version} does not fit this station's configuration: {found}")

    # -- the frames ----------------------------------------------------------------------------------------------

    def _scored(self, outcomes: list[Outcome], inputs: Any, serving: Serving) -> None:
        """A batch decided (before its replies): held for checks, timed for the guardrails, copied for comparison."""
        now = time.monotonic()
        route, guard = serving.route, self.guard
        for outcome in outcomes:
            version = next(iter(outcome.models.values()), route.live)
            if version == route.live and outcome.verdict is not None:
                self.held.append(outcome)
            if guard is not None and route.canary == guard.version:
                guard.frame(version == guard.version, outcome.verdict is not None, now - outcome.frame.received)
        if route.shadow is not None or route.canary is not None:
            self.comparisons.offer(outcomes, inputs, serving)
        self._judge()

    def _compared(self, decided: Outcome, copy: Outcome, role: str) -> None:
        disagreed = self.agreement.add(decided, copy)
        version = next(iter(copy.models.values()), "?")
        result = "failed" if disagreed is None else ("disagree" if disagreed else "agree")
        self._metrics.model_compared.labels(version, role, result).inc()
        guard = self.guard
        decided_by = next(iter(decided.models.values()), None)
        if guard is not None and disagreed is not None and decided_by == guard.version:
            guard.compared(disagreed)
            self._judge()

    def recorded(self, outcomes: list[Outcome], event_ids: list[str | None]) -> None:
        """A batch's events (recorder): during a canary, which version made each, for the review guardrails."""
        guard = self.guard
        if guard is None:
            return
        for outcome, event_id in zip(outcomes, event_ids, strict=True):
            decision = outcome.event_decision
            if event_id is None or decision is None or len(self._reviewable) >= REVIEWABLE_KEPT:
                continue
            self._reviewable[event_id] = (next(iter(outcome.models.values()), None) == guard.version, decision)

    def on_review(self, payload: bytes) -> None:
        """A review message (the calibration loop checks and counts it; here only a canary's events matter)."""
        review = parse_review(payload, self.cfg.decision.classes)
        if not isinstance(review, Rejected):
            self.reviewed(review.event_id, review.disposition != "false")

    def reviewed(self, event_id: str, real: bool) -> None:
        """A review came: counted once for the version that made the event, if a canary is being judged."""
        found = self._reviewable.pop(event_id, None)
        if found is not None and self.guard is not None:
            self.guard.reviewed(found[0], found[1], real)
            self._judge()

    def _judge(self) -> None:
        guard = self.guard
        if guard is None or self._rolling_back:
            return
        breach = guard.breach()
        if breach is not None:
            self._rolling_back = True
            self._metrics.model_guardrail_breaches.labels(breach.rule).inc()
            self._spawn(self._guardrail_rollback(guard.version, breach))

    async def _guardrail_rollback(self, version: str, breach: Breach) -> None:
        try:
            async with self._lock:
                if self.route.canary != version:
                    return
                log.warning("canary_rolled_back", version=version, **breach.to_json())
                guard, self.guard = self.guard, None
                detail = {"breach": breach.to_json(), "guardrails": guard.report() if guard else None}
                change = await self._commit(self.route.without(version), self.previous, "guardrail_rollback",
                                            version, detail)  # fmt: skip
                audit = self._audit("guardrail_rollback", "guardrail", version, self.route.live, breach.detail,
                                    None, detail)  # fmt: skip
                await self._db(self._ledger.record, None, None, audit, None, None)
                await self._publish([self._event_row(change, "guardrail", f"{breach.rule}: {breach.detail}", None)])
        finally:
            self._rolling_back = False

    # -- reports -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "route": self.route.to_json(), "previous": self.previous,
            "versions": {v: self._watch.pairs[v].report() for v in self.route.serving if v in self._watch.pairs},
            "guardrails": self.guard.report() if self.guard else None, "held_frames": len(self.held),
            "compare_dropped": dict(self.comparisons.dropped),
        }  # fmt: skip

    async def _list(self) -> list[dict[str, Any]]:
        if self.repository is None:
            return [{"version": v, "role": self.route.role(v), "models": p.report()}
                    for v, p in sorted(self._watch.pairs.items(), key=lambda kv: int(kv[0]))]  # fmt: skip
        return await asyncio.to_thread(self._listed, self.repository)

    def _listed(self, repo: Path) -> list[dict[str, Any]]:
        keys = ("digest", "data_digest", "trained_on", "precision", "installed_from", "pass_band", "reject_band")
        listed = []
        for number in repository.pairs(repo, self._names_list):
            version = str(number)
            models = {}
            for name in self._names:
                facts = repository.facts(repo, name, number)
                models[name] = {k: facts[k] for k in keys if k in facts}
            listed.append({"version": version, "role": self.route.role(version),
                           "loaded": version in self._watch.pairs, "models": models})  # fmt: skip
        return listed

    async def audit(self, limit: int = 20) -> list[dict[str, Any]]:
        return [row.to_json() for row in await self._db(self._ledger.audit, limit)]

    # -- records -------------------------------------------------------------------------------------------------

    def _audit(self, action: str, who: str, version: str | None, previous: str | None, reason: str,
               command_id: str | None, detail: dict[str, Any]) -> AuditRow:  # fmt: skip
        return AuditRow(time.time(), who, action, version, previous, reason, command_id, detail)

    def _topic(self, leaf: str) -> str:
        return f"{self.cfg.mqtt.prefix}/{self.cfg.station}/{leaf}"

    def _result_row(self, answer: dict[str, Any]) -> EventRow:
        return EventRow(self._ids.new(), self._topic(self.cfg.models.results_topic), "MODEL_RESULT", _json(answer))

    def _event_row(self, change: Change, by: str, reason: str, command_id: str | None) -> EventRow:
        models = {v: self._watch.pairs[v].digests for v in change.route.serving if v in self._watch.pairs}
        event_id = self._ids.new()
        body = commands.event(event_id, change.action, change.version, change.previous, change.route.to_json(),
                              models, by, reason, command_id, self.cfg.station, time.time(), change.detail)  # fmt: skip
        return EventRow(event_id, self._topic(self.cfg.models.events_topic), "MODEL_EVENT", _json(body))

    async def _publish(self, rows: list[EventRow]) -> None:
        await self._record_rows(rows)

    async def _rejected(self, payload: bytes, rejected: Rejected) -> dict[str, Any]:
        self._metrics.model_commands.labels("unknown", rejected.reason).inc()
        log.warning("model_command_rejected", reason=rejected.reason, detail=rejected.detail)
        command_id = _command_id(payload)
        answer = commands.result(None, command_id or "", REFUSED, f"{rejected.reason}: {rejected.detail}", {},
                                 self.cfg.station, time.time())  # fmt: skip
        if command_id is not None:  # a sender that can be told gets its answer
            await self._publish([self._result_row(answer)])
        return answer


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), default=str)


def _command_id(payload: bytes) -> str | None:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    found = data.get("command_id") if isinstance(data, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= commands.MAX_COMMAND_ID else None
