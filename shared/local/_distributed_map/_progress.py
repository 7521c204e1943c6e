"""Which child executions of a map run to start next, and whether the run has failed (pure).

A map run starts its children in item order, at most `max_concurrency` at once. A child
that ends FAILED, TIMED_OUT or ABORTED fails every item it carried; once the failed items
exceed the tolerated threshold the run starts no more children, and the runner stops the
running ones (they end ABORTED), as AWS does when a Map Run fails ("Tolerated failure
threshold", Step Functions Developer Guide). Children never started stay PENDING.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from shared.local._distributed_map._request import Tolerance

__all__ = ["ChildStatus", "MapRunProgress"]


class ChildStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    ABORTED = "ABORTED"

    @property
    def failed(self) -> bool:
        return self in {ChildStatus.FAILED, ChildStatus.TIMED_OUT, ChildStatus.ABORTED}

    @property
    def finished(self) -> bool:
        return self not in {ChildStatus.PENDING, ChildStatus.RUNNING}


class MapRunProgress:
    """The state of one map run's children, by index. Changes only through `started` and
    `finished`; everything else is read from it."""

    def __init__(
        self, item_counts: Sequence[int], *, tolerance: Tolerance, max_concurrency: int
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self._items = list(item_counts)
        self._status = [ChildStatus.PENDING] * len(self._items)
        self._tolerance = tolerance
        self._max_concurrency = max_concurrency

    @property
    def total_items(self) -> int:
        return sum(self._items)

    @property
    def failed_items(self) -> int:
        return sum(n for n, s in zip(self._items, self._status, strict=True) if s.failed)

    @property
    def exceeded(self) -> bool:
        """True once the failed items exceed the tolerated threshold."""
        return self._tolerance.exceeded(self.failed_items, self.total_items)

    def status(self, index: int) -> ChildStatus:
        return self._status[index]

    def indexes(self, status: ChildStatus) -> list[int]:
        return [i for i, s in enumerate(self._status) if s is status]

    def to_start(self) -> list[int]:
        """The children to start now, in order: none once the threshold is exceeded."""
        if self.exceeded:
            return []
        free = self._max_concurrency - len(self.indexes(ChildStatus.RUNNING))
        return self.indexes(ChildStatus.PENDING)[: max(free, 0)]

    @property
    def done(self) -> bool:
        """Nothing runs, and nothing more will start."""
        running = self.indexes(ChildStatus.RUNNING)
        return not running and (self.exceeded or not self.indexes(ChildStatus.PENDING))

    def started(self, index: int) -> None:
        if self._status[index] is ChildStatus.PENDING:
            self._status[index] = ChildStatus.RUNNING

    def finished(self, index: int, status: ChildStatus) -> None:
        """Record how child `index` ended. Raises ValueError for a status that is not an end."""
        if not status.finished:
            raise ValueError(f"{status} is not how a child ends")
        self._status[index] = status

    def item_counts(self) -> dict[str, int]:
        """Items per status (what DescribeMapRun calls itemCounts), and the total."""
        counts = {status.value: 0 for status in ChildStatus}
        for n, status in zip(self._items, self._status, strict=True):
            counts[status.value] += n
        counts["TOTAL"] = self.total_items
        return counts
