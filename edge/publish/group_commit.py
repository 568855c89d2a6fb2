"""Group commit for the outbox: batches that arrive while a commit is syncing go together in the next one.

Each commit of the outbox syncs its file to the disk (``synchronous=FULL``: a reply is sent only for what survives
a power cut), and the sync, not the rows, is most of a commit's time; on a slow disk it is milliseconds. The
recorder hands each batch's rows here; the first to arrive is written at once, and any that arrive while it is on
the database thread wait and are written by the next transaction together, each as it would have been alone and in
the order they came (``Outbox.record_all``). Nobody waits for company: a lone batch commits as soon as the thread is
free, so a quiet station is as quick as before and a busy one syncs once for many batches. Each waiter learns the
outcome of its own commit; a commit that fails fails every batch in it (the same disk refused them all), and each
caller answers its frames ``busy`` as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from edge.ops.async_db import AsyncDb
from edge.publish.outbox import Write

WriteAll = Callable[[Sequence[Write]], None]  # Outbox.record_all: one transaction for them all


class GroupCommit:
    def __init__(self, db: AsyncDb, write_all: WriteAll, observe: Callable[[int], None] = lambda n: None) -> None:
        self._db = db
        self._write_all = write_all
        self._observe = observe  # told how many writes each commit carried
        self._waiting: list[tuple[Write, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, write: Write) -> None:
        """``write`` committed (with whatever else came meanwhile); raises what its commit raised. A caller that is
        cancelled meanwhile leaves its write to be committed all the same (as a call on the thread would be)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((write, done))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_groups())
        await done

    async def _write_groups(self) -> None:
        group: list[tuple[Write, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                self._observe(len(group))
                try:
                    await self._db(self._write_all, [write for write, _ in group])
                except Exception as err:  # noqa: BLE001 - not swallowed: raised to every waiter of this commit
                    _settle(group, err)
                else:
                    _settle(group, None)
        finally:  # cancelled itself (the loop ending): nobody is left waiting for ever
            self._writer = None
            _settle([*group, *self._waiting], asyncio.CancelledError())
            self._waiting = []


def _settle(group: Sequence[tuple[Write, asyncio.Future[None]]], err: BaseException | None) -> None:
    """Each waiter's future done: a result, the commit's exception, or cancelled; those already done are left."""
    for _, done in group:
        if done.done():
            continue
        if err is None:
            done.set_result(None)
        elif isinstance(err, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(err)
