"""Pure SQS decisions: no I/O, unit-tested on their own (`tests/unit/test_batch.py`).

- `settle`: a `BatchResult` turned into what the queue must do with each message: delete,
  retry later (visibility change by backoff), release now (visibility 0), dead-letter with a
  reason. The poller (`SqsConsumer`) and the Lambda adapter (`shared.hosts.lambda_.sqs_handler`)
  both act on it.
- `sqs_batch_item_failures`: the same accounting for a Lambda event source mapping
  (`{"batchItemFailures": [...]}`).
- `due_for_extension`: which running messages the poller's heartbeat extends now.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.consumers._backoff import Backoff, RandomSource
from shared.consumers._message import DONE, BatchResult, Message, Outcome

__all__ = [
    "Action",
    "Disposition",
    "Settlement",
    "due_for_extension",
    "settle",
    "sqs_batch_item_failures",
]


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
        if outcome in DONE:
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
        if result.outcomes.get(m.id) not in DONE and m.id not in skip
    ]


def due_for_extension(
    deadlines: Mapping[str, float], *, now: float, threshold: float
) -> list[str]:
    """The keys whose visibility deadline is within `threshold` seconds of `now` (or past:
    an extension may still win the race against a redelivery), earliest first."""
    due = [(deadline, key) for key, deadline in deadlines.items() if deadline - now <= threshold]
    return [key for _, key in sorted(due)]
