"""The review service's HTTP JSON API and web pages (aiohttp), over the station's capture store, calibration store
and the wafers in its outbox.

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
    GET  /api/calibration/trend.png?recipe=&tool=&class=   threshold and FPR over the class's closed lots
    GET  /api/wafers?tool=&limit=        summarised wafers, newest first: map size and summary event
    GET  /api/wafers/{tool}/{lot}/{wafer}/map.png?mark=x,y  the wafer map, clusters boxed, the die ringed
    POST /api/inspect                    multipart: image, recipe?, tool?, params? (name=value lines), note?
                                         an engineer's ad-hoc check (``edge.review.inspect``), never recorded
    GET  /api/audit/subgroups?since=&until=&recipe=&alpha=&min_n=&correction=&shifts=&timezone=
                                         escape and false-positive rates by subgroup (``edge.review.audit_pages``)
    GET  /api/captures/{id}/similar?k=   the k captured dies most like it, with their reviews (``similar_pages``)
    POST /api/similar?k=                 multipart: image; the captured dies most like it (by the live classifier)
    GET  /metrics                        the service's Prometheus metrics
    GET  /login /queue /items/{id} /wafers /calibration /inspect    the pages (``edge.review.pages``)
    GET  /audit                          the subgroup audit's page
    GET  /similar?capture=&k=            similar-defect search: a capture's or an uploaded image's nearest dies

Every request but login and metrics needs a session (viewer and up); a decision needs a reviewer, a calibration
change or an inspection an engineer, and each the session's CSRF token in ``X-CSRF-Token``. A decision is handed to
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
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
from edge.errors import EdgeError
from edge.ops.async_db import AsyncDb
from edge.review import pictures
from edge.review.audit_pages import AuditPages
from edge.review.auth import SESSION, Access, Session, allowed, csrf_ok
from edge.review.inspect import AdHoc, InspectRefused, RateLimiter, upload_of
from edge.review.pages import Pages, render
from edge.review.similar_pages import SimilarPages
from edge.review.wafers import WaferBook

COOKIE = "edge_review"
STATIC = Path(__file__).with_name("static")
QUERY_FILTERS = dict(zip(("tool", "recipe", "class", "decision", "lot", "wafer"), FILTERS, strict=True))
OVERLAYS = ("none", "heatmap", "attention")
SETTINGS = ("lower", "upper", "step_up", "step_down", "fpr_budget", "initial_threshold")  # what bounds may change
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE: web.AppKey[ReviewService] = web.AppKey("service")


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
        self.inspections = PromCounter("edge_review_inspections_total", "Ad-hoc inspections, by outcome "
                                       "(done, refused, unavailable)", ["outcome"], registry=r)  # fmt: skip
        self.similar = PromCounter("edge_review_similar_total", "Similar-die searches, by query (capture, upload) "
                                   "and outcome (done, refused, unavailable)", ["query", "outcome"],
                                   registry=r)  # fmt: skip


@dataclass
class Stores:
    """What the service reads and writes, and the one thread its calls run on."""

    captures: CaptureStore
    calibration: CalibrationStore
    wafers: WaferBook
    thread: AsyncDb


def _a(role: str) -> str:
    return ("an " if role[0] in "aeiou" else "a ") + role


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _user(request: web.Request) -> Session:
    return request[SESSION]


def requires(role: str, change: bool = False, page: bool = False) -> Callable[[Handler], Handler]:
    """A handler for ``role`` and up; ``change``: it changes state, so it also needs the CSRF token; ``page``: a
    web page, which sends a visitor with no session to the login page and answers a wrong role with a page."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            service = request.app[SERVICE]
            session, token = service.session_of(request)
            if session is None:
                if page:
                    raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
                return _error(401, "log in first")
            if not allowed(session.role, role):
                refusal = f"{session.user} is {_a(session.role)}; this needs {_a(role)}"
                if page:
                    return service.render(request, "error.html", session, status=403, message=refusal)
                return _error(403, refusal)
            if change and not csrf_ok(session, request.headers.get("X-CSRF-Token")):
                return _error(403, "missing or wrong X-CSRF-Token")
            request[SESSION] = session
            response = await handler(request)
            if token:
                service.set_cookie(response, token)
            return response

        return guarded

    return wrap


