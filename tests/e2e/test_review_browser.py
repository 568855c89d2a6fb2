"""The review pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download)
against the review service over real HTTP and the stores the daemon's own code filled: a reviewer works the queue
by keyboard, the lot end moves the threshold, an engineer overrides one, a viewer cannot. Screenshots of the queue,
an item and the calibration page land in ``build/test-artifacts/review/`` (``EDGE_TEST_ARTIFACTS`` moves them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
from playwright import sync_api

from calibration.store import CalibrationStore
from edge.capture.record import DEFECT as KEPT_DEFECT
from edge.capture.record import capture_of
from edge.capture.store import CaptureStore
from edge.config import Config, parse_config
from edge.decision.thresholds import Calibration
from edge.flow import WAFER, EventRow, Frame, FrameHeader, Outcome, ProcessLog, Tensors, Verdict
from edge.ops.metrics import Metrics
from edge.publish.outbox import Outbox
from edge.review.auth import hash_password
from edge.review.service import serve
from edge.serving.tritonserver import free_port
from edge.watch.line_watch import die_row
from edge.watch.reports import wafer_summary
from edge.watch.wafer_map import DieResult, summarise
from tools.synth import render_die, tool_optics

pytestmark = pytest.mark.e2e

R, T, CLS = "R-7NM-L4", "AOI-01", "PART-SM"
PASSWORD = "correct horse battery staple"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("EDGE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts")
)


def _outcome(i: int, decision: str, wafer: str, die: tuple[int, int], look: str) -> Outcome:
    """A die of ``look`` (the synthetic generator's picture at 256x256), with the heatmap its defect mask gives."""
    rgb, mask = render_die(look, 100 + i, tool_optics(T))
    heatmap = cv2.GaussianBlur(cv2.resize(mask.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA), (3, 3), 0)
    header = FrameHeader(f"f{i:04d}", T, R, "L1", wafer, die, time.time(), "png", None, None, None)
    context = ProcessLog("L1", wafer, R, T, time.time(), {"chamber_pressure": 7.9},
                         anomalous=({"name": "chamber_pressure", "value": 7.9, "z": 4.2},))  # fmt: skip
    tensors = Tensors(np.ascontiguousarray(rgb.transpose(2, 0, 1)), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[None])
    frame = Frame(b"tool", header, tensors, 0.0, 1.0, time.time(), context)
    defect = decision == "DEFECT"
    top = ((CLS, 0.91), ("PART-MD", 0.05)) if defect else (("GOOD", 0.97), (CLS, 0.02))
    verdict = Verdict(decision, CLS if defect else "GOOD", top[0][1], 0.6 if defect else None,
                      "REJECT" if defect else "PASS", False, False, top)  # fmt: skip
    return Outcome(frame, verdict, 0.9 if defect else 0.05, None, None, heatmap, np.full(64, 1 / 64, np.float32),
                   (0.3, 0.6))  # fmt: skip


def _station(root: Path) -> Config:
    """Lot L1 of AOI-01 as the daemon leaves it: 400 dies counted in calibration (after one initial lot), six
    DEFECT dies captured and pending review, wafer W1 summarised in the outbox and W2 still open."""
    users = [{"name": n, "role": r, "password_hash": hash_password(PASSWORD)}
             for n, r in (("vic", "viewer"), ("eve", "reviewer"), ("li", "engineer"))]  # fmt: skip
    cfg = parse_config({
        "tools": [{"id": T}, {"id": "AOI-02"}], "recipes": {R: {}},
        "capture": {"path": str(root / "captures")}, "outbox": {"path": str(root / "outbox.sqlite")},
        "calibration": {"path": str(root / "calibration.sqlite"), "initial_lots": 1},
        "review": {"port": free_port(), "users": users},
    })  # fmt: skip
    calibration = Calibration(cfg, Metrics())
    calibration.store.count_inspected(R, T, "L0", 400)
    calibration.lot_end(R, T, "L0")  # the one initial lot, clean
    captures, outbox = CaptureStore(cfg.capture.path, 10**9, 10**9, 10**9), Outbox(cfg.outbox.path)
    outcomes, events = [], []
    for i in range(400):
        wafer, die = f"W{1 + i // 200}", ((i % 200) % 15, (i % 200) // 15)
        defect = i in (31, 32, 46, 47, 260, 333)  # a cluster on W1, two strays on W2
        outcomes.append(_outcome(i, "DEFECT" if defect else "PASS", wafer, die, CLS if defect else "GOOD"))
        events.append(f"E{i:04d}" if defect else None)
    now = time.time()
    captures.write([capture_of(o, e, KEPT_DEFECT, {"anomaly": "3", "classifier": "3"}, now + k)
                    for k, (o, e) in enumerate((o, e) for o, e in zip(outcomes, events) if e)])  # fmt: skip
    calibration.record(outcomes, events)
    w1 = [o for o in outcomes if o.frame.header.wafer_id == "W1"]
    body = wafer_summary(
        "S-W1",
        now,
        "station",
        T,
        R,
        "L1",
        "W1",
        "wafer_end",
        summarise(
            [DieResult(*o.frame.header.die, o.decision, o.verdict.defect_class if o.verdict else None) for o in w1]
        ),
    )
    outbox.record([], [], dies=[die_row(o) for o in outcomes])
    summary = EventRow("S-W1", f"fab/station/wafers/{T}", WAFER, json.dumps(body))
    outbox.record([], [summary], summarised=[(T, "L1", "W1")])
    for closing in (captures, outbox, calibration):
        closing.close()
    return cfg


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Config, str]]:
    cfg = _station(tmp_path)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    done = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(cfg, stop))
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield cfg, f"http://127.0.0.1:{cfg.review.port}"
    loop.call_soon_threadsafe(stop.set)
    assert done.wait(10), "the review service did not stop"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium: `make deps` installs Debian's chromium for the browser tests", pytrace=False)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


