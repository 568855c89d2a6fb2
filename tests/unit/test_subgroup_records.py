"""The subgroup audit's reader over real stores the daemon's own functions wrote (``tests.audit_station``): each
reviewed die once (a redelivered review too, a changed one as it ends), its slices from its capture, else its
event, else its id; filters by time and recipe; and ``edge-inspect audit subgroups`` on them, bad input included."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest

from edge import cli
from edge.review.subgroup_records import (
    AuditRefused,
    AuditUnreadable,
    Filters,
    Request,
    Shifts,
    Sources,
    read_reviewed,
    request_of,
    subgroup_audit,
    ulid_time,
)
from edge.review.subgroups import ESCAPE, FALSE_POSITIVE, UNKNOWN, parse_shifts
from tests.audit_station import CENTRE, DAY, EDGE, MIDDLE, R2, T1, T2, Die, R, fill

UTC_SHIFTS = Shifts(parse_shifts("06:00,14:00,22:00"), UTC)
FALSE, REAL = {"disposition": "false"}, {"disposition": "real"}
DIES = [
    Die("a", "DEFECT", T1, 7, CENTRE, note=True, process=True, reviews=(FALSE,)),
    Die("b", "DEFECT", T2, 15, EDGE, reviews=(REAL, REAL)),  # redelivered: counts once
    Die("c", "REVIEW", T1, 23, MIDDLE, captured=False, reviews=(FALSE,)),  # only its event: no note known
    Die("d", "AUDIT", T1, 8, MIDDLE, note=True, reviews=({"disposition": "relabel", "class": "RESIDUE"},)),
    Die("e", "AUDIT", T2, 9, EDGE, process=True, reviews=(REAL, FALSE)),  # changed: the last review counts
    Die("f", "DEFECT", T1, 10, CENTRE),  # never reviewed
    Die("g", "DEFECT", T2, 11, CENTRE, recipe=R2, reviews=(FALSE,)),
    Die("h", "AUDIT", T2, 30, CENTRE, captured=False, in_outbox=False, reviews=({"disposition": "novel"},)),
    Die("p", "PASS", T1, 12, CENTRE),  # a pass not sampled: nothing to review
]


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("station")
    cfg, ids = fill(root, DIES)
    (root / "edge.toml").write_text(
        f'[[tools]]\nid = "{T1}"\n[[tools]]\nid = "{T2}"\n[recipes.{R}]\n[recipes.{R2}]\n'
        f'[capture]\npath = "{cfg.capture.path}"\n[outbox]\npath = "{cfg.outbox.path}"\n'
        f'[calibration]\npath = "{cfg.calibration.path}"\n'
    )
    return root, ids


def _sources(root: Path) -> Sources:
    return Sources(root / "calibration.sqlite", root / "captures" / "captures.sqlite", root / "outbox.sqlite")


def test_each_reviewed_die_once_with_its_slices_from_the_best_source(station: tuple[Path, dict[str, str]]) -> None:
    root, ids = station
    found = read_reviewed(_sources(root), Filters(), UTC_SHIFTS)
    rows = sorted((r.kind, r.error, tuple(sorted(r.slices.items()))) for r in found.records)
    assert len(found.records) == 7 and found.recipes == [R, R2]  # f (no review) and p (no event) are not there

    def one(tool: str, shift: str, zone: str, notes: str, process: str, model: str) -> tuple[tuple[str, str], ...]:
        chamber = f"{tool}-CH1" if process == "present" else UNKNOWN  # the process log names it
        return tuple(sorted({"tool": tool, "chamber": chamber, "shift": shift, "zone": zone, "notes": notes,
                             "process_log": process, "model": model}.items()))  # fmt: skip

    both = "anomaly:1 classifier:2"
    assert rows == sorted([
        (FALSE_POSITIVE, True, one(T1, "06:00-14:00", "centre", "present", "present", both)),  # a: false
        (FALSE_POSITIVE, False, one(T2, "14:00-22:00", "edge", "absent", "absent", both)),  # b: real, twice
        (FALSE_POSITIVE, True, one(T1, "22:00-06:00", "middle", UNKNOWN, "absent", both)),  # c: from its event
        (ESCAPE, True, one(T1, "06:00-14:00", "middle", "present", "absent", both)),  # d: relabelled: a defect
        (ESCAPE, False, one(T2, "06:00-14:00", "edge", "absent", "present", both)),  # e: real, then false
        (FALSE_POSITIVE, True, one(T2, "06:00-14:00", UNKNOWN, "absent", "absent", both)),  # g: R2 has no grid
        (ESCAPE, True, one(T2, "06:00-14:00", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)),  # h: its id's time only
    ])  # fmt: skip
    assert found.facts_from == {"capture": 5, "event": 1, "event id only": 1}
    assert ulid_time(ids["h"]) == pytest.approx(DAY + 30 * 3600, abs=0.001) and ulid_time("E1") is None


def test_filters_by_inspection_time_and_recipe(station: tuple[Path, dict[str, str]]) -> None:
    root, _ = station
    day_two = read_reviewed(_sources(root), Filters(since=DAY + 24 * 3600), UTC_SHIFTS)
    assert [r.slices["tool"] for r in day_two.records] == [T2]  # h, at 06:00 the next day
    first = read_reviewed(_sources(root), Filters(since=DAY + 8 * 3600, until=DAY + 23 * 3600), UTC_SHIFTS)
    assert sorted(r.slices["shift"] for r in first.records) == ["06:00-14:00"] * 3 + ["14:00-22:00"]
    only = read_reviewed(_sources(root), Filters(recipe=R2), UTC_SHIFTS)
    assert [(r.kind, r.error) for r in only.records] == [(FALSE_POSITIVE, True)]
    with pytest.raises(AuditRefused, match="no recipe 'R9'; known: R1, R2"):
        subgroup_audit(_sources(root), Request(Filters(recipe="R9")), ())


def test_a_missing_or_broken_store_is_a_clear_error_and_missing_capture_or_outbox_files_are_empty(
    station: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = station
    with pytest.raises(AuditUnreadable, match="no file"):
        read_reviewed(Sources(tmp_path / "none.sqlite", tmp_path / "c", tmp_path / "o"), Filters(), UTC_SHIFTS)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(AuditUnreadable, match="cannot read the calibration store"):
        read_reviewed(Sources(tmp_path / "junk.sqlite", tmp_path / "c", tmp_path / "o"), Filters(), UTC_SHIFTS)
    alone = read_reviewed(Sources(root / "calibration.sqlite", tmp_path / "c", tmp_path / "o"), Filters(), UTC_SHIFTS)
    assert len(alone.records) == 7 and alone.facts_from == {"event id only": 7}
    assert {r.slices["zone"] for r in alone.records} == {UNKNOWN}  # no die grid known


def test_requests_refuse_bad_arguments_by_name() -> None:
    assert request_of().alpha == 0.05 and request_of(min_n="5").min_n == 5
    for kwargs, message in [
        ({"since": "last week"}, "not a date"), ({"since": "2026-03-02", "until": "2026-03-01"}, "not before"),
        ({"alpha": "x"}, "alpha"), ({"alpha": "1.5"}, "alpha"), ({"min_n": "-3"}, "min-n"),
        ({"min_n": "0"}, "min-n"), ({"correction": "bonferroni"}, "correction"),
        ({"shifts": "6am"}, "HH:MM"), ({"timezone": "Mars/Olympus"}, "timezone"),
    ]:  # fmt: skip
        with pytest.raises(AuditRefused, match=message):
            request_of(**kwargs)


def test_the_cli_prints_tables_and_json_and_exits_by_what_went_wrong(
    station: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, _ = station
    config = str(root / "edge.toml")
    base = ["audit", "subgroups", "--config", config, "--timezone", "UTC"]
    assert cli.main([*base, "--min-n", "1"]) == 0
    text = capsys.readouterr().out
    assert "false-positive rate" in text and "escape rate" in text and "-- zone" in text
    assert "overall: 3/4 = 75.0%" in text and "overall: 2/3 = 66.7%" in text  # a, c, g of a, b, c, g; d, h of d, e, h
    assert "22:00-06:00" in text and "flagged: 0" in text
    assert cli.main([*base, "--json", "--recipe", R, "--until", "2026-03-03"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rates"]["false_positive"]["n"] == 3 and document["rates"]["escape"]["n"] == 2
    tools = {s["slice"]: s for s in document["rates"]["false_positive"]["dimensions"]["tool"]}
    assert tools[T1]["n"] == 2 and tools[T1]["errors"] == 2 and tools[T1]["tested"] is False  # under min_n 20
    chambers = {s["slice"] for s in document["rates"]["false_positive"]["dimensions"]["chamber"]}
    assert chambers <= {f"{T1}-CH1", f"{T2}-CH1", UNKNOWN} and UNKNOWN in chambers
    for bad in (["--since", "soon"], ["--recipe", "R9"], ["--alpha", "2"]):
        assert cli.main([*base, *bad]) == 2
        assert "edge-inspect audit subgroups:" in capsys.readouterr().err
    assert cli.main(["audit", "subgroups", "--config", str(tmp_path / "missing.toml")]) == 2
    moved = tmp_path / "edge.toml"
    moved.write_text((root / "edge.toml").read_text().replace(str(root / "calibration.sqlite"), str(tmp_path / "x")))
    assert cli.main(["audit", "subgroups", "--config", str(moved)]) == 1
    assert "cannot read the calibration store: no file" in capsys.readouterr().err
