"""Batching policy with an injected clock: full batches go at once, partial ones after max delay."""

import math

import pytest

from edge.inference.batcher import Batcher


def test_full_batch_is_released_immediately():
    b = Batcher(max_batch=3, max_delay_s=0.010)
    for i in range(3):
        b.add(i, now=1.0)
    assert b.poll(now=1.0) == [0, 1, 2]
    assert len(b) == 0


def test_partial_batch_waits_for_the_oldest_items_delay():
    b = Batcher(max_batch=8, max_delay_s=0.010)
    b.add("a", now=1.000)
    b.add("b", now=1.005)
    assert b.poll(now=1.009) is None
    assert b.next_deadline() == pytest.approx(1.010)
    assert b.poll(now=1.010) == ["a", "b"]
    assert b.next_deadline() is None


def test_overfull_queue_splits_into_batches_in_arrival_order():
    b = Batcher(max_batch=4, max_delay_s=1.0)
    for i in range(10):
        b.add(i, now=0.0)
    assert b.poll(0.0) == [0, 1, 2, 3]
    assert b.poll(0.0) == [4, 5, 6, 7]
    assert b.poll(0.0) is None  # two left, not full, not old enough
    assert b.poll(math.inf) == [8, 9]  # the shutdown drain


def test_zero_delay_sends_every_item_at_once():
    b = Batcher(max_batch=16, max_delay_s=0.0)
    b.add("x", now=5.0)
    assert b.poll(now=5.0) == ["x"]


@pytest.mark.parametrize(("size", "delay"), [(0, 0.01), (4, -1.0)])
def test_invalid_policy_is_refused(size, delay):
    with pytest.raises(ValueError):
        Batcher(size, delay)


def test_a_flooding_tool_fills_only_its_share_of_each_batch():
    b = Batcher(max_batch=4, max_delay_s=1.0)
    for i in range(40):
        b.add(f"A{i}", now=i * 0.001, key="A")
    b.add("B0", now=0.5, key="B")
    b.add("B1", now=0.6, key="B")
    assert b.poll(1.0) == ["A0", "B0", "A1", "B1"]  # B's frames go in the first batch, not after 40 of A's
    assert b.poll(1.0) == ["A2", "A3", "A4", "A5"]
    assert len(b) == 34


def test_keys_take_turns_oldest_first_and_one_key_keeps_arrival_order():
    b = Batcher(max_batch=3, max_delay_s=0.0)
    b.add("b1", now=2.0, key="B")
    b.add("a1", now=1.0, key="A")
    b.add("a2", now=3.0, key="A")
    b.add("c1", now=4.0, key="C")
    assert b.poll(5.0) == ["a1", "b1", "c1"]
    assert b.next_deadline() == pytest.approx(3.0)
    assert b.poll(5.0) == ["a2"]
    assert len(b) == 0 and b.next_deadline() is None
