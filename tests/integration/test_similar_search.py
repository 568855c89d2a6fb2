"""Similar-defect search end to end: dies scored by the served models on a real Triton (the daemon's inference
path, embeddings included), kept in a real capture store, searched through the review service over HTTP (by
capture and by an uploaded image) and through ``edge-inspect captures similar``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import pytest

from calibration.store import CalibrationStore
from edge import cli
from edge.capture.record import capture_of
from edge.capture.store import CaptureStore
from edge.config import Config, parse_config
from edge.review.auth import hash_password
from edge.review.inspect import AdHoc, Upload
from edge.serving.tritonserver import free_port
from tests.review_server import review_http
from tests.triton_fixture import RunningTriton
from tools.synth import render_die, tool_optics

pytestmark = pytest.mark.integration
R, T = "R1", "AOI-01"
PASSWORD = "correct horse battery staple"
LOOKS = ("PART-LG", "CMP-ERR", "BUMP-SM")


def _png(look: str, seed: int) -> bytes:
    die, _ = render_die(look, seed, tool_optics(T))
    ok, encoded = cv2.imencode(".png", die[:, :, ::-1])
    assert ok
    return encoded.tobytes()


def _station(tmp_path: Path, triton: RunningTriton) -> Config:
    """Eight dies of each of three looks scored by the served models and captured; C-PART-LG-0 reviewed."""
    cfg = parse_config({
        "tools": [{"id": T}], "recipes": {R: {}},
        "triton": {"url": triton.grpc_url},
        "capture": {"path": str(tmp_path / "captures")},
        "calibration": {"path": str(tmp_path / "calibration.sqlite")},
        "review": {"port": free_port(), "inspect_per_minute": 10,
                   "users": [{"name": "vic", "role": "viewer", "password_hash": hash_password(PASSWORD)}]},
    })  # fmt: skip
    calibration = CalibrationStore(cfg.calibration.path)
    calibration.ensure_profile(R, T, LOOKS)

    async def score() -> None:
        ad_hoc = AdHoc(cfg, calibration)
        captures = CaptureStore(cfg.capture.path, 10**9, 10**9, 10**9)
        try:
            for look in LOOKS:
                for seed in range(8):
                    _, outcome, _ = await ad_hoc.outcome(Upload(_png(look, seed), R, T, {}, None))
                    assert outcome.embedding is not None and outcome.embedding.shape == (128,)
                    cid = f"C-{look}-{seed}"
                    captures.write([capture_of(outcome, cid, "DEFECT", outcome.models, time.time())])
                    calibration.add_candidate(cid, R, T, "L1", look, 0.9, flagged=True)
                    calibration.record([], [], [(cid, R, T, "L1", "DEFECT", look)])
        finally:
            captures.close()
            await ad_hoc.close()

    asyncio.run(score())
    calibration.review("C-PART-LG-0", "real", "eve", comment="confirmed on SEM")
    calibration.close()
    return cfg


def test_similar_dies_by_capture_and_by_upload_over_http_and_the_cli(
    tmp_path: Path, triton_server: RunningTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _station(tmp_path, triton_server)
    base = f"http://127.0.0.1:{cfg.review.port}"
    query_png = _png("PART-LG", 99)  # a die of a look the store has, never captured itself

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with review_http(cfg) as (_, http):
            async with http.get(f"{base}/api/captures/C-PART-LG-1/similar") as r:
                assert r.status == 401
            async with http.post(f"{base}/api/login", json={"user": "vic", "password": PASSWORD}) as r:
                token = {"X-CSRF-Token": (await r.json())["csrf"]}
            async with http.get(f"{base}/api/captures/C-PART-LG-1/similar?k=7") as r:
                assert r.status == 200
                seen["capture"] = await r.json()
            for path, status in (("/api/captures/C-none/similar", 404), ("/api/captures/C-PART-LG-1/similar?k=0",
                                 400), ("/api/captures/C-PART-LG-1/similar?k=many", 400)):  # fmt: skip
                async with http.get(base + path) as r:
                    assert r.status == status, path
            form = aiohttp.FormData()
            form.add_field("image", query_png, filename="die.png", content_type="image/png")
            async with http.post(f"{base}/api/similar?k=5", data=form, headers=token) as r:
                assert r.status == 200
                seen["upload"] = await r.json()
            bad = aiohttp.FormData()
            bad.add_field("image", b"GIF89a", filename="x.gif", content_type="image/gif")
            async with http.post(f"{base}/api/similar", data=bad, headers=token) as r:
                assert r.status == 400 and "PNG or JPEG" in (await r.json())["error"]
            async with http.get(f"{base}/similar?capture=C-PART-LG-1") as r:
                assert r.status == 200
                seen["page"] = await r.text()
            async with http.get(f"{base}/metrics") as r:
                seen["metrics"] = await r.text()
        return seen

    seen = asyncio.run(scenario())
    hits = seen["capture"]["hits"]
    assert len(hits) == 7 and all(h["capture_id"] != "C-PART-LG-1" for h in hits)
    same = [h["defect_class"] for h in hits[:5]].count("PART-LG")
    assert hits[0]["defect_class"] == "PART-LG" and same >= 4, "the nearest captures show the same defect"
    assert hits[0]["similarity"] >= hits[-1]["similarity"] and hits[0]["lot_id"] and hits[0]["ts"] > 0
    reviewed = [h for h in hits if h["capture_id"] == "C-PART-LG-0"]
    assert reviewed and reviewed[0]["review"]["disposition"] == "real" and reviewed[0]["review"]["by"] == "eve"
    assert seen["capture"]["query"]["space"] == seen["upload"]["query"]["space"]
    assert [h["defect_class"] for h in seen["upload"]["hits"]].count("PART-LG") >= 4
    assert "C-PART-LG-0" in seen["page"] and "confirmed" not in seen["page"] and "real (" in seen["page"]
    assert 'edge_review_similar_total{outcome="refused",query="capture"} 3.0' in seen["metrics"]
    assert 'edge_review_similar_total{outcome="done",query="upload"} 1.0' in seen["metrics"]

    config = tmp_path / "edge.toml"
    config.write_text(_toml(cfg))
    capsys.readouterr()  # the service's log lines
    assert cli.main(["captures", "similar", "--config", str(config), "C-CMP-ERR-3", "--k", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and rows[0]["defect_class"] == "CMP-ERR"
    assert [r["defect_class"] for r in rows].count("CMP-ERR") >= 3
    image = tmp_path / "query.png"
    image.write_bytes(_png("BUMP-SM", 98))
    assert cli.main(["captures", "similar", "--config", str(config), "--image", str(image), "--k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and "BUMP-SM" in printed[0] and sum("BUMP-SM" in line for line in printed) >= 2
    assert cli.main(["captures", "similar", "--config", str(config), "C-none"]) == 4
    assert cli.main(["captures", "similar", "--config", str(config)]) == 2


def _toml(cfg: Config) -> str:
    return (f'[[tools]]\nid = "{T}"\n[recipes.{R}]\n[triton]\nurl = "{cfg.triton.url}"\n'
            f'[capture]\npath = "{cfg.capture.path}"\n[calibration]\npath = "{cfg.calibration.path}"\n')  # fmt: skip
