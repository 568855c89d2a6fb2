"""MES messages: parsing into typed values or rejections, and the bounded, aged cache."""

import json

import pytest

from edge.flow import Rejected
from edge.mes.context import ContextCache, parse_lot_event, parse_process_log

LOG = {
    "lot_id": "L1",
    "wafer_id": "W1",
    "recipe_id": "R1",
    "tool_id": "AOI-01",
    "ts": 1.0,
    "params": {"anneal_temp_c": 1050.0, "bogus": "text", "flag": True},
}


def test_process_log_keeps_numeric_params_only():
    log = parse_process_log(json.dumps(LOG).encode())
    assert not isinstance(log, Rejected)
    assert log.params == {"anneal_temp_c": 1050.0} and log.key == ("AOI-01", "L1", "W1")
    assert log.chamber_id is None
    named = parse_process_log(json.dumps({**LOG, "chamber_id": "AOI-01-CH2"}).encode())
    assert not isinstance(named, Rejected) and named.chamber_id == "AOI-01-CH2"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps({**LOG, "wafer_id": None}).encode(), "bad_value"),
        (json.dumps({k: v for k, v in LOG.items() if k != "lot_id"}).encode(), "missing_key"),
        (json.dumps({**LOG, "params": [1]}).encode(), "bad_value"),
        (json.dumps({**LOG, "chamber_id": 2}).encode(), "bad_value"),
        (json.dumps({**LOG, "chamber_id": ""}).encode(), "bad_value"),
    ],
)
def test_bad_mes_messages_are_rejected_with_a_reason(payload, reason):
    result = parse_process_log(payload)
    assert isinstance(result, Rejected) and result.reason == reason


def test_lot_events():
    ok = parse_lot_event(b'{"event": "lot_end", "lot_id": "L1", "recipe_id": "R1", "tool_id": "T"}')
    assert not isinstance(ok, Rejected) and ok.kind == "lot_end"
    assert isinstance(parse_lot_event(b'{"event": "lot_party", "lot_id": "L1"}'), Rejected)


def test_cache_is_bounded_in_size_and_age():
    cache = ContextCache(max_entries=2, max_age_s=10.0)
    logs = [parse_process_log(json.dumps({**LOG, "wafer_id": f"W{i}"}).encode()) for i in range(3)]
    for i, log in enumerate(logs):
        cache.put(log, now=float(i))
    assert len(cache) == 2
    assert cache.get(logs[0].key, now=3.0) is None  # evicted: oldest
    assert cache.get(logs[2].key, now=3.0) is logs[2]
    assert cache.get(logs[2].key, now=20.0) is None  # aged out
