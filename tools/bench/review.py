"""Benchmark: the review service's answer times over a full capture store, in one run.

Fills a fresh capture store with ``--captures`` flagged dies (256x256 RGB, a heatmap and attention each, spread over
two tools and three decisions) and a calibration store in which ``--reviewed`` of them already have a label, starts
the service (a real aiohttp server on a free port), logs in, and times ``--repeats`` of each request a reviewer
makes: the queue (first page of 50 and its counts), an item, its die with the heatmap overlay, and a decision (which
also finds the next item); and the pages a reviewer opens, their HTML alone (``page_queue``, ``page_item``) and, in
Debian's headless Chromium (Playwright, when ``chromium`` is installed), the item page loaded whole: HTML, script,
style, the die with its heatmap and the wafer map, from navigation start to the load event (``browser_item_load``)
and the queue page with its 50 thumbnails (``browser_queue_load``). Prints p50/p95 per request in milliseconds, the
store's size and the host.

    python -m tools.bench.review --captures 10000 --reviewed 0.5 --repeats 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from calibration.store import CalibrationStore
from edge.capture.record import Capture
from edge.capture.store import CaptureStore
from edge.config import Config, parse_config
from edge.review.auth import hash_password
from edge.review.service import serve
from edge.serving.tritonserver import free_port
from tools.sim.aoi_sim import latency_percentiles

TOOLS, RECIPE = ("AOI-01", "AOI-02"), "R1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KINDS = (("DEFECT", "PART-SM"), ("REVIEW", "UNCLASSIFIED"), ("AUDIT", "CRACK"))


def fill(root: Path, n: int, reviewed: float, seed: int = 0) -> Config:
    """Stores under ``root`` with ``n`` captures, the first ``reviewed`` share of them labelled; the config."""
    rng = np.random.default_rng(seed)
    dies = rng.integers(0, 256, (16, 3, 256, 256), dtype=np.uint8)  # 16 textures, as noisy as real dies
    cfg = parse_config({
        "tools": [{"id": t} for t in TOOLS], "recipes": {RECIPE: {}},
        "capture": {"path": str(root / "captures")}, "calibration": {"path": str(root / "calibration.sqlite")},
        "review": {"port": free_port(), "users": [{"name": "bench", "role": "reviewer",
                                                   "password_hash": hash_password("bench")}]},
    })  # fmt: skip
    captures = CaptureStore(cfg.capture.path, 10**13, 10**9, 10**9)
    calibration = CalibrationStore(cfg.calibration.path)
    now, batch, reviewable = time.time(), [], []
    for i in range(n):
        decision, cls = KINDS[i % len(KINDS)]
        tool, event_id = TOOLS[i % 2], f"E{i:08d}"
        facts = {"top_k": [{"class": cls, "p": 0.9}], "process": {"present": True, "anomalous_parameters": []},
                 "note": None, "models": {"anomaly": "1", "classifier": "1"}}  # fmt: skip
        batch.append(Capture(event_id, event_id, decision, now - n + i, tool, RECIPE, "L1", f"W{i // 50:04d}",
                             (i % 7, i // 7 % 7), f"f{i}", decision, cls, 0.9, 0.6, 0.01, "REJECT", facts,
                             dies[i % 16], rng.random((32, 32), dtype=np.float32),
                             rng.random(64, dtype=np.float32)))  # fmt: skip
        reviewable.append((event_id, RECIPE, tool, "L1", decision, cls))
        if len(batch) == 500:
            captures.write(batch)
            batch = []
    captures.write(batch)
    calibration.record([], [], reviewable)
    for event_id, *_ in reviewable[: int(n * reviewed)]:
        calibration.review(event_id, "false", "earlier-shift")
    captures.close()
    calibration.close()
    return cfg


async def measure(cfg: Config, repeats: int, n: int, reviewed: float, browser: bool) -> dict[str, dict[str, float]]:
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cfg, stop))
    base = f"http://127.0.0.1:{cfg.review.port}"
    times: dict[str, list[float]] = {name: [] for name in ("queue", "item", "image_heatmap", "page_queue",
                                                            "page_item", "decision")}  # fmt: skip
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for _ in range(200):
            try:
                async with http.post(f"{base}/api/login", json={"user": "bench", "password": "bench"}) as r:
                    csrf = (await r.json())["csrf"]
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        first = int(n * reviewed)
        for k in range(repeats):
            item = f"E{first + k:08d}"
            for name, method, path, body in (
                ("queue", "GET", "/api/queue?limit=50", None),
                ("item", "GET", f"/api/captures/{item}", None),
                ("image_heatmap", "GET", f"/api/captures/{item}/image.png?overlay=heatmap", None),
                ("page_queue", "GET", "/queue", None),
                ("page_item", "GET", f"/items/{item}", None),
                ("decision", "POST", f"/api/captures/{item}/decision", {"disposition": "real"}),
            ):
                t0 = time.perf_counter()
                async with http.request(method, base + path, json=body, headers={"X-CSRF-Token": csrf}) as r:
                    await r.read()
                    assert r.status == 200, (path, r.status)
                times[name].append((time.perf_counter() - t0) * 1000)
    if browser:
        times.update(await in_browser(base, [f"E{first + repeats + k:08d}" for k in range(repeats)]))
    stop.set()
    await server
    return {name: latency_percentiles(ms) for name, ms in times.items()}


async def in_browser(base: str, items: list[str]) -> dict[str, list[float]]:
    """Whole page loads in headless Chromium (navigation start to the load event), logged in as the bench user."""
    from playwright.async_api import async_playwright  # a dev dependency: only this measurement needs it

    loads: dict[str, list[float]] = {"browser_item_load": [], "browser_queue_load": []}
    timing = "() => { const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime; }"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = await browser.new_page()
        await page.goto(f"{base}/login")
        await page.fill("input[name=user]", "bench")
        await page.fill("input[name=password]", "bench")
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        for item in items:
            await page.goto(f"{base}/items/{item}", wait_until="load")
            loads["browser_item_load"].append(await page.evaluate(timing))
            await page.goto(f"{base}/queue", wait_until="load")
            loads["browser_queue_load"].append(await page.evaluate(timing))
        await browser.close()
    return loads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.review", description=__doc__.split("\n")[0])
    parser.add_argument("--captures", type=int, default=10_000)
    parser.add_argument("--reviewed", type=float, default=0.5, help="share already labelled")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true", help="skip the page loads in Chromium")
    args = parser.parse_args(argv)
    browser = not args.no_browser and Path(CHROMIUM).exists()
    root = Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        t0 = time.monotonic()
        cfg = fill(root, args.captures, args.reviewed)
        filled = time.monotonic() - t0
        size = sum(p.stat().st_size for p in (root / "captures").rglob("*") if p.is_file())
        latency = asyncio.run(measure(cfg, args.repeats, args.captures, args.reviewed, browser))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "captures": args.captures, "reviewed": args.reviewed, "store_bytes": size, "fill_s": round(filled, 1),
        "browser": CHROMIUM if browser else "not measured (no chromium, or --no-browser)", "latency_ms": latency,
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
