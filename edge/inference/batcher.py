"""Dynamic batching policy (pure): a batch closes when it is full or its oldest item waited long enough.

Items queue per key (the tool they came from). A batch takes them round-robin across keys, oldest
key first, so a tool that floods the queue fills only its share of each batch and cannot push
another tool's frames past their deadline. With one key this is plain arrival order.

The clock is passed in, so the policy is tested without sleeping; the daemon asks ``next_deadline``
how long it may wait.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_batch: int, max_delay_s: float) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError("max_batch must be >= 1 and max_delay_s >= 0")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._queues: dict[Hashable, deque[tuple[float, T]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, item: T, now: float, key: Hashable = None) -> None:
        self._queues.setdefault(key, deque()).append((now, item))
        self._size += 1

    def _oldest(self) -> float | None:
        return min((q[0][0] for q in self._queues.values()), default=None)

    def next_deadline(self) -> float | None:
        """When the oldest waiting item's batch must close; None when empty."""
        oldest = self._oldest()
        return None if oldest is None else oldest + self.max_delay_s

    def poll(self, now: float) -> list[T] | None:
        """A batch to send now (full, or its oldest item has waited ``max_delay_s``), else None."""
        oldest = self._oldest()
        if oldest is None:
            return None
        if self._size < self.max_batch and now < oldest + self.max_delay_s:
            return None
        return self._take(self.max_batch)

    def _take(self, n: int) -> list[T]:
        """Up to ``n`` items, one per key in turn, keys ordered by their oldest item."""
        batch: list[T] = []
        while len(batch) < n and self._size:
            for key in sorted(self._queues, key=lambda k: self._queues[k][0][0]):
                if len(batch) == n:
                    break
                queue = self._queues[key]
                batch.append(queue.popleft()[1])
                self._size -= 1
                if not queue:
                    del self._queues[key]
        return batch
