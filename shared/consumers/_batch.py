"""Pure decisions about a batch: no I/O, unit-tested on their own.

- `plan_groups`: which messages run in order (one FIFO message group, one stream partition
  key) and which run in parallel (different groups; messages without a group).
- `released_after`: which messages of a group must be released after a failure, so a
  group never runs out of order.
- `settle`: a `BatchResult` turned into what the transport must do: delete, retry later
  (visibility change by backoff), release now (visibility 0), dead-letter with a reason.
- `sqs_batch_item_failures` / `stream_batch_item_failures`: the same accounting for a
  Lambda event source mapping (`{"batchItemFailures": [...]}`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from shared.consumers._backoff import Backoff, RandomSource
from shared.consumers._message import BatchResult, Message, Outcome

__all__ = [
    "Action",
    "Disposition",
    "Settlement",
    "chunks",
    "due_for_extension",
    "plan_groups",
    "released_after",
    "settle",
    "sqs_batch_item_failures",
    "stream_batch_item_failures",
]

T = TypeVar("T")

_DONE = frozenset({Outcome.SUCCEEDED, Outcome.DUPLICATE})


class Action(enum.StrEnum):
    DELETE = "delete"  # SUCCEEDED or DUPLICATE: the effect is (already) applied
    RETRY = "retry"  # failed transiently: visible again after a backoff delay
    RELEASE = "release"  # never attempted: visible again now (visibility 0)
    DEAD_LETTER = "dead-letter"  # permanent: to the DLQ with the reason


@dataclass(frozen=True, kw_only=True)
class Disposition:
    """What happens to one message. `visibility` is set for RETRY (seconds) and RELEASE (0)."""

    message: Message
    action: Action
    outcome: Outcome | None  # None: the handler gave no outcome (not attempted)
    visibility: int | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Settlement:
    """All dispositions of a batch, in the batch's order."""

    dispositions: tuple[Disposition, ...]
    unknown_ids: tuple[str, ...] = ()  # outcomes for ids not in the batch (a handler bug)

    def of(self, action: Action) -> tuple[Disposition, ...]:
        return tuple(d for d in self.dispositions if d.action is action)

    def count(self, outcome: Outcome | None) -> int:
        return sum(1 for d in self.dispositions if d.outcome is outcome)


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
        if outcomes.get(message.id) not in _DONE:
            return list(lane[index + 1 :])
    return []


def settle(
    messages: Sequence[Message],
    result: BatchResult,
    *,
    backoff: Backoff,
    rng: RandomSource,
    dead_letter_available: bool = True,
    max_receive_count: int | None = None,
) -> Settlement:
    """Turn a handler's result into per-message dispositions.

    SUCCEEDED / DUPLICATE -> DELETE. RETRY -> RETRY with a visibility timeout from `backoff`
    for attempt `receive_count` (or the handler's delay hint). No outcome -> RELEASE
    (visibility 0). DEAD_LETTER -> DEAD_LETTER, or, when no DLQ is reachable
    (`dead_letter_available=False`), RETRY with the backoff's cap so a message that can
    never succeed does not spin; the queue's redrive (if any) still moves it eventually.

    `max_receive_count` (the queue's redrive policy): a RETRY on the last allowed receive
    becomes DEAD_LETTER "gave up after N receives: <reason>" when a DLQ is reachable. The
    redrive would move the message there on its next receive anyway; doing it now puts the
    reason next to the message in the DLQ and saves one backoff wait.
    """
    known = {m.id for m in messages}
    dispositions: list[Disposition] = []
    for message in messages:
        outcome = result.outcomes.get(message.id)
        reason = result.reasons.get(message.id)
        if outcome in _DONE:
            dispositions.append(
                Disposition(message=message, action=Action.DELETE, outcome=outcome)
            )
        elif outcome is None:
            dispositions.append(
                Disposition(
                    message=message,
                    action=Action.RELEASE,
                    outcome=None,
                    visibility=0,
                    reason=reason or "not attempted",
                )
            )
        elif outcome is Outcome.DEAD_LETTER and dead_letter_available:
            dispositions.append(
                Disposition(
                    message=message,
                    action=Action.DEAD_LETTER,
                    outcome=outcome,
                    reason=reason or "dead-lettered by the handler",
                )
            )
        elif (
            outcome is Outcome.RETRY
            and dead_letter_available
            and max_receive_count is not None
            and message.receive_count >= max_receive_count
        ):
            dispositions.append(
                Disposition(
                    message=message,
                    action=Action.DEAD_LETTER,
                    outcome=outcome,
                    reason=f"gave up after {message.receive_count} receives: "
                    f"{reason or 'failed'}",
                )
            )
        else:
            attempt = max(1, message.receive_count)
            if outcome is Outcome.DEAD_LETTER:
                visibility = backoff.visibility_timeout(attempt, rng, hint=backoff.cap)
            else:
                visibility = backoff.visibility_timeout(
                    attempt, rng, hint=result.delays.get(message.id)
                )
            dispositions.append(
                Disposition(
                    message=message,
                    action=Action.RETRY,
                    outcome=outcome,
                    visibility=visibility,
                    reason=reason or "failed",
                )
            )
    unknown = tuple(sorted(set(result.outcomes) - known))
    return Settlement(dispositions=tuple(dispositions), unknown_ids=unknown)


def sqs_batch_item_failures(
    messages: Sequence[Message], result: BatchResult, *, handled: Iterable[str] = ()
) -> list[dict[str, str]]:
    """Lambda's partial batch response for an SQS event source mapping.

    Every message that did not end SUCCEEDED / DUPLICATE is reported, except the ids in
    `handled` (for instance DEAD_LETTER messages the adapter already sent to the DLQ).
    """
    skip = set(handled)
    return [
        {"itemIdentifier": m.id}
        for m in messages
        if result.outcomes.get(m.id) not in _DONE and m.id not in skip
    ]


def _sequence_key(message: Message) -> tuple[int, int | str]:
    # Kinesis and DynamoDB Streams sequence numbers are decimal strings of growing length;
    # compare them as integers, falling back to text for anything unexpected.
    seq = message.sequence or message.id
    return (0, int(seq)) if seq.isdigit() else (1, seq)


def stream_batch_item_failures(
    messages: Sequence[Message], result: BatchResult, *, handled: Iterable[str] = ()
) -> list[dict[str, str]]:
    """Lambda's partial batch response for a Kinesis / DynamoDB Streams mapping.

    Lambda checkpoints before the *lowest* failed sequence number and retries from there,
    so only that one is reported: a single item, or none when everything succeeded (ids in
    `handled` count as done).
    """
    skip = set(handled)
    failed = [
        m for m in messages if result.outcomes.get(m.id) not in _DONE and m.id not in skip
    ]
    if not failed:
        return []
    lowest = min(failed, key=_sequence_key)
    return [{"itemIdentifier": lowest.sequence or lowest.id}]


def chunks(items: Sequence[T], size: int = 10) -> list[Sequence[T]]:
    """`items` in consecutive slices of at most `size` (SQS batch calls take 10)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def due_for_extension(
    deadlines: Mapping[str, float], *, now: float, threshold: float
) -> list[str]:
    """The keys whose visibility deadline is within `threshold` seconds of `now` (or past:
    an extension may still win the race against a redelivery), earliest first."""
    due = [(deadline, key) for key, deadline in deadlines.items() if deadline - now <= threshold]
    return [key for _, key in sorted(due)]
