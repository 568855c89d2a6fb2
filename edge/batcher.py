"""Dynamic batching policy (pure): a batch closes when it is full or its oldest item waited long enough.

The clock is passed in, so the policy is tested without sleeping; the async driver in
``edge.pipeline`` asks ``next_deadline`` how long it may wait, and drains at shutdown with ``poll(math.inf)``.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_batch: int, max_delay_s: float) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError("max_batch must be >= 1 and max_delay_s >= 0")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._items: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float) -> None:
        self._items.append((now, item))

    def next_deadline(self) -> float | None:
        """When the oldest waiting item's batch must close; None when empty."""
        return self._items[0][0] + self.max_delay_s if self._items else None

    def poll(self, now: float) -> list[T] | None:
        """A batch to send now (full, or its oldest item has waited ``max_delay_s``), else None."""
        if not self._items:
            return None
        if len(self._items) < self.max_batch and now < self._items[0][0] + self.max_delay_s:
            return None
        return self._take(self.max_batch)

    def _take(self, n: int) -> list[T]:
        return [self._items.popleft()[1] for _ in range(min(n, len(self._items)))]