def _login(browser: Any, base: str, user: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    for _ in range(100):  # the service is up once it answers
        try:
            page.goto(f"{base}/queue")
            break
        except sync_api.Error:
            time.sleep(0.1)
    page.wait_for_url(lambda url: "/login?next=" in url)
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: urlparse(url).path == "/queue")
    return page


def _threshold(page: Any) -> float:
    return float(page.locator(f"tr[data-class='{CLS}'] td.threshold").first.inner_text())


def _loaded(page: Any, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"))


def test_review_pages_in_chromium(service: tuple[Config, str], browser: Any) -> None:
    cfg, base = service
    shots = ARTIFACTS / "review"
    shots.mkdir(parents=True, exist_ok=True)

    # a reviewer works the queue with the keyboard
    page = _login(browser, base, "eve")
    assert page.locator("#queue tbody tr").count() == 6
    assert "6 pending" in page.inner_text("h1")
    page.screenshot(path=str(shots / "queue.png"), full_page=True)
    page.click("#start")
    page.wait_for_url("**/items/E0031")
    assert page.get_attribute("#die", "src").endswith("overlay=heatmap")
    page.wait_for_function("document.getElementById('die').naturalWidth > 0 && document.getElementById('wafer')"
                           ".naturalWidth > 0")  # fmt: skip
    assert "chamber_pressure" in page.inner_text("#process") and "4.2" in page.inner_text("#process")
    assert "PART-SM" in page.inner_text("#classes") and "classifier v3" in page.content()
    page.keyboard.press("3")
    assert page.get_attribute("#die", "src").endswith("overlay=attention")
    page.keyboard.press("2")
    page.wait_for_function("document.getElementById('die').complete")
    page.screenshot(path=str(shots / "item.png"), full_page=True)
    page.keyboard.press("f")  # false
    page.wait_for_url("**/items/E0032")
    page.keyboard.press("c")  # a comment, then leave the field and decide
    page.keyboard.type("dust on the optics")
    page.keyboard.press("Escape")
    page.keyboard.press("f")
    page.wait_for_url("**/items/E0046")
    page.keyboard.press("f")
    page.wait_for_url("**/items/E0047")
    page.goto(f"{base}/queue")
    assert "3 pending" in page.inner_text("h1")
    page.goto(f"{base}/wafers")
    card = page.locator(".wafer").first
    assert "cluster" in card.inner_text() and "severity" in card.inner_text()
    assert _loaded(page, ".wafer img")

    store = CalibrationStore(cfg.calibration.path)
    try:
        comments = [r.reason for r in store.history(R, T, CLS, 50) if r.who == "eve" and r.field == "disposition"]
        assert sorted(comments) == ["review of E0031", "review of E0032: dust on the optics", "review of E0046"]
    finally:
        store.close()

    # a viewer sees the calibration but cannot change it, not even by calling the API from the page
    viewer = _login(browser, base, "vic")
    viewer.goto(f"{base}/calibration")
    assert viewer.locator("form.engineer").count() == 0 and viewer.locator(".readonly").count() == 2
    refused = viewer.evaluate("""async () => (await fetch('/api/calibration/override', {method: 'POST',
        headers: {'Content-Type': 'application/json',
                  'X-CSRF-Token': document.querySelector('meta[name=csrf]').content},
        body: JSON.stringify({recipe: 'R-7NM-L4', tool: 'AOI-01', class: 'PART-SM', threshold: 0.9,
                              reason: 'mine'})})).status""")
    assert refused == 403
    viewer.goto(f"{base}/items/E0260")
    assert viewer.locator("#decision").count() == 0
    assert viewer.goto(f"{base}/inspect").status == 403 and "needs an engineer" in viewer.inner_text("main")
    viewer.goto(f"{base}/calibration")
    before = _threshold(viewer)

    # the lot ends (the daemon's calibration code): three false positives over 400 dies move the threshold up
    calibration = Calibration(cfg, Metrics())
    try:
        moved = calibration.lot_end(R, T, "L1")
    finally:
        calibration.close()
    assert CLS in moved and moved[CLS][1] > moved[CLS][0] == before

    engineer = _login(browser, base, "li")
    engineer.goto(f"{base}/calibration")
    assert _threshold(engineer) == pytest.approx(moved[CLS][1])
    engineer.wait_for_function("[...document.querySelectorAll('figure.trend img')].every(i => i.complete)")
    engineer.screenshot(path=str(shots / "calibration.png"), full_page=True)
    form = engineer.locator(f"form.engineer[data-tool='{T}']")
    form.locator("select[name=action]").select_option("override")
    form.locator("select[name=class]").select_option(CLS)
    form.locator("input[name=threshold]").fill("0.8")
    form.locator("input[name=reason]").fill("MRB 42: hold while the chamber is serviced")
    with engineer.expect_navigation():
        form.locator("button[type=submit]").click()
    assert _threshold(engineer) == pytest.approx(0.8)
    store = CalibrationStore(cfg.calibration.path)
    try:
        assert store.thresholds(R, T)[CLS] == 0.8
        assert any(r.who == "li" and r.reason.startswith("MRB 42") for r in store.history(R, T, CLS, 20))
        assert [p.lot_id for p in store.trend(R, T, CLS)] == ["L0", "L1"]
    finally:
        store.close()
