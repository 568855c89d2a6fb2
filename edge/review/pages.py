"""The review service's web pages, rendered by the server (Jinja2, autoescaped) from ``templates/``, with one
plain script (``static/review.js``) for the keyboard, the overlay toggles and the calls to the JSON API: no build
step. Pictures are PNGs the API draws. What a page shows is what the JSON API answers; the pages add no rules.

    /login                 log in (then back to the page asked for)
    /queue?<filters>       pending items, oldest first, counts per filter, a thumbnail with the heatmap each
    /items/{id}?<filters>  one item: die with heatmap / attention toggles, classes, anomaly score against its
                           bands, anomalous process parameters, the wafer map with the die ringed, the model
                           version; real / false / relabel / novel with a comment, by key, then the next item
    /wafers?tool=          the summarised wafers: map, clusters, signature, severity
    /calibration           per recipe x tool x class: threshold, status, FPR, certified bound, the plot over
                           lots, the audit trail, and for engineers the override / unlock / bounds / transfer form
    /inspect               an engineer uploads an image and sees score, classes, heatmap and latency
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from calibration import views
from calibration.errors import RequestRefused
from edge.review.auth import SESSION, Session

if TYPE_CHECKING:
    from edge.review.app import ReviewService

DECISIONS = ("DEFECT", "REVIEW", "AUDIT")
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("edge.review", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["when"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else ""


def render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this service only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/queue"
    return target


def _query(where: dict[str, str]) -> str:
    """The page's filters as a query string (``?tool=...``), or '' for none."""
    return "?" + urlencode(where) if where else ""


class Pages:
    def __init__(self, service: ReviewService) -> None:
        self.service = service

    def _session(self, request: web.Request) -> Session:
        return request[SESSION]

    async def index(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/queue")

    async def login(self, request: web.Request) -> web.StreamResponse:
        session, _ = self.service.session_of(request)
        return self.service.render(request, "login.html", session, next=safe_next(request.query.get("next")))

    async def queue(self, request: web.Request) -> web.StreamResponse:
        s = self.service
        where = s.where(request, "limit")
        if isinstance(where, web.Response):
            return s.render(request, "error.html", self._session(request), status=400, message=where.text)
        pending, page = await s.stores.thread(s.page_of, where, 200)
        shown = {k: v for k, v in request.query.items() if v and k != "limit"}
        counts = s.counts(pending)
        choices = [
            ("tool", [(t, counts["by_tool"].get(t, 0)) for t in sorted(s.cfg.tool_ids)]),
            ("recipe", [(r, None) for r in s.cfg.recipes]),
            ("class", [(c, counts["by_class"].get(c, 0)) for c in [*s.cfg.decision.classes[1:], "UNCLASSIFIED"]]),
            ("decision", [(d, counts["by_decision"].get(d, 0)) for d in DECISIONS]),
        ]
        return s.render(request, "queue.html", self._session(request), page="queue", items=[c.summary() for c in page],
                        counts=counts, choices=choices, filters=shown, query=_query(shown))  # fmt: skip

    async def item(self, request: web.Request) -> web.StreamResponse:
        s, session = self.service, self._session(request)
        where = s.where(request)
        if isinstance(where, web.Response):
            return s.render(request, "error.html", session, status=400, message=where.text)
        found = await s.capture_of(request)
        if isinstance(found, web.Response):
            return s.render(request, "error.html", session, status=found.status, message=found.text)
        review = await s.review_of(found.event_id)
        pending = await s.stores.thread(s.pending, where)
        later = [c.capture_id for c in pending if c.capture_id != found.capture_id]
        c = found.summary()
        bands = c.get("bands")
        shown = {k: v for k, v in request.query.items() if v}
        return s.render(request, "item.html", session, page="queue", c=c, review=review, bands=bands,
                        bar=_bar(c["anomaly"]["score"], bands), pending=len(pending),
                        next_id=later[0] if later else None, query=_query(shown),
                        classes=[k for k in s.cfg.decision.classes if k != "GOOD"],
                        can_decide=session.role in ("reviewer", "engineer"))  # fmt: skip

    async def wafers(self, request: web.Request) -> web.StreamResponse:
        s = self.service
        tool = request.query.get("tool") or None
        found = await s.stores.thread(s.stores.wafers.recent, 24, tool)
        return s.render(request, "wafers.html", self._session(request), page="wafers", wafers=found,
                        tools=sorted(s.cfg.tool_ids), tool=tool)  # fmt: skip

    async def calibration(self, request: web.Request) -> web.StreamResponse:
        s = self.service
        store = s.stores.calibration

        def documents() -> tuple[list[dict[str, Any]], list[list[Any]]]:
            profiles, histories = [], []
            for recipe, tool, _, _ in store.profiles():
                try:
                    profiles.append(views.profile(store, recipe, tool))
                except RequestRefused:
                    continue
                histories.append(store.history(recipe, tool, None, 30))
            return profiles, histories

        profiles, histories = await s.stores.thread(documents)
        return s.render(request, "calibration.html", self._session(request), page="calibration",
                        profiles=profiles, histories=histories, tools=sorted(s.cfg.tool_ids))  # fmt: skip

    async def inspect(self, request: web.Request) -> web.StreamResponse:
        s = self.service
        return s.render(request, "inspect.html", self._session(request), page="inspect", recipes=list(s.cfg.recipes),
                        tools=sorted(s.cfg.tool_ids), per_minute=s.cfg.review.inspect_per_minute)  # fmt: skip


def _bar(score: float, bands: dict[str, float] | None) -> dict[str, float] | None:
    """Where the pass and reject bands and the score sit on a bar running to 1.5x the reject band (percent)."""
    if not bands:
        return None
    full = 1.5 * bands["reject"] or 1.0
    return {k: round(100 * min(1.0, v / full), 1) for k, v in
            (("pass", bands["pass"]), ("reject", bands["reject"]), ("at", score))}  # fmt: skip