async def _json(request: web.Request) -> dict[str, Any] | web.Response:
    limit = request.app[SERVICE].cfg.review.max_body_bytes
    if (request.content_length or 0) > limit or len(await request.read()) > limit:
        return _error(413, f"a JSON body is at most {limit} bytes")
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
        self.limiter = RateLimiter(cfg.review.inspect_per_minute)
        self._ad_hoc: AdHoc | None = None

    def render(self, request: web.Request, template: str, session: Session | None, status: int = 200,
               **context: Any) -> web.Response:  # fmt: skip
        """A page from ``edge/review/templates`` (autoescaped); ``page`` names the menu entry to mark."""
        context.setdefault("page", "")
        return web.Response(text=render(template, session=session, status=status, **context), status=status,
                            content_type="text/html", headers={"Cache-Control": "no-store"})  # fmt: skip

    def ad_hoc(self) -> AdHoc:
        """The models as the daemon reaches them, for uploads (made at the first)."""
        if self._ad_hoc is None:
            self._ad_hoc = AdHoc(self.cfg, self.stores.calibration)
        return self._ad_hoc

    async def close(self) -> None:
        if self._ad_hoc is not None:
            await self._ad_hoc.close()

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

    def where(self, request: web.Request, *others: str) -> dict[str, str] | web.Response:
        """The queue filters of the query (capture columns by value; empty ones ignored); 400 for a parameter that
        is none of them nor ``others``."""
        unknown = set(request.query) - set(QUERY_FILTERS) - set(others)
        if unknown:
            return _error(400, f"unknown filter {sorted(unknown)}; filters: {sorted(QUERY_FILTERS)}")
        return {QUERY_FILTERS[k]: v for k, v in request.query.items() if k in QUERY_FILTERS and v}

    def pending(self, where: dict[str, str]) -> list[Flagged]:
        """The review items no reviewer has labelled yet, oldest first (store thread)."""
        reviewed = self.stores.calibration.reviewed()
        return [c for c in self.stores.captures.flagged(where) if c.event_id not in reviewed]

    def page_of(self, where: dict[str, str], limit: int) -> tuple[list[Flagged], list[Stored]]:
        """The pending items and the facts of the oldest ``limit`` (store thread)."""
        pending = self.pending(where)
        return pending, self.stores.captures.facts([c.capture_id for c in pending[:limit]])

    def counts(self, pending: list[Flagged]) -> dict[str, Any]:
        """Counts of the pending items, in all and per tool, decision and class; sets the backlog gauge."""
        by_tool = Counter(c.tool_id for c in pending)
        return {"pending": len(pending), "by_tool": dict(by_tool),
                "by_decision": dict(Counter(c.decision for c in pending)),
                "by_class": dict(Counter(c.defect_class for c in pending))}  # fmt: skip

    async def queue(self, request: web.Request) -> web.StreamResponse:
        where = self.where(request, "limit")
        if isinstance(where, web.Response):
            return where
        try:
            limit = min(int(request.query.get("limit", "50")), 500)
        except ValueError:
            return _error(400, "limit is a number")
        pending, page = await self.stores.thread(self.page_of, where, limit)
        counts = self.counts(pending)
        if not where:
            for tool in self.cfg.tool_ids:
                self.metrics.backlog.labels(tool).set(counts["by_tool"].get(tool, 0))
        return web.json_response({"items": [c.summary() for c in page], "counts": counts})

    async def capture_of(self, request: web.Request) -> Stored | web.Response:
        """The capture the path names; 404 unknown, 410 with the reason once gone."""
        capture_id = request.match_info["capture_id"]
        found = await self.stores.thread(self.stores.captures.get, capture_id)
        if found is None:
            return _error(404, f"no capture {capture_id}")
        if found.gone is not None:
            return _error(410, f"capture {capture_id} is gone: {found.gone_detail}", reason=found.gone,
                          at=found.gone_at)  # fmt: skip
        return found

    async def item(self, request: web.Request) -> web.StreamResponse:
        found = await self.capture_of(request)
        if isinstance(found, web.Response):
            return found
        body = found.summary()
        body["review"] = await self.review_of(found.event_id)
        return web.json_response(body)

    async def review_of(self, event_id: str | None) -> dict[str, Any] | None:
        """What a reviewer said of the event (None: not reviewed yet, or a borderline pass with no event)."""
        review = await self.stores.thread(self.stores.calibration.label, event_id) if event_id else None
        if review is None or review.label is None:
            return None
        return {"label": review.label, "disposition": review.disposition, "comment": review.comment,
                "by": review.reviewed_by, "at": review.reviewed_at}  # fmt: skip

    async def image(self, request: web.Request) -> web.StreamResponse:
        which = request.query.get("overlay", "none")
        if which not in OVERLAYS:
            return _error(400, f"overlay is one of {list(OVERLAYS)}")
        found = await self.capture_of(request)
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
        where = self.where(request)
        if isinstance(where, web.Response):
            return where
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        found = await self.capture_of(request)
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
        pending = await self.stores.thread(self.pending, where)
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

    async def trend_png(self, request: web.Request) -> web.StreamResponse:
        """A class's threshold and FPR over its closed lots, as a picture."""
        q, store = request.query, self.stores.calibration
        if not all(q.get(k) for k in ("recipe", "tool", "class")):
            return _error(400, "recipe, tool and class are required")

        def picture() -> bytes:
            state = store.states(q["recipe"], q["tool"]).get(q["class"])
            if state is None:
                raise RequestRefused(f"no class {q['class']} in {q['recipe']} x {q['tool']}")
            s = state.settings
            return pictures.trend(store.trend(q["recipe"], q["tool"], q["class"]), s.fpr_budget, s.lower, s.upper)

        try:
            data = await self.stores.thread(picture)
        except RequestRefused as err:
            return _error(404, str(err))
        return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "no-store"})

    # --- wafers ------------------------------------------------------------------------------------------------

    async def wafers(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = min(int(request.query.get("limit", "20")), 200)
        except ValueError:
            return _error(400, "limit is a number")
        found = await self.stores.thread(self.stores.wafers.recent, limit, request.query.get("tool") or None)
        return web.json_response({"wafers": [
            {"tool_id": w.key[0], "lot_id": w.key[1], "wafer_id": w.key[2], "recipe_id": w.recipe_id,
             "dies": len(w.dies), "summary": w.summary} for w in found]})  # fmt: skip

    async def wafer_png(self, request: web.Request) -> web.StreamResponse:
        """A wafer's map with its clusters boxed, and ``?mark=x,y`` ringed."""
        m = request.match_info
        mark: tuple[int, int] | None = None
        if "mark" in request.query:
            try:
                x, y = (int(v) for v in request.query["mark"].split(","))
            except ValueError:
                return _error(400, "mark is x,y: the die's position")
            mark = (x, y)
        view = await self.stores.thread(self.stores.wafers.wafer, (m["tool"], m["lot"], m["wafer"]))
        if view is None and mark is None:
            return _error(404, f"no wafer {m['wafer']} of lot {m['lot']} on {m['tool']}")
        dies = view.dies if view else []
        data = await self.stores.thread(pictures.wafer_map, dies, view.clusters if view else [], mark)
        return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "no-store"})

    # --- an engineer's ad-hoc inspection -------------------------------------------------------------------------

    async def inspect(self, request: web.Request) -> web.StreamResponse:
        """An uploaded image through the served models; rate-limited per user, never recorded."""
        user = _user(request).user
        wait = self.limiter.wait(user)
        if wait > 0:
            return web.json_response({"error": f"at most {self.limiter.per_minute} inspections a minute; wait "
                                               f"{wait:.0f} s"}, status=429,
                                     headers={"Retry-After": str(max(1, round(wait)))})  # fmt: skip
        if not request.content_type.startswith("multipart/"):
            return _error(400, "send the image as multipart/form-data (field image)")
        try:
            form = await request.post()
        except ValueError as err:
            return _error(400, f"unreadable form: {err}")
        fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
        image = form.get("image")
        if isinstance(image, web.FileField):
            fields["image"] = image.file.read()
        try:
            upload = upload_of(self.cfg, fields)
            result = await self.ad_hoc().check(upload)
        except InspectRefused as err:
            self.metrics.inspections.labels("refused").inc()
            return _error(400, str(err))
        except EdgeError as err:
            self.metrics.inspections.labels("unavailable").inc()
            return _error(503, f"the models cannot be reached: {err}")
        self.metrics.inspections.labels("done").inc()
        return web.json_response(result)

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    def app(self) -> web.Application:
        review = self.cfg.review  # an upload may be larger than a JSON body; _json holds those to their limit
        app = web.Application(client_max_size=max(review.max_body_bytes, review.max_upload_bytes))
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
        app.router.add_get("/api/calibration/trend.png", requires("viewer")(self.trend_png))
        app.router.add_get("/api/wafers", requires("viewer")(self.wafers))
        app.router.add_get("/api/wafers/{tool}/{lot}/{wafer}/map.png", requires("viewer")(self.wafer_png))
        app.router.add_post("/api/inspect", requires("engineer", change=True)(self.inspect))
        audit = AuditPages(self)
        app.router.add_get("/api/audit/subgroups", requires("viewer")(audit.api))
        similar = SimilarPages(self)
        app.router.add_get("/api/captures/{capture_id}/similar", requires("viewer")(similar.api_capture))
        app.router.add_post("/api/similar", requires("viewer", change=True)(similar.api_upload))
        app.router.add_get("/similar", requires("viewer", page=True)(similar.page))
        app.router.add_get("/metrics", self.metrics_text)
        pages = Pages(self)
        app.router.add_get("/", pages.index)
        app.router.add_get("/login", pages.login)
        app.router.add_get("/queue", requires("viewer", page=True)(pages.queue))
        app.router.add_get("/items/{capture_id}", requires("viewer", page=True)(pages.item))
        app.router.add_get("/wafers", requires("viewer", page=True)(pages.wafers))
        app.router.add_get("/calibration", requires("viewer", page=True)(pages.calibration))
        app.router.add_get("/inspect", requires("engineer", page=True)(pages.inspect))
        app.router.add_get("/audit", requires("viewer", page=True)(audit.page))
        app.router.add_static("/static", STATIC, append_version=False)
        app.on_cleanup.append(lambda _: self.close())
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
