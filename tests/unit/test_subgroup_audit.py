"""The subgroup audit's statistics (``edge.review.subgroups``): Wilson intervals and Fisher p values with known
values (and SciPy's), the correction across slices, and which slices get flagged: a planted slice with a much higher
false-positive rate is, a uniform dimension is not, nor a small slice however extreme."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from scipy import stats

from edge.review.subgroups import (
    BH,
    ESCAPE,
    FALSE_POSITIVE,
    UNKNOWN,
    Reviewed,
    audit,
    benjamini_hochberg,
    fisher_exact,
    holm,
    model_slice,
    parse_shifts,
    parse_when,
    shift_of,
    wilson,
    zone_of,
)


def _records(kind: str, dimension: str, value: str, n: int, errors: int, **others: str) -> list[Reviewed]:
    return [Reviewed(kind, i < errors, {dimension: value, **others}) for i in range(n)]


def test_wilson_interval_matches_the_published_values() -> None:
    low, high = wilson(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-4) and high == pytest.approx(0.1744, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and wilson(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)  # no error: not [0, 0]
    assert wilson(20, 20)[1] == 1.0
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_fisher_exact_matches_the_tea_tasting_table_and_scipy() -> None:
    assert fisher_exact(3, 1, 1, 3) == pytest.approx(34 / 70)
    assert fisher_exact(0, 0, 5, 5) == 1.0  # an empty row: nothing to test
    for a, b, c, d in itertools.product((0, 1, 3, 7, 20), (0, 2, 9, 40), (0, 1, 5, 30), (1, 6, 50, 300)):
        expected = stats.fisher_exact([[a, b], [c, d]], alternative="two-sided").pvalue
        assert fisher_exact(a, b, c, d) == pytest.approx(expected, rel=1e-9, abs=1e-300), (a, b, c, d)


def test_holm_and_benjamini_hochberg_adjust_in_the_order_given() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert benjamini_hochberg([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_a_tool_with_a_much_higher_false_positive_rate_is_flagged_and_the_others_are_not() -> None:
    records = [r for t in ("AOI-01", "AOI-02", "AOI-04") for r in _records(FALSE_POSITIVE, "tool", t, 200, 20)]
    records += _records(FALSE_POSITIVE, "tool", "AOI-03", 200, 60)
    result = audit(records)
    flagged = [(s.kind, s.dimension, s.value, s.direction) for s in result.flagged]
    assert flagged == [(FALSE_POSITIVE, "tool", "AOI-03", "higher")]
    [planted] = [s for s in result.of(FALSE_POSITIVE, "tool") if s.value == "AOI-03"]
    assert planted.counts.rate == pytest.approx(0.3) and planted.rest.rate == pytest.approx(0.1)
    assert planted.p == pytest.approx(stats.fisher_exact([[60, 140], [60, 540]]).pvalue)
    assert planted.p_adjusted is not None and planted.p_adjusted < 1e-6
    assert all(s.p is not None for s in result.of(FALSE_POSITIVE, "tool"))  # every tool tested, three not flagged
    assert result.overall[FALSE_POSITIVE].n == 800 and result.overall[ESCAPE].n == 0


def test_a_uniform_dimension_flags_nothing() -> None:
    records = [r for t in ("AOI-01", "AOI-02", "AOI-03") for r in _records(ESCAPE, "shift", t, 150, 15)]
    result = audit(records)
    assert result.flagged == [] and {s.p for s in result.of(ESCAPE, "shift")} == {1.0}


def test_a_small_slice_is_shown_untested_however_extreme() -> None:
    records = _records(FALSE_POSITIVE, "tool", "AOI-01", 300, 30) + _records(FALSE_POSITIVE, "tool", "AOI-09", 8, 8)
    result = audit(records, min_n=20)
    [small] = [s for s in result.of(FALSE_POSITIVE, "tool") if s.value == "AOI-09"]
    assert small.counts.rate == 1.0 and small.counts.interval is not None and small.p is None and not small.flagged
    assert result.tests == 0  # the big slice's rest is the small one: untested too
    assert audit(records, min_n=5).flagged  # a lower min_n tests it, and it stands out


def test_the_correction_counts_every_slice_tested_and_a_two_slice_dimension_once() -> None:
    records = [
        Reviewed(FALSE_POSITIVE, i < 13, {"model": "classifier:1", "notes": "present" if i % 2 else "absent"})
        for i in range(60)
    ] + [Reviewed(FALSE_POSITIVE, i < 4, {"model": "classifier:2", "notes": "present" if i % 2 else "absent"})
         for i in range(60)]  # fmt: skip
    raw = stats.fisher_exact([[13, 47], [4, 56]]).pvalue
    alone = audit(records, dimensions=("model",))
    assert alone.tests == 1 and [s.value for s in alone.flagged] == ["classifier:1", "classifier:2"]
    both = audit(records, dimensions=("model", "notes"))
    model = both.of(FALSE_POSITIVE, "model")
    assert both.tests == 2 and raw < 0.05  # one test per two-slice dimension
    assert [s.p for s in model] == pytest.approx([raw, raw]) and [s.p_adjusted for s in model] == pytest.approx(
        [2 * raw, 2 * raw]
    )
    assert both.flagged == []  # significant alone, not once corrected
    assert audit(records, dimensions=("model", "notes"), correction=BH).flagged == []


def test_slices_default_to_unknown_and_every_dimension_is_reported() -> None:
    result = audit([Reviewed(ESCAPE, True, {"tool": "AOI-01"})])
    document = result.as_dict()
    assert [s["slice"] for s in document["rates"][ESCAPE]["dimensions"]["chamber"]] == [UNKNOWN]
    assert document["rates"][ESCAPE]["n"] == 1 and document["rates"][FALSE_POSITIVE]["rate"] is None
    assert document["correction"] == "holm" and document["interval"] == "Wilson 95%"
    for bad in ({"alpha": 0.0}, {"min_n": 0}, {"correction": "bonferroni"}):
        with pytest.raises(ValueError):
            audit([], **bad)  # type: ignore[arg-type]


def test_shifts_zones_dates_and_models() -> None:
    starts = parse_shifts("06:00,14:00,22:00")
    utc = UTC
    day = datetime(2026, 3, 2, tzinfo=UTC)
    assert shift_of((day + timedelta(hours=6)).timestamp(), starts, utc) == "06:00-14:00"
    assert shift_of((day + timedelta(hours=13, minutes=59)).timestamp(), starts, utc) == "06:00-14:00"
    assert shift_of((day + timedelta(hours=23)).timestamp(), starts, utc) == "22:00-06:00"
    assert shift_of((day + timedelta(hours=3)).timestamp(), starts, utc) == "22:00-06:00"  # past midnight
    assert shift_of((day + timedelta(hours=3)).timestamp(), starts, timezone(timedelta(hours=5))) == "06:00-14:00"
    assert shift_of(None, starts) == UNKNOWN
    assert parse_shifts("18:30, 07:00") == (420, 1110)
    for bad in ("6", "25:00", "06:00,06:00", "06:61"):
        with pytest.raises(ValueError):
            parse_shifts(bad)
    assert parse_when("2026-03-02", utc) == day.timestamp()
    assert parse_when("2026-03-02T06:00+01:00", utc) == (day + timedelta(hours=5)).timestamp()
    with pytest.raises(ValueError, match="not a date"):
        parse_when("yesterday")
    assert [zone_of(r) for r in (0.0, 0.34, 0.35, 0.75, 0.76, None)] == [
        "centre", "centre", "middle", "middle", "edge", UNKNOWN]  # fmt: skip
    assert model_slice({"classifier": "3", "anomaly": "2"}) == "anomaly:2 classifier:3" and model_slice({}) == UNKNOWN
