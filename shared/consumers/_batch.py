"""Pure decisions about a batch that hold for every source: no I/O, unit-tested on their own.

- `plan_groups`: which messages run in order (one FIFO message group, one stream partition
  key) and which run in parallel (different groups; messages without a group).
- `released_after`: which messages of a group must be released after a failure, so a
  group never runs out of order.
- `chunks`: consecutive slices for batch APIs (SQS takes 10 entries a call).

What a result means for one transport lives with the transport: `shared.consumers.sqs`
(`settle`, `sqs_batch_item_failures`) and `shared.consumers.streams` (`settle_batch`,
`stream_batch_item_failures`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from shared.consumers._message import DONE, Message, Outcome

__all__ = ["chunks", "plan_groups", "released_after"]

T = TypeVar("T")


def plan_groups(messages: Sequence[Message]) -> list[list[Message]]:
    """Split a batch into lanes that may run in parallel; each lane runs in order.

    Messages sharing a `group_id` (FIFO MessageGroupId, stream partition key) form one lane
    in their batch order; a message without a group is a lane of its own. Lanes are listed
    in the order of their first message.
    """
    lanes: list[list[Message]] = []
    by_group: dict[str, list[Message]] = {}
    for message in messages:
        if message.group_id is None:
            lanes.append([message])
            continue
        lane = by_group.get(message.group_id)
        if lane is None:
            lane = by_group[message.group_id] = []
            lanes.append(lane)
        lane.append(message)
    return lanes


def released_after(lane: Sequence[Message], outcomes: Mapping[str, Outcome]) -> list[Message]:
    """The messages of an ordered lane behind its first failure (or its first message with
    no outcome): they must not run now, and go back to the queue unattempted."""
    for index, message in enumerate(lane):
        if outcomes.get(message.id) not in DONE:
            return list(lane[index + 1 :])
    return []


def chunks(items: Sequence[T], size: int = 10) -> list[Sequence[T]]:
    """`items` in consecutive slices of at most `size` (SQS batch calls take 10).

    Raises ValueError when `size` < 1.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    return [items[i : i + size] for i in range(0, len(items), size)]
