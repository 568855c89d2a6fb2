"""The subgroup audit in the review service over real HTTP (its own server on a free port), on stores the daemon's own
functions wrote (``tests.audit_station``): the page and its JSON show the same audit, a planted edge-zone excess of
false positives flagged; strangers go to the login; bad parameters are 400 and an unreadable store 503."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest

from edge.review.auth import hash_password
from edge.serving.tritonserver import free_port
from tests.audit_station import CENTRE, EDGE, MIDDLE, T1, T2, Die, fill
from tests.review_server import review_http

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"


def _dies() -> list[Die]:
    """90 reviewed DEFECT dies: half of the 30 at the edge are false positives, 3 of the 60 elsewhere."""
    dies = []
    for i in range(90):
        where, false = [(EDGE, i < 15), (CENTRE, i in (31, 41)), (MIDDLE, i == 62)][i // 30]
        dies.append(Die(f"d{i}", "DEFECT", (T1, T2)[i % 2], 7 + (i % 24), where, note=i % 3 == 0,
                        reviews=({"disposition": "false" if false else "real"},)))  # fmt: skip
    return dies


def test_the_audit_page_and_its_json_flag_the_planted_slice(tmp_path: Path) -> None:
    users = [{"name": "vic", "role": "viewer", "password_hash": hash_password(PASSWORD)}]
    cfg, _ = fill(tmp_path, _dies(), {"port": free_port(), "users": users})
    base = f"http://127.0.0.1:{cfg.review.port}"

    async def main() -> None:
        async with review_http(cfg) as (_, http):
            await scenario(http)

    async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        async with http.get(base + path, allow_redirects=False) as r:
            return r.status, await r.json() if r.content_type == "application/json" else await r.text()

    async def scenario(http: aiohttp.ClientSession) -> None:
        async with http.get(f"{base}/audit?recipe=R1", allow_redirects=False) as r:
            assert r.status == 303 and urlparse(r.headers["Location"]).path == "/login"
        assert (await get(http, "/api/audit/subgroups"))[0] == 401
        async with http.post(f"{base}/api/login", json={"user": "vic", "password": PASSWORD}) as r:
            assert r.status == 200

        status, document = await get(http, "/api/audit/subgroups?timezone=UTC")
        assert status == 200 and document["rates"]["false_positive"]["n"] == 90
        assert document["rates"]["false_positive"]["errors"] == 18 and document["rates"]["escape"]["n"] == 0
        flagged = {(f["dimension"], f["slice"], f["direction"]) for f in document["flagged"]}
        assert ("zone", "edge", "higher") in flagged and not any(d == "tool" for d, _, _ in flagged)
        zones = {s["slice"]: s for s in document["rates"]["false_positive"]["dimensions"]["zone"]}
        assert zones["edge"]["n"] == 30 and zones["edge"]["errors"] == 15 and zones["edge"]["p_adjusted"] < 0.05
        assert document["correction"] == "holm" and "chamber" in document["rates"]["false_positive"]["dimensions"]

        status, page = await get(http, "/audit?timezone=UTC")
        assert status == 200 and 'href="/audit" class="here"' in page
        assert '<tr class="flagged DEFECT" data-slice="edge">' in page
        assert '<tr class="" data-slice="AOI-01">' in page and "Holm" in page
        assert 'href="/api/audit/subgroups?timezone=UTC"' in page  # the same audit as JSON

        status, later = await get(http, "/api/audit/subgroups?since=2026-03-04&recipe=R1")
        assert status == 200 and later["rates"]["false_positive"]["n"] == 0 and later["flagged"] == []
        for query, why in [("since=soon", "not a date"), ("recipe=R9", "no recipe"), ("colour=red", "unknown"),
                           ("min_n=0", "min-n"), ("alpha=1", "alpha")]:  # fmt: skip
            status, body = await get(http, f"/api/audit/subgroups?{query}")
            assert status == 400 and why in body["error"], query
        status, page = await get(http, "/audit?since=soon")
        assert status == 400 and "not a date" in page

        for name in ("calibration.sqlite", "calibration.sqlite-wal", "calibration.sqlite-shm"):
            (tmp_path / name).unlink(missing_ok=True)  # the service's own connection keeps its open file
        status, body = await get(http, "/api/audit/subgroups")
        assert status == 503 and "cannot read the calibration store" in body["error"]

    asyncio.run(main())
