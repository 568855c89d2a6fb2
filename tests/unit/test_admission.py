"""Admission: bounded intake with a share per tool, the order in which busy reasons apply, and retry hints that
follow the turnaround."""

from dataclasses import dataclass

import pytest

from edge.ingest.admission import Inflight, Limits, Turnaround, busy_reason, per_tool_share, retry_after_ms


@dataclass
class F:
    key: tuple[str, str]


def test_counts_per_tool_follow_adds_and_pops():
    held: Inflight[F] = Inflight()
    for i in range(3):
        held.add(F(("A", f"a{i}")))
    held.add(F(("B", "b0")))
    held.add(F(("A", "a0")))  # the same frame again (a resend) is not counted twice
    assert len(held) == 4 and held.held_by("A") == 3 and held.held_by("B") == 1
    assert held.pop(("A", "a1")).key == ("A", "a1")
    assert held.pop(("A", "a1")) is None
    assert held.held_by("A") == 2 and ("A", "a1") not in held and ("A", "a2") in held
    held.pop(("B", "b0"))
    assert held.held_by("B") == 0 and sorted(f.key for f in held) == [("A", "a0"), ("A", "a2")]


@pytest.mark.parametrize(
    ("held", "by_tool", "accepting", "full", "reason"),
    [
        (0, 0, True, False, None),
        (10, 4, True, False, None),
        (0, 0, False, False, "shutting_down"),
        (0, 0, True, True, "outbox_full"),
        (16, 0, True, False, "queue_full"),
        (9, 8, True, False, "tool_share_full"),
        (16, 8, False, True, "shutting_down"),
    ],
)
def test_busy_reasons_apply_in_order(held, by_tool, accepting, full, reason):
    assert busy_reason(held, by_tool, Limits(station=16, per_tool=8), accepting=accepting, outbox_full=full) == reason


def test_a_flooding_tool_leaves_room_for_the_others():
    limits = Limits(station=256, per_tool=per_tool_share(256, 2, 16))
    held: Inflight[F] = Inflight()
    i = 0
    while busy_reason(len(held), held.held_by("A"), limits, accepting=True, outbox_full=False) is None:
        held.add(F(("A", str(i))))
        i += 1
    assert held.held_by("A") == 128
    assert busy_reason(len(held), held.held_by("B"), limits, accepting=True, outbox_full=False) is None


@pytest.mark.parametrize(("station", "tools", "batch", "share"), [(256, 2, 16, 128), (256, 40, 16, 16), (8, 1, 16, 8)])
def test_default_share(station, tools, batch, share):
    assert per_tool_share(station, tools, batch) == share


def test_turnaround_follows_each_tool_and_the_station():
    t = Turnaround(weight=0.5)
    assert t.seconds("T1") is None and t.seconds() is None
    t.observe("T1", 2.0)
    t.observe("T2", 0.2)
    t.observe("T1", 1.0)
    assert t.seconds("T1") == 1.5 and t.seconds("T2") == 0.2
    assert t.seconds() == pytest.approx(2.0 + 0.5 * (0.2 - 2.0) + 0.5 * (1.0 - 1.1))  # all tools, in order


@pytest.mark.parametrize(
    ("reason", "turnaround", "jitter", "hint"),
    [
        ("tool_share_full", 0.8, 1.0, 800),  # about one turnaround of the tool's frames
        ("tool_share_full", 0.8, 0.5, 400),  # jittered
        ("queue_full", 0.01, 1.0, 50),  # never under the floor
        ("tool_share_full", 9.0, 1.4, 2000),  # nor over the ceiling
        ("tool_share_full", None, 1.0, 50),  # nothing answered yet: the floor
        ("outbox_full", 0.8, 1.0, 50),  # not a matter of turnaround
        ("shutting_down", 0.8, 1.0, 50),
    ],
)
def test_the_retry_hint_follows_the_turnaround_within_its_bounds(reason, turnaround, jitter, hint):
    assert retry_after_ms(reason, turnaround, 50, 2000, jitter) == hint
