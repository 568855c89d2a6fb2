"""Similar-defect search in the review service: the captured dies most like a capture or an uploaded image, with
what reviewers said of them (``edge.capture.similar_search`` over the station's capture store, on the service's
store thread).

    GET  /api/captures/{id}/similar?k=      the k (default 10, at most 100) captures most like capture {id}
    POST /api/similar?k=                    multipart: image (PNG or JPEG); its embedding by the live classifier
                                            (through Triton, as ``/api/inspect``; rate-limited alike), then the same
    GET  /similar?capture=&k=               the page: the query die and its hits with thumbnails, and an upload form

Each hit: similarity (cosine), capture id and event, tool, recipe, lot, wafer, die, time, decision, class, and the
review (disposition, label, by whom) if any. 404: no such capture; 409: it has no embedding (its classifier had
none); 400: a bad parameter or upload; 429: over the inspection rate; 503: the store or the models unreachable.
Every answer is counted in ``edge_review_similar_total{query, outcome}``; a refusal is logged with its reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge.capture.similar_search import Hit, SimilarCaptures
from edge.capture.store import embedding_space
from edge.errors import EdgeError
from edge.ops.logs import get
from edge.review.auth import SESSION
from edge.review.inspect import InspectRefused, upload_of

if TYPE_CHECKING:
    from edge.review.app import ReviewService

log = get("edge.review")
DEFAULT_K = 10
MAX_K = 100


class SimilarRefused(ValueError):
    """A query the search will not run: (HTTP status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def k_of(request: web.Request) -> int:
    try:
        k = int(request.query.get("k", DEFAULT_K))
    except ValueError:
        raise SimilarRefused(400, "k: a whole number of dies") from None
    if not 1 <= k <= MAX_K:
        raise SimilarRefused(400, f"k: between 1 and {MAX_K}")
    return k


class SimilarPages:
    def __init__(self, service: ReviewService) -> None:
        self.service = service
        self._search: SimilarCaptures | None = None

    async def _captures(self) -> SimilarCaptures:
        if self._search is None:  # opened (and a saved index loaded, or built) on the store thread, once
            stores = self.service.stores
            self._search = await stores.thread(SimilarCaptures, stores.captures)
        return self._search

    async def _hits(self, hits: list[Hit]) -> list[dict[str, Any]]:
        out = []
        for hit in hits:
            found = hit.summary()
            found["review"] = await self.service.review_of(hit.capture.event_id)
            out.append(found)
        return out

    async def like_capture(self, capture_id: str, k: int) -> dict[str, Any]:
        search = await self._captures()
        thread = self.service.stores.thread
        try:
            query = await thread(self.service.stores.captures.get, capture_id)
            if query is None:
                raise SimilarRefused(404, f"no capture {capture_id}")
            hits = await thread(search.like_capture, capture_id, k)
        except EdgeError as err:
            raise SimilarRefused(503, f"the capture store cannot be read: {err}") from err
        if hits is None:
            raise SimilarRefused(409, f"capture {capture_id} has no embedding (its classifier version had none)")
        return {"query": {"capture": query.summary(), "space": embedding_space(query.facts)},
                "k": k, "hits": await self._hits(hits)}  # fmt: skip

    async def like_upload(self, request: web.Request, k: int) -> dict[str, Any]:
        s = self.service
        fields: dict[str, Any] = {}
        if not request.content_type.startswith("multipart/"):
            raise SimilarRefused(400, "send the image as multipart/form-data (field image)")
        try:
            form = await request.post()
        except ValueError as err:
            raise SimilarRefused(400, f"unreadable form: {err}") from err
        image = form.get("image")
        if isinstance(image, web.FileField):
            fields["image"] = image.file.read()
        try:
            _, outcome, _ = await s.ad_hoc().outcome(upload_of(s.cfg, fields))
        except InspectRefused as err:
            raise SimilarRefused(400, str(err)) from err
        except EdgeError as err:
            raise SimilarRefused(503, f"the models cannot be reached: {err}") from err
        if outcome.embedding is None:
            raise SimilarRefused(409, "the live classifier serves no embedding (EMBEDDING output)")
        space = embedding_space({"model_digests": outcome.digests, "models": outcome.models})
        search = await self._captures()
        try:
            hits = await s.stores.thread(search.like, space, outcome.embedding, k)
        except EdgeError as err:
            raise SimilarRefused(503, f"the capture store cannot be read: {err}") from err
        verdict = outcome.verdict
        query = {"upload": True, "defect_class": verdict.defect_class if verdict else None,
                 "decision": verdict.decision if verdict else None, "models": outcome.models}  # fmt: skip
        return {"query": {**query, "space": space}, "k": k, "hits": await self._hits(hits)}

    def _refused(self, query: str, err: SimilarRefused) -> web.Response:
        outcome = "unavailable" if err.status == 503 else "refused"
        self.service.metrics.similar.labels(query, outcome).inc()
        log.info("similar_refused", query=query, status=err.status, reason=str(err))
        return web.json_response({"error": str(err)}, status=err.status)

    def _done(self, query: str, result: dict[str, Any]) -> web.Response:
        self.service.metrics.similar.labels(query, "done").inc()
        return web.json_response(result)

    async def api_capture(self, request: web.Request) -> web.StreamResponse:
        try:
            return self._done("capture", await self.like_capture(request.match_info["capture_id"], k_of(request)))
        except SimilarRefused as err:
            return self._refused("capture", err)

    async def api_upload(self, request: web.Request) -> web.StreamResponse:
        s = self.service
        wait = s.limiter.wait(request[SESSION].user)
        if wait > 0:
            return web.json_response({"error": f"at most {s.limiter.per_minute} uploads a minute; wait {wait:.0f} s"},
                                     status=429, headers={"Retry-After": str(max(1, round(wait)))})  # fmt: skip
        try:
            return self._done("upload", await self.like_upload(request, k_of(request)))
        except SimilarRefused as err:
            return self._refused("upload", err)

    async def page(self, request: web.Request) -> web.StreamResponse:
        s, session = self.service, request[SESSION]
        capture = request.query.get("capture", "").strip()
        result = None
        try:
            k = k_of(request)
            if capture:
                result = await self.like_capture(capture, k)
        except SimilarRefused as err:
            return s.render(request, "error.html", session, status=err.status, message=str(err))
        return s.render(request, "similar.html", session, page="similar", capture=capture, k=k, result=result)
