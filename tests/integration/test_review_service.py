"""The review service over real HTTP (its own server on a free port) against a real capture store and a real
calibration store: logins and roles, CSRF, the queue, items and pictures, and decisions that reach calibration
exactly once, whoever repeats them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import cv2
import numpy as np
import pytest

from calibration.store import CalibrationStore
from edge.capture.record import capture_of
from edge.capture.store import CaptureStore
from edge.config import Config, parse_config
from edge.flow import Frame, FrameHeader, Outcome, Tensors, Verdict
from edge.review.auth import hash_password
from edge.serving.tritonserver import free_port
from tests.review_server import review_http
from tests.triton_fixture import RunningTriton
from tools.synth import render_die, tool_optics

pytestmark = pytest.mark.integration
R, T = "R1", "AOI-01"
PASSWORD = "correct horse battery staple"


def _outcome(frame_id: str, decision: str, cls: str, p: float, audit: bool = False) -> Outcome:
    rng = np.random.default_rng(len(frame_id))
    rgb = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    header = FrameHeader(frame_id, T, R, "L1", "W1", (1, 2), 0.0, "png", None, None, None)
    frame = Frame(b"id", header, Tensors(rgb, rgb[:1]), 0.0, 1.0, 0.0)
    top = ((cls if cls != "UNCLASSIFIED" else "GOOD", p),)
    verdict = Verdict(decision, cls, p, 0.6, "REJECT", decision == "PASS", audit, top)
    heatmap = np.zeros((32, 32), np.float32)
    heatmap[10, 10] = 1.0
    return Outcome(frame, verdict, 0.02, None, None, heatmap, np.full(64, 1 / 64, np.float32))


def _station(tmp_path: Path, **review: Any) -> Config:
    """Three review items (a DEFECT, a REVIEW, an AUDIT) and a pruned one, in real stores, and the config."""
    cfg = parse_config({
        "tools": [{"id": T}], "recipes": {R: {}},
        "capture": {"path": str(tmp_path / "captures")},
        "calibration": {"path": str(tmp_path / "calibration.sqlite")},
        "review": {"port": free_port(), "users": [
            {"name": "vic", "role": "viewer", "password_hash": hash_password(PASSWORD)},
            {"name": "eve", "role": "reviewer", "password_hash": hash_password(PASSWORD)},
            {"name": "eng", "role": "engineer"},
        ], **review},
    })  # fmt: skip
    items = [("E1", "DEFECT", "PART-SM", 0.9, False, "DEFECT"), ("E2", "REVIEW", "UNCLASSIFIED", 0.7, False, "REVIEW"),
             ("E3", "PASS", "CRACK", 0.55, True, "AUDIT")]  # fmt: skip
    captures = CaptureStore(cfg.capture.path, 10**9, 10**9, 10**9)
    calibration = CalibrationStore(cfg.calibration.path)
    calibration.ensure_profile(R, T, ("PART-SM", "CRACK"))
    now = time.time()
    for i, (event_id, decision, cls, p, audit, reason) in enumerate(items):
        captures.write([capture_of(_outcome(f"f{i}", decision, cls, p, audit), event_id, reason, {}, now + i)])
        if reason != "REVIEW":
            calibration.add_candidate(event_id, R, T, "L1", cls, p, flagged=reason == "DEFECT")
        calibration.record([], [], [(event_id, R, T, "L1", reason, cls)])
    captures.write([capture_of(_outcome("f9", "DEFECT", "PART-SM", 0.9), "E0", "DEFECT", {}, now - 100)])
    captures.close()
    short = CaptureStore(cfg.capture.path, 10**9, 50, 10**9)  # a 50 s retention prunes E0 only
    assert short.prune()["retention"] == 1
    short.close()
    calibration.close()
    return cfg


Client = Callable[..., Awaitable[tuple[int, Any]]]


def _run(cfg: Config, scenario: Callable[[Client, aiohttp.ClientSession], Awaitable[None]]) -> None:
    """``scenario`` against the service serving ``cfg`` (a real server), then the service stopped."""

    async def main() -> None:
        async with review_http(cfg) as (base, http):

            async def call(method: str, path: str, body: Any = None, csrf: str | None = None,
                           headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
                sent = {**({"X-CSRF-Token": csrf} if csrf else {}), **(headers or {})}
                kwargs: dict[str, Any] = {"headers": sent}
                if isinstance(body, bytes):
                    kwargs["data"] = body
                elif body is not None:
                    kwargs["json"] = body
                async with http.request(method, base + path, **kwargs) as response:
                    kind = response.headers.get("Content-Type", "")
                    data = await response.json() if "json" in kind else await response.read()
                    return response.status, data

            await scenario(call, http)

    asyncio.run(main())


def test_roles_csrf_and_decisions_that_reach_calibration_once(tmp_path: Path) -> None:
    cfg = _station(tmp_path)

    async def scenario(call: Client, http: aiohttp.ClientSession) -> None:
        assert (await call("GET", "/api/queue"))[0] == 401
        assert (await call("POST", "/api/login", {"user": "eve", "password": "wrong"}))[0] == 401
        assert (await call("POST", "/api/login", {"user": "eng", "password": PASSWORD}))[0] == 401  # no password set
        status, viewer = await call("POST", "/api/login", {"user": "vic", "password": PASSWORD})
        assert status == 200 and viewer["role"] == "viewer"
        status, queue = await call("GET", "/api/queue")
        assert status == 200 and [i["capture_id"] for i in queue["items"]] == ["E1", "E2", "E3"]  # oldest first
        assert queue["counts"]["pending"] == 3 and queue["counts"]["by_decision"] == {"DEFECT": 1, "REVIEW": 1,
                                                                                      "AUDIT": 1}  # fmt: skip
        assert (await call("GET", "/api/queue?decision=REVIEW"))[1]["counts"]["pending"] == 1
        assert (await call("GET", "/api/queue?colour=red"))[0] == 400
        refused = await call("POST", "/api/captures/E1/decision", {"disposition": "false"}, viewer["csrf"])
        assert refused[0] == 403 and "viewer" in refused[1]["error"]

        status, eve = await call("POST", "/api/login", {"user": "eve", "password": PASSWORD})
        assert status == 200 and eve["csrf"] != viewer["csrf"]
        assert (await call("POST", "/api/captures/E1/decision", {"disposition": "false"}))[0] == 403  # no CSRF
        assert (await call("POST", "/api/captures/E1/decision", {"disposition": "false"}, "forged"))[0] == 403
        for _ in range(2):  # a decision sent twice (a double click, a retry) counts once
            status, done = await call("POST", "/api/captures/E1/decision",
                                      {"disposition": "false", "comment": "dust on the lens"}, eve["csrf"])  # fmt: skip
            assert status == 200 and done == {"result": "accepted", "next": "E2"}
        relabel = {"disposition": "relabel", "class": "RESIDUE"}
        in_filter = await call("POST", "/api/captures/E2/decision?decision=REVIEW", relabel, eve["csrf"])
        assert in_filter[0] == 200 and in_filter[1]["next"] is None  # the REVIEW queue is empty now (E3 is AUDIT)
        assert (await call("POST", "/api/captures/E2/decision?colour=red", relabel, eve["csrf"]))[0] == 400
        assert (await call("POST", "/api/captures/E2/decision", relabel, eve["csrf"]))[1]["next"] == "E3"
        bad = await call("POST", "/api/captures/E3/decision", {"disposition": "relabel", "class": "BLOB"}, eve["csrf"])
        assert bad[0] == 400 and bad[1]["result"] == "bad_value"
        assert (await call("POST", "/api/captures/E3/decision", b"{not json", eve["csrf"]))[0] == 400
        huge = {"disposition": "false", "comment": "x" * (cfg.review.max_body_bytes + 1)}
        assert (await call("POST", "/api/captures/E3/decision", huge, eve["csrf"]))[0] == 413
        assert (await call("POST", "/api/captures/NOPE/decision", {"disposition": "false"}, eve["csrf"]))[0] == 404

        status, queue = await call("GET", "/api/queue")
        assert [i["capture_id"] for i in queue["items"]] == ["E3"]
        status, item = await call("GET", "/api/captures/E2")
        assert status == 200 and item["review"]["label"] == "RESIDUE" and item["review"]["by"] == "eve"
        gone = await call("GET", "/api/captures/E0")
        assert gone[0] == 410 and gone[1]["reason"] == "retention" and "retention" in gone[1]["error"]
        assert (await call("GET", "/api/captures/NOPE"))[0] == 404
        status, png = await call("GET", "/api/captures/E1/image.png?overlay=heatmap")
        picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and picture.shape == (64, 64, 3)
        assert (await call("GET", "/api/captures/E1/image.png?overlay=xray"))[0] == 400
        async with http.get(f"http://127.0.0.1:{cfg.review.port}/metrics") as response:
            metrics = await response.text()
        assert 'edge_review_decisions_total{outcome="false",user="eve"} 2.0' in metrics
        assert 'edge_review_decisions_total{outcome="refused",user="eve"} 1.0' in metrics
        assert (await call("POST", "/api/logout", csrf=eve["csrf"]))[0] == 204
        assert (await call("GET", "/api/queue"))[0] == 401

    _run(cfg, scenario)
    store = CalibrationStore(cfg.calibration.path)
    try:
        trail = [(r.who, r.field, r.new, r.reason) for r in store.history(R, T, None, 50) if r.who == "eve"]
        assert trail.count(("eve", "disposition", "False", "review of E1: dust on the lens")) == 1
        assert ("eve", "label", "RESIDUE", "review of E2") in trail
        store.count_inspected(R, T, "L1", 100)
        store.close_lot(R, T, "L1")
        used = store._db.execute("SELECT real, used FROM candidates WHERE event_id = 'E1'").fetchone()
        assert used == (0, 1)  # the lot end counted the false positive, once
    finally:
        store.close()


def test_a_trusted_proxy_names_the_user_and_state_changes_still_need_the_csrf_token(tmp_path: Path) -> None:
    cfg = _station(tmp_path, trusted_user_header="X-Remote-User")

    async def scenario(call: Client, http: aiohttp.ClientSession) -> None:
        proxy = {"X-Remote-User": "eng"}
        status, me = await call("GET", "/api/session", headers=proxy)
        assert status == 200 and me["user"] == "eng" and me["role"] == "engineer"
        assert (await call("GET", "/api/session", headers={"X-Remote-User": "mallory"}))[0] == 401
        no_token = await call("POST", "/api/captures/E1/decision", {"disposition": "real"}, headers=proxy)
        assert no_token[0] == 403
        status, done = await call("POST", "/api/captures/E1/decision", {"disposition": "real"}, me["csrf"], proxy)
        assert status == 200 and done["result"] == "accepted"

    _run(cfg, scenario)
    store = CalibrationStore(cfg.calibration.path)
    try:
        assert [x.label for x in store.labels()] == ["PART-SM"]
    finally:
        store.close()


def test_engineers_steer_calibration_through_the_store_and_its_audit_trail_and_others_cannot(tmp_path: Path) -> None:
    cfg = _station(tmp_path, users=[
        {"name": "eve", "role": "reviewer", "password_hash": hash_password(PASSWORD)},
        {"name": "li", "role": "engineer", "password_hash": hash_password(PASSWORD)},
    ])  # fmt: skip
    override = {"recipe": R, "tool": T, "class": "PART-SM", "threshold": 0.8, "lock_lots": 3, "reason": "MRB 42"}

    async def scenario(call: Client, http: aiohttp.ClientSession) -> None:
        eve = (await call("POST", "/api/login", {"user": "eve", "password": PASSWORD}))[1]
        status, shown = await call("GET", "/api/calibration")
        assert status == 200 and shown["profiles"][0]["recipe"] == R
        classes = {c["class"]: c for c in shown["profiles"][0]["classes"]}
        assert set(classes) == {"PART-SM", "CRACK"} and {"threshold", "status", "fpr_3lot"} <= set(classes["CRACK"])
        refused = await call("POST", "/api/calibration/override", override, eve["csrf"])
        assert refused[0] == 403 and "engineer" in refused[1]["error"]  # a reviewer may not

        li = (await call("POST", "/api/login", {"user": "li", "password": PASSWORD}))[1]
        assert (await call("POST", "/api/calibration/override", override))[0] == 403  # no CSRF token
        assert (await call("POST", "/api/calibration/override", {**override, "reason": " "}, li["csrf"]))[0] == 400
        too_high = await call("POST", "/api/calibration/override", {**override, "threshold": 0.99}, li["csrf"])
        assert too_high[0] == 400 and "threshold" in too_high[1]["error"]  # the store's hard bounds hold
        status, after = await call("POST", "/api/calibration/override", override, li["csrf"])
        changed = {c["class"]: c for c in after["classes"]}["PART-SM"]
        assert status == 200 and changed["threshold"] == 0.8 and changed["status"] == "locked"
        bounds = {"recipe": R, "tool": T, "class": "CRACK", "lower": 0.6, "reason": "tighter"}
        assert (await call("POST", "/api/calibration/bounds", bounds, li["csrf"]))[0] == 200
        unlock = {"recipe": R, "tool": T, "class": "PART-SM", "reason": "MRB closed"}
        assert (await call("POST", "/api/calibration/unlock", unlock, li["csrf"]))[0] == 200
        status, trail = await call("GET", f"/api/calibration/history?recipe={R}&tool={T}&class=PART-SM")
        fields = {(h["who"], h["field"]) for h in trail["history"]}
        assert status == 200 and {("li", "threshold"), ("li", "status"), ("li", "lock_until")} <= fields
        assert (await call("POST", "/api/calibration/delete", unlock, li["csrf"]))[0] == 404

    _run(cfg, scenario)
    store = CalibrationStore(cfg.calibration.path)
    try:
        assert store.thresholds(R, T)["PART-SM"] == 0.8 and store.states(R, T)["CRACK"].settings.lower == 0.6
        assert any(r.who == "li" and "MRB 42" in r.reason for r in store.history(R, T, "PART-SM"))
    finally:
        store.close()


def test_an_engineer_inspects_an_upload_through_the_served_models_and_nothing_is_recorded(
    tmp_path: Path, triton_server: RunningTriton
) -> None:
    cfg = _station(tmp_path, users=[
        {"name": "eve", "role": "reviewer", "password_hash": hash_password(PASSWORD)},
        {"name": "li", "role": "engineer", "password_hash": hash_password(PASSWORD)},
    ], inspect_per_minute=3)  # fmt: skip
    cfg = cfg.model_copy(update={"triton": cfg.triton.model_copy(update={"url": triton_server.grpc_url})})
    die, _ = render_die("PART-SM", 7, tool_optics(T))
    ok, encoded = cv2.imencode(".png", die[:, :, ::-1])
    assert ok
    png = encoded.tobytes()

    def form(image: bytes, **fields: str) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("image", image, filename="die.png", content_type="image/png")
        for key, value in fields.items():
            data.add_field(key, value)
        return data

    async def scenario(call: Client, http: aiohttp.ClientSession) -> None:
        base = f"http://127.0.0.1:{cfg.review.port}"
        eve = (await call("POST", "/api/login", {"user": "eve", "password": PASSWORD}))[1]
        async with http.post(f"{base}/api/inspect", data=form(png), headers={"X-CSRF-Token": eve["csrf"]}) as r:
            assert r.status == 403  # reviewers decide items; ad-hoc checks are an engineer's
        li = (await call("POST", "/api/login", {"user": "li", "password": PASSWORD}))[1]
        token = {"X-CSRF-Token": li["csrf"]}
        async with http.post(f"{base}/api/inspect", data=form(png, recipe=R, tool=T, note="after PM"),
                             headers=token) as r:  # fmt: skip
            assert r.status == 200
            result = await r.json()
        assert result["recorded"] is False and result["decision"] in ("PASS", "DEFECT", "REVIEW")
        assert result["anomaly"]["bands"]["reject"] > result["anomaly"]["bands"]["pass"] > 0
        assert len(result["top_k"]) >= 1 and 0 < result["latency_ms"] < 60_000
        assert result["heatmap_png"].startswith("data:image/png;base64,")
        async with http.post(f"{base}/api/inspect", data=form(b"GIF89a not a die"), headers=token) as r:
            assert r.status == 400 and "PNG or JPEG" in (await r.json())["error"]
        async with http.post(f"{base}/api/inspect", data=form(png, tool="AOI-99"), headers=token) as r:
            assert r.status == 400 and "AOI-99" in (await r.json())["error"]
        async with http.post(f"{base}/api/inspect", data=form(png), headers=token) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1  # the fourth call in a minute
        async with http.post(f"{base}/api/inspect", data=form(png), headers={}) as r:
            assert r.status == 403  # no CSRF token

    _run(cfg, scenario)
    captures = CaptureStore(cfg.capture.path, 10**9, 10**9, 10**9)
    store = CalibrationStore(cfg.calibration.path)
    try:  # the station's stores hold what they held before: an ad-hoc check is never production
        assert sorted(c.capture_id for c in captures.recent(50)) == ["E1", "E2", "E3"]
        assert store._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 2
    finally:
        captures.close()
        store.close()


def test_pages_send_strangers_to_the_login_and_escape_what_the_station_recorded(tmp_path: Path) -> None:
    cfg = _station(tmp_path)
    hostile = "<script>alert('x')</script>"
    outcome = _outcome("f7", "DEFECT", "PART-SM", 0.9)
    header = outcome.frame.header
    frame = Frame(b"id", FrameHeader(*[hostile if f == "notes" else getattr(header, f) for f in FrameHeader.__slots__]),
                  outcome.frame.tensors, 0.0, 1.0, 0.0)  # fmt: skip
    captures = CaptureStore(cfg.capture.path, 10**9, 10**9, 10**9)
    captures.write([capture_of(Outcome(frame, outcome.verdict, 0.02), "E7", "DEFECT", {}, time.time())])
    captures.close()

    async def scenario(call: Client, http: aiohttp.ClientSession) -> None:
        base = f"http://127.0.0.1:{cfg.review.port}"
        async with http.get(f"{base}/items/E7?tool={T}", allow_redirects=False) as r:
            login = urlparse(r.headers["Location"])
            assert (
                r.status == 303
                and login.path == "/login"
                and parse_qs(login.query) == {"next": [f"/items/E7?tool={T}"]}
            )
        async with http.get(f"{base}/login?next=https://evil.example/") as r:
            assert r.status == 200 and 'data-next="/queue"' in await r.text()
        await call("POST", "/api/login", {"user": "vic", "password": PASSWORD})
        async with http.get(f"{base}/items/E7") as r:
            page = await r.text()
        assert r.status == 200 and hostile not in page and "&lt;script&gt;" in page
        assert 'id="decision"' not in page  # a viewer gets no decision buttons
        async with http.get(f"{base}/items/E0") as r:
            assert r.status == 410 and "retention" in await r.text()
        async with http.get(f"{base}/items/NOPE") as r:
            assert r.status == 404
        async with http.get(f"{base}/queue?colour=red") as r:
            assert r.status == 400
        async with http.get(f"{base}/queue?decision=DEFECT") as r:
            page = await r.text()
        assert r.status == 200 and "E7" in page and "E1" in page and "E2" not in page
        async with http.get(f"{base}/inspect") as r:
            assert r.status == 403 and "needs an engineer" in await r.text()
        for path in ("/wafers", "/calibration", "/static/review.js", "/static/review.css"):
            async with http.get(base + path) as r:
                assert r.status == 200, path
        async with http.get(f"{base}/api/wafers/{T}/L1/W1/map.png") as r:
            assert r.status == 404  # no wafer in this station's outbox
        async with http.get(f"{base}/api/wafers/{T}/L1/W1/map.png?mark=1,2") as r:
            assert r.status == 200 and r.content_type == "image/png"  # the die alone, ringed
        async with http.get(f"{base}/api/calibration/trend.png?recipe={R}&tool={T}&class=CRACK") as r:
            assert r.status == 200 and r.content_type == "image/png"
        async with http.get(f"{base}/api/calibration/trend.png?recipe={R}&tool={T}&class=BLOB") as r:
            assert r.status == 404

    _run(cfg, scenario)
