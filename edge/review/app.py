"""The review service's HTTP JSON API (aiohttp), over the station's capture store and calibration store.

    POST /api/login                      {"user", "password"} -> {"user", "role", "csrf"} and the session cookie
    POST /api/logout
    GET  /api/session                    -> {"user", "role", "csrf"}
    GET  /api/queue?tool=&recipe=&class=&decision=&lot=&wafer=&limit=
                                         pending DEFECT / REVIEW / AUDIT items, oldest first, with counts
    GET  /api/captures/{id}              one capture's facts and its review; 410 with the reason once gone
    GET  /api/captures/{id}/image.png?overlay=none|heatmap|attention
    POST /api/captures/{id}/decision?<queue filters>   {"disposition", "class"?, "comment"?} -> {"result", "next"}
    GET  /api/calibration                every recipe x tool profile: per class threshold, status, fpr_3lot, ...
    GET  /api/calibration/history?recipe=&tool=&class=&limit=
    POST /api/calibration/{override|unlock|bounds|transfer}   an engineer's change, with a reason
    GET  /metrics                        the service's Prometheus metrics

Every request but login and metrics needs a session (viewer and up); a decision needs a reviewer, a calibration
change an engineer, and both the session's CSRF token in ``X-CSRF-Token``. A decision is handed to
``edge.decision.thresholds.apply_review``, the function the daemon applies MQTT reviews with, under the logged-in
user's name: the same checks, store and audit trail, counted at the next lot end; the same decision twice changes
nothing. A calibration change calls the store function the ``calib`` CLI calls, under the user's name and reason:
the same bounds, locks and audit trail, picked up by the daemon without a restart. Store calls run on one thread of
their own, never on the event loop.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from calibration import views
from calibration.errors import RequestRefused
from calibration.store import CalibrationStore
from edge.capture import overlay
from edge.capture.store import FILTERS, CaptureStore, Flagged, Stored
from edge.config import Config
from edge.decision.thresholds import apply_review
from edge.ops.async_db import AsyncDb
from edge.review.auth import Access, Session, allowed, csrf_ok

COOKIE = "edge_review"
QUERY_FILTERS = dict(zip(("tool", "recipe", "class", "decision", "lot", "wafer"), FILTERS, strict=True))
OVERLAYS = ("none", "heatmap", "attention")
SETTINGS = ("lower", "upper", "step_up", "step_down", "fpr_budget", "initial_threshold")  # what bounds may change
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE: web.AppKey[ReviewService] = web.AppKey("service")
SESSION: web.RequestKey[Session] = web.RequestKey("session")


class ReviewMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.backlog = Gauge("edge_review_backlog", "Review items waiting, per tool (at the last queue read)",
                             ["tool"], registry=r)  # fmt: skip
        self.latency = Histogram(
            "edge_review_latency_seconds", "From the die's capture to its decision",
            buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400), registry=r,
        )  # fmt: skip
        self.decisions = PromCounter("edge_review_decisions_total", "Decisions, by user and outcome",
                                     ["user", "outcome"], registry=r)  # fmt: skip


@dataclass
class Stores:
    """What the service reads and writes, and the one thread its calls run on."""

    captures: CaptureStore
    calibration: CalibrationStore
    thread: AsyncDb


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _user(request: web.Request) -> Session:
    return request[SESSION]


def requires(role: str, change: bool = False) -> Callable[[Handler], Handler]:
    """A handler for ``role`` and up; ``change``: it changes state, so it also needs the CSRF token."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            service = request.app[SERVICE]
            session, token = service.session_of(request)
            if session is None:
                return _error(401, "log in first")
            if not allowed(session.role, role):
                return _error(403, f"{session.user} is a {session.role}; this needs a {role}")
            if change and not csrf_ok(session, request.headers.get("X-CSRF-Token")):
                return _error(403, "missing or wrong X-CSRF-Token")
            request[SESSION] = session
            response = await handler(request)
            if token:
                service.set_cookie(response, token)
            return response

        return guarded

    return wrap


def _filters(request: web.Request, *others: str) -> dict[str, str] | web.Response:
    """The queue filters of the query (capture columns by value); 400 for a parameter that is none of them."""
    unknown = set(request.query) - set(QUERY_FILTERS) - set(others)
    if unknown:
        return _error(400, f"unknown filter {sorted(unknown)}; filters: {sorted(QUERY_FILTERS)}")
    return {QUERY_FILTERS[k]: v for k, v in request.query.items() if k in QUERY_FILTERS}


async def _json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the body is not JSON")
    return body if isinstance(body, dict) else _error(400, "the body is a JSON object")


