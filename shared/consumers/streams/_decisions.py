"""Pure decisions of the shard processing loop: what a handler's outcomes mean for the
checkpoint, which records are retried or dead-lettered, when a shard has been read to its end,
how long to back off, and how a failure-queue message is cut to size. No I/O; `_shard.py`
acts on the answers. `stream_batch_item_failures` is the same accounting for a Lambda
Kinesis / DynamoDB Streams event source mapping.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.consumers._message import DONE, BatchResult, Message, Outcome

__all__ = [
    "FailedRecord",
    "ShardSettlement",
    "backoff_delay",
    "fit_failure_message",
    "is_shard_end",
    "settle_batch",
    "stream_batch_item_failures",
]


@dataclass(frozen=True, kw_only=True)
class FailedRecord:
    """A record that goes to the failure queue, and why."""

    message: Message
    reason: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class ShardSettlement:
    """What to do after one handler call over `batch`.

    completed:    how many records from the start of the batch are done (succeeded, duplicate
                  or dead-lettered); the checkpoint may move past them once `dead_letters`
                  are in the failure queue.
    checkpoint:   the sequence number of the last completed record, or None.
    dead_letters: completed records that go to the failure queue.
    retry:        the record at index `completed` failed and is retried after a backoff.
    head_attempts: attempts already spent on the record that now heads the remainder.
    window:       how many records to hand the handler next time (halved when the handler
                  raised for a batch of several records, to isolate a poison record).
    failed:       the call failed for a record (the handler raised, or answered RETRY or
                  nothing for it), whether it is retried or now dead-lettered.
    """

    completed: int
    checkpoint: str | None
    dead_letters: tuple[FailedRecord, ...] = ()
    retry: bool = False
    head_attempts: int = 0
    window: int = 1
    failed: bool = False


def settle_batch(
    batch: Sequence[Message],
    result: BatchResult | None,
    *,
    head_attempts: int,
    max_attempts: int,
    handler_error: str | None = None,
) -> ShardSettlement:
    """Turn a handler's answer for `batch` (records of one shard, in order) into progress.

    - Records are walked in order: SUCCEEDED / DUPLICATE complete; DEAD_LETTER completes and
      goes to the failure queue with the handler's reason; RETRY or a missing outcome stops
      the walk (a shard is processed in order, so nothing after it may be checkpointed).
    - The failed record has now used `head_attempts + 1` attempts if it headed the batch, else
      1. Once it has used `max_attempts`, it is dead-lettered and the shard moves on.
    - The handler raised (`handler_error`, `result` ignored): with several records nobody is to
      blame yet, so the batch is halved (bisection) without spending an attempt; a single
      record spends one.

    Raises:
        ValueError: `batch` is empty or `max_attempts` is less than 1.
    """
    if not batch:
        raise ValueError("batch must not be empty")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    size = len(batch)
    if handler_error is not None and size > 1:
        return ShardSettlement(
            completed=0, checkpoint=None, retry=True, head_attempts=head_attempts,
            window=(size + 1) // 2, failed=True,
        )

    completed = 0
    dead: list[FailedRecord] = []
    failed_reason: str | None = None
    for index, message in enumerate(batch):
        if handler_error is not None:
            failed_reason = handler_error
            break
        outcome = result.outcomes.get(message.id) if result is not None else None
        if outcome in DONE:
            completed += 1
            continue
        if outcome == Outcome.DEAD_LETTER:
            reason = (result.reasons.get(message.id) if result is not None else None) or (
                "dead-lettered by the handler"
            )
            attempts = head_attempts + 1 if index == 0 else 1
            dead.append(FailedRecord(message=message, reason=reason, attempts=attempts))
            completed += 1
            continue
        if outcome is None:
            failed_reason = "the handler returned no outcome for this record"
        else:
            failed_reason = (
                result.reasons.get(message.id) if result is not None else None
            ) or "the handler asked to retry"
        break

    if completed == size:
        return ShardSettlement(
            completed=size, checkpoint=batch[-1].sequence, dead_letters=tuple(dead), window=size
        )

    failed = batch[completed]
    attempts = head_attempts + 1 if completed == 0 else 1
    if attempts >= max_attempts:
        dead.append(
            FailedRecord(
                message=failed,
                reason=f"{failed_reason} (gave up after {attempts} attempts)",
                attempts=attempts,
            )
        )
        completed += 1
        return ShardSettlement(
            completed=completed, checkpoint=failed.sequence, dead_letters=tuple(dead),
            retry=False, window=size, failed=True,
        )
    return ShardSettlement(
        completed=completed,
        checkpoint=batch[completed - 1].sequence if completed else None,
        dead_letters=tuple(dead),
        retry=True,
        head_attempts=attempts,
        window=size,
        failed=True,
    )


def is_shard_end(
    *,
    next_iterator: str | None,
    got_records: bool,
    ending_sequence: str | None,
    position: str | None,
) -> bool:
    """True when a shard has been read to its end.

    AWS says so by returning no next iterator. A closed shard (one with an
    `ending_sequence`, from ListShards / DescribeStream) also counts as ended when a read
    returned nothing and the position has reached its ending sequence number; emulators that
    keep handing out iterators for closed shards need this, and on AWS an empty read before
    the end (which can happen) does not satisfy it.
    """
    if next_iterator is None:
        return True
    if got_records or ending_sequence is None:
        return False
    return int(position or 0) >= int(ending_sequence)


def backoff_delay(
    failures: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))].

    Raises:
        ValueError: `failures` is less than 1.
    """
    if failures < 1:
        raise ValueError(f"failures must be at least 1, got {failures}")
    ceiling = min(cap, base * 2 ** min(failures - 1, 32))
    return (rng or random).uniform(0.0, ceiling)


def fit_failure_message(document: Mapping[str, Any], *, max_bytes: int) -> str:
    """`document` as compact JSON of at most `max_bytes` UTF-8 bytes, its "body" cut (by
    bytes, never inside a character) as far as needed; "body_truncated" says whether it was.

    Raises:
        ValueError: the document does not fit even with an empty body.
    """
    fitted = {**document, "body_truncated": False}
    text = json.dumps(fitted, separators=(",", ":"), ensure_ascii=False)
    excess = len(text.encode()) - max_bytes
    while excess > 0:
        body = str(fitted.get("body") or "")
        if not body:
            raise ValueError(f"failure message exceeds {max_bytes} bytes without its body")
        raw = body.encode()
        # A byte of body costs 1 to 6 bytes of JSON (escapes): cut in proportion, then measure
        # again.
        cost = len(json.dumps(body, ensure_ascii=False).encode()) / len(raw)
        keep = max(0, len(raw) - math.ceil(excess / cost) - 16)
        fitted["body"] = raw[:keep].decode("utf-8", errors="ignore")
        fitted["body_truncated"] = True
        text = json.dumps(fitted, separators=(",", ":"), ensure_ascii=False)
        excess = len(text.encode()) - max_bytes
    return text


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
        m for m in messages if result.outcomes.get(m.id) not in DONE and m.id not in skip
    ]
    if not failed:
        return []
    lowest = min(failed, key=_sequence_key)
    return [{"itemIdentifier": lowest.sequence or lowest.id}]
