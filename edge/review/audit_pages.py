"""The subgroup audit in the review service: a page and its JSON, the same audit as ``edge-inspect audit
subgroups`` over the station's stores (``edge.review.subgroup_records``, on the service's store thread).

    GET /audit?since=&until=&recipe=&alpha=&min_n=&correction=&shifts=&timezone=              the tables
    GET /api/audit/subgroups?<the same>                                                           the audit as JSON

A bad parameter is 400 and says which; a store that cannot be read is 503.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from edge.review.auth import SESSION
from edge.review.subgroup_records import AuditRefused, AuditUnreadable, Sources, request_of, subgroup_audit
from edge.review.subgroups import DEFAULT_SHIFTS, RATES, Audit

if TYPE_CHECKING:
    from edge.review.app import ReviewService

PARAMETERS = ("since", "until", "recipe", "alpha", "min_n", "correction", "shifts", "timezone")


class AuditPages:
    def __init__(self, service: ReviewService) -> None:
        self.service = service

    async def _audit(self, request: web.Request) -> Audit | tuple[int, str]:
        """The audit the query asks for, or (status, why not)."""
        unknown = sorted(set(request.query) - set(PARAMETERS))
        if unknown:
            return 400, f"unknown parameter {unknown}; parameters: {list(PARAMETERS)}"
        cfg = self.service.cfg
        try:
            asked = request_of(*(request.query.get(k) or None for k in PARAMETERS))
            return await self.service.stores.thread(subgroup_audit, Sources.of(cfg), asked, tuple(cfg.recipes))
        except AuditRefused as err:
            return 400, str(err)
        except AuditUnreadable as err:
            return 503, str(err)

    async def api(self, request: web.Request) -> web.StreamResponse:
        result = await self._audit(request)
        if isinstance(result, tuple):
            return web.json_response({"error": result[1]}, status=result[0])
        return web.json_response(result.as_dict())

    async def page(self, request: web.Request) -> web.StreamResponse:
        s, session = self.service, request[SESSION]
        result = await self._audit(request)
        if isinstance(result, tuple):
            return s.render(request, "error.html", session, status=result[0], message=result[1])
        shown = {k: request.query.get(k, "") for k in PARAMETERS}
        return s.render(request, "audit.html", session, page="audit", audit=result, rates=RATES, form=shown,
                        recipes=sorted(s.cfg.recipes), default_shifts=DEFAULT_SHIFTS)  # fmt: skip
