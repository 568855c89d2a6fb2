"""What a served model says about itself in its Triton config parameters, and /readyz reporting it."""

import asyncio
import json

from calibration.table import Bands
from edge.inference.model_facts import Precision, bands_from, precision_from
from edge.ops.http import Health, HttpServer
from edge.ops.metrics import Metrics
from tests.unit.test_http import get


def test_bands_are_read_when_both_are_numbers():
    assert bands_from({"pass_band": "0.01", "reject_band": "0.02"}) == Bands(0.01, 0.02)
    assert bands_from({"pass_band": "0.01"}) is None
    assert bands_from({"pass_band": "x", "reject_band": "0.02"}) is None


def test_precision_with_a_fallback_names_what_was_asked_and_why():
    params = {
        "precision": "fp16",
        "precision_requested": "int8",
        "precision_fallback": "int8: escape_rate 0.01 -> 0.02 (allowed +0.005)",
    }
    assert precision_from(params) == Precision("fp16", "int8", "int8: escape_rate 0.01 -> 0.02 (allowed +0.005)")
    assert precision_from({"precision": "fp32"}) == Precision("fp32", "fp32", None)
    assert precision_from({"pass_band": "0.1"}) is None  # a repository built before models declared it


def test_readyz_reports_the_served_precision_and_its_fallback():
    async def scenario():
        health = Health(triton_ready=True, broker_required=False)
        health.precision = {"classifier": Precision("fp16", "int8", "int8: top1_changes 0 -> 0.3").report()}
        server = HttpServer("127.0.0.1", 0, Metrics().registry, health)
        port = await server.start()
        status, body = await get(port, "/readyz")
        await server.close()
        return status, json.loads(body)

    status, body = asyncio.run(scenario())
    assert status == 200
    assert body["precision"] == {
        "classifier": {"served": "fp16", "requested": "int8", "fallback": "int8: top1_changes 0 -> 0.3"}
    }
