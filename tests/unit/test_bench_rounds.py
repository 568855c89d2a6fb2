"""What the end-to-end and join benches make of their rounds: rates averaged, percentiles over every frame of every
round, replies added up; the join bench's transports named and checked."""

from __future__ import annotations

import pytest

from tools.bench import join
from tools.bench.e2e import pooled


def test_rounds_pool_into_one_side():
    slow = {"frames_per_s": 100.0, "latencies_ms": [10.0] * 97 + [500.0] * 3, "replies": {"ok": 100}, "unanswered": 0}
    fast = {"frames_per_s": 140.0, "latencies_ms": [20.0] * 100, "replies": {"ok": 99, "busy": 1}, "unanswered": 1}
    side = pooled([slow, fast])
    assert side["frames_per_s"] == 120.0 and side["frames_per_s_per_round"] == [100.0, 140.0]
    assert side["latency_ms"]["p50"] in (10.0, 15.0, 20.0) and side["latency_ms"]["p99"] > 20.0  # the slow frames count
    assert side["replies"] == {"ok": 199, "busy": 1} and side["unanswered"] == 1
    assert "latencies_ms" not in side
    assert "replies" not in pooled([{"frames_per_s": 1.0, "latencies_ms": [1.0]}])  # raw Triton's side has none


def test_join_modes_are_named_by_logs_and_transport():
    assert join.mode_name(True, "tcp") == "with_logs" and join.mode_name(False, "ipc") == "no_logs_ipc"


@pytest.mark.parametrize("transports", ["udp", "", "tcp,pigeon"])
def test_join_refuses_a_transport_it_does_not_know(transports, capsys):
    with pytest.raises(SystemExit) as stopped:
        join.main(["--transports", transports])
    assert stopped.value.code == 2 and "--transports" in capsys.readouterr().err