class ReviewService:
    def __init__(self, cfg: Config, stores: Stores, access: Access | None = None) -> None:
        self.cfg = cfg
        self.stores = stores
        self.access = access or Access(cfg.review)
        self.metrics = ReviewMetrics()

    # --- sessions --------------------------------------------------------------------------------------------

    def session_of(self, request: web.Request) -> tuple[Session | None, str | None]:
        """The request's session, and a token to (re)set as the cookie when the trusted proxy opened one."""
        token = request.cookies.get(COOKIE)
        header = self.cfg.review.trusted_user_header
        if header and request.headers.get(header):
            opened = self.access.trusted(request.headers[header], token)
            if opened is None:
                return None, None
            return opened[1], opened[0] if opened[0] != token else None
        return self.access.session(token), None

    def set_cookie(self, response: web.StreamResponse, token: str) -> None:
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=self.cfg.review.secure_cookies,
                            path="/")  # fmt: skip

    async def login(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        name, password = body.get("user"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            return _error(400, "user and password are strings")
        who = await self.stores.thread(self.access.check, name, password)  # argon2: tens of ms, off the loop
        if who is None:
            return _error(401, "unknown user or wrong password")
        token, session = self.access.open(*who)
        response = web.json_response({"user": session.user, "role": session.role, "csrf": session.csrf})
        self.set_cookie(response, token)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.access.logout(request.cookies.get(COOKIE))
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/")
        return response

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        s = _user(request)
        return web.json_response({"user": s.user, "role": s.role, "csrf": s.csrf})

    # --- the queue and the items -----------------------------------------------------------------------------

    def _pending(self, where: dict[str, str]) -> list[Flagged]:
        """The review items no reviewer has labelled yet, oldest first."""
        reviewed = self.stores.calibration.reviewed()
        return [c for c in self.stores.captures.flagged(where) if c.event_id not in reviewed]

    def _page(self, where: dict[str, str], limit: int) -> tuple[list[Flagged], list[Stored]]:
        pending = self._pending(where)
        return pending, self.stores.captures.facts([c.capture_id for c in pending[:limit]])

    async def queue(self, request: web.Request) -> web.StreamResponse:
        where = _filters(request, "limit")
        if isinstance(where, web.Response):
            return where
        try:
            limit = min(int(request.query.get("limit", "50")), 500)
        except ValueError:
            return _error(400, "limit is a number")
        pending, page = await self.stores.thread(self._page, where, limit)
        by_tool = Counter(c.tool_id for c in pending)
        if not where:
            for tool in self.cfg.tool_ids:
                self.metrics.backlog.labels(tool).set(by_tool.get(tool, 0))
        return web.json_response({
            "items": [c.summary() for c in page],
            "counts": {"pending": len(pending), "by_tool": dict(by_tool),
                       "by_decision": dict(Counter(c.decision for c in pending)),
                       "by_class": dict(Counter(c.defect_class for c in pending))},
        })  # fmt: skip

    async def _capture(self, request: web.Request) -> Stored | web.Response:
        capture_id = request.match_info["capture_id"]
        found = await self.stores.thread(self.stores.captures.get, capture_id)
        if found is None:
            return _error(404, f"no capture {capture_id}")
        if found.gone is not None:
            return _error(410, f"capture {capture_id} is gone: {found.gone_detail}", reason=found.gone,
                          at=found.gone_at)  # fmt: skip
        return found

    async def item(self, request: web.Request) -> web.StreamResponse:
        found = await self._capture(request)
        if isinstance(found, web.Response):
            return found
        review = await self.stores.thread(self.stores.calibration.label, found.event_id) if found.event_id else None
        body = found.summary()
        body["review"] = None if review is None or review.label is None else {
            "label": review.label, "disposition": review.disposition, "comment": review.comment,
            "by": review.reviewed_by, "at": review.reviewed_at}  # fmt: skip
        return web.json_response(body)

    async def image(self, request: web.Request) -> web.StreamResponse:
        which = request.query.get("overlay", "none")
        if which not in OVERLAYS:
            return _error(400, f"overlay is one of {list(OVERLAYS)}")
        found = await self._capture(request)
        if isinstance(found, web.Response):
            return found
        captures = self.stores.captures

        def picture() -> bytes:
            return overlay.over(captures.image_bytes(found), which, found.heatmap, found.attention)

        data = await self.stores.thread(picture)
        return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def decide(self, request: web.Request) -> web.StreamResponse:
        """A decision on an item; ``next`` is the oldest item still pending in the queue the query's filters
        select (the reviewer's filtered queue goes on)."""
        where = _filters(request)
        if isinstance(where, web.Response):
            return where
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        found = await self._capture(request)
        if isinstance(found, web.Response):
            return found
        if found.event_id is None:
            return _error(400, "a borderline pass made no event: there is nothing to decide")
        user = _user(request).user
        message = {"event_id": found.event_id, "disposition": body.get("disposition"), "reviewer": user}
        message.update({k: body[k] for k in ("class", "comment") if k in body})
        payload = json.dumps(message).encode()
        result = await self.stores.thread(apply_review, self.stores.calibration, payload, self.cfg.decision.classes)
        self.metrics.decisions.labels(user, str(message["disposition"]) if result == "accepted" else "refused").inc()
        if result != "accepted":
            status = {"unknown_event": 404, "already_used": 409}.get(result, 400)
            return _error(status, f"decision refused: {result}", result=result)
        self.metrics.latency.observe(max(0.0, time.time() - found.ts))
        pending = await self.stores.thread(self._pending, where)
        nxt = next((c.capture_id for c in pending if c.capture_id != found.capture_id), None)
        return web.json_response({"result": result, "next": nxt})

    # --- calibration ---------------------------------------------------------------------------------------------

    async def calibration(self, request: web.Request) -> web.StreamResponse:
        store = self.stores.calibration

        def documents() -> list[dict[str, Any]]:
            return [views.profile(store, recipe, tool) for recipe, tool, _, _ in store.profiles()]

        return web.json_response({"profiles": await self.stores.thread(documents)})

    async def history(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if not q.get("recipe") or not q.get("tool"):
            return _error(400, "recipe and tool are required")
        try:
            limit = min(int(q.get("limit", "100")), 1000)
        except ValueError:
            return _error(400, "limit is a number")
        rows = await self.stores.thread(self.stores.calibration.history, q["recipe"], q["tool"], q.get("class"), limit)
        return web.json_response({"history": [
            {"ts": r.ts, "class": r.defect_class, "who": r.who, "field": r.field, "old": r.old, "new": r.new,
             "reason": r.reason} for r in rows]})  # fmt: skip

    async def change(self, request: web.Request) -> web.StreamResponse:
        """An engineer's override, unlock, bounds or transfer, through the calibration store as from the CLI."""
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        action, who, store = request.match_info["action"], _user(request).user, self.stores.calibration
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            return _error(400, "reason: every calibration change says why")
        try:
            if action == "transfer":
                call = _transfer(store, body, who, reason)
                recipe, tool = str(body.get("recipe")), str(body.get("to"))
            else:
                call = _class_change(store, action, body, who, reason)
                recipe, tool = str(body.get("recipe")), str(body.get("tool"))
            await self.stores.thread(call)
            document = await self.stores.thread(views.profile, store, recipe, tool)
        except (RequestRefused, TypeError, ValueError) as err:
            return _error(400, f"{action} refused: {err}")
        return web.json_response(document)

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.review.max_body_bytes)
        app[SERVICE] = self
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", requires("viewer", change=True)(self.logout))
        app.router.add_get("/api/session", requires("viewer")(self.whoami))
        app.router.add_get("/api/queue", requires("viewer")(self.queue))
        app.router.add_get("/api/captures/{capture_id}", requires("viewer")(self.item))
        app.router.add_get("/api/captures/{capture_id}/image.png", requires("viewer")(self.image))
        app.router.add_post("/api/captures/{capture_id}/decision", requires("reviewer", change=True)(self.decide))
        app.router.add_get("/api/calibration", requires("viewer")(self.calibration))
        app.router.add_get("/api/calibration/history", requires("viewer")(self.history))
        app.router.add_post("/api/calibration/{action:override|unlock|bounds|transfer}",
                            requires("engineer", change=True)(self.change))  # fmt: skip
        app.router.add_get("/metrics", self.metrics_text)
        return app


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: a name is required")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: a number is required")
    return float(value)


def _class_change(store: CalibrationStore, action: str, body: dict[str, Any], who: str,
                  reason: str) -> Callable[[], None]:  # fmt: skip
    """The store call an override, unlock or bounds change makes (arguments checked here, values by the store)."""
    recipe, tool, name = _text(body, "recipe"), _text(body, "tool"), _text(body, "class")
    if action == "override":
        threshold, lots = _number(body.get("threshold"), "threshold"), _number(body.get("lock_lots", 0), "lock_lots")
        return lambda: store.override(recipe, tool, name, threshold, int(lots), who, reason)
    if action == "unlock":
        return lambda: store.unlock(recipe, tool, name, who, reason)
    changes = {key: _number(body[key], key) for key in SETTINGS if key in body}
    if not changes:
        raise ValueError(f"bounds: give at least one of {', '.join(SETTINGS)}")
    return lambda: store.set_settings(recipe, tool, name, who, reason, **changes)


def _transfer(store: CalibrationStore, body: dict[str, Any], who: str, reason: str) -> Callable[[], None]:
    recipe, source, target = _text(body, "recipe"), _text(body, "from"), _text(body, "to")
    return lambda: store.transfer(recipe, source, target, who, reason)
