"""Group commit (``edge.publish.group_commit``) on a real outbox and its real database thread: batches that come while
a commit is on the thread go together in the next one, in the order they came; a lone batch does not wait; a commit
that fails fails every batch in it and writes none of them, and the next commit goes on."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from edge.errors import OutboxError
from edge.flow import EventRow, ResultRow
from edge.ops.async_db import AsyncDb
from edge.publish.group_commit import GroupCommit
from edge.publish.outbox import Outbox, Write


def batch(n: int) -> Write:
    return Write([ResultRow("AOI-01", f"f-{n}", "PASS", f"e-{n}", b"reply")], [EventRow(f"e-{n}", "t", "DEFECT", "{}")])


def broken() -> Write:
    """A batch SQLite refuses (a reply it cannot store): the whole transaction it is in is rolled back."""
    return Write([ResultRow("AOI-01", "f-x", "PASS", None, cast(bytes, object()))])


class Held:
    """``Outbox.record_all``, the first call held on the database thread until ``go`` is set; the groups noted."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.go, self.groups = outbox, threading.Event(), []  # type: list[int]
        self.entered = threading.Event()

    def __call__(self, writes: Sequence[Write]) -> None:
        self.groups.append(len(writes))
        if len(self.groups) == 1:
            self.entered.set()
            assert self.go.wait(10)
        self.outbox.record_all(writes)


def rows(path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def scenario(tmp_path: Path, writes: list[Write]) -> tuple[list[object], list[int], list[int]]:
    """The writes handed over one after the other while the first commit is held; (each outcome, the sizes of the
    commits, the sizes the metric observed)."""
    outbox = Outbox(tmp_path / "outbox.db")
    db = AsyncDb()
    held, observed = Held(outbox), []  # type: Held, list[int]
    commit = GroupCommit(db, held, observed.append)

    async def run() -> list[object]:
        first = asyncio.ensure_future(commit(writes[0]))
        await asyncio.get_running_loop().run_in_executor(None, held.entered.wait, 10)
        rest = [asyncio.ensure_future(commit(w)) for w in writes[1:]]
        await asyncio.sleep(0.05)
        held.go.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    try:
        return asyncio.run(run()), held.groups, observed
    finally:
        db.close()
        outbox.close()


def test_batches_that_come_during_a_commit_share_the_next_one_in_their_order(tmp_path: Path):
    outcomes, groups, observed = scenario(tmp_path, [batch(n) for n in range(5)])
    assert outcomes == [None] * 5
    assert groups == observed == [1, 4]
    assert rows(tmp_path / "outbox.db", "SELECT event_id FROM events ORDER BY seq") == [(f"e-{n}",) for n in range(5)]
    assert len(rows(tmp_path / "outbox.db", "SELECT * FROM results")) == 5


def test_a_failed_commit_fails_every_batch_in_it_and_writes_none_of_them(tmp_path: Path):
    outcomes, groups, _ = scenario(tmp_path, [batch(0), batch(1), broken(), batch(2)])
    assert outcomes[0] is None  # its own commit, before the broken one came
    assert all(isinstance(o, OutboxError) for o in outcomes[1:]) and groups == [1, 3]
    assert rows(tmp_path / "outbox.db", "SELECT event_id FROM events") == [("e-0",)]


def test_a_lone_batch_commits_at_once_and_a_later_one_after_a_failure_goes_on(tmp_path: Path):
    outbox, db, observed = Outbox(tmp_path / "outbox.db"), AsyncDb(), []  # type: Outbox, AsyncDb, list[int]
    commit = GroupCommit(db, outbox.record_all, observed.append)

    async def run() -> None:
        with pytest.raises(OutboxError):
            await commit(broken())
        await commit(batch(7))

    try:
        asyncio.run(run())
    finally:
        db.close()
        outbox.close()
    assert observed == [1, 1]
    assert rows(tmp_path / "outbox.db", "SELECT event_id FROM events") == [("e-7",)]
