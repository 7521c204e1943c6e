"""Pure shard-loop decisions: checkpoint selection from outcomes, bounded retries, bisection,
shard end, backoff."""

from __future__ import annotations

import json
import random

import pytest

from shared.consumers._message import BatchResult, Message, Outcome, SourceKind
from shared.consumers.streams._decisions import (
    backoff_delay,
    fit_failure_message,
    is_shard_end,
    settle_batch,
)


def records(n: int) -> list[Message]:
    return [
        Message(id=str(i), body=f"b{i}", source=SourceKind.KINESIS, source_name="shard-0",
                sequence=str(i), group_id="k")
        for i in range(1, n + 1)
    ]


def test_all_done_checkpoints_the_last_record() -> None:
    batch = records(3)
    result = BatchResult({"1": Outcome.SUCCEEDED, "2": Outcome.DUPLICATE,
                          "3": Outcome.SUCCEEDED})
    settled = settle_batch(batch, result, head_attempts=0, max_attempts=3)
    assert settled.completed == 3
    assert settled.checkpoint == "3"
    assert not settled.retry
    assert not settled.failed
    assert not settled.dead_letters


def test_checkpoint_stops_before_the_first_retry() -> None:
    batch = records(4)
    result = BatchResult({"1": Outcome.SUCCEEDED, "2": Outcome.RETRY, "3": Outcome.SUCCEEDED,
                          "4": Outcome.SUCCEEDED}, {"2": "db busy"})
    settled = settle_batch(batch, result, head_attempts=0, max_attempts=3)
    assert settled.completed == 1
    assert settled.checkpoint == "1"
    assert settled.retry
    assert settled.failed
    assert settled.head_attempts == 1  # record 2 failed once


def test_missing_outcome_counts_as_retry() -> None:
    batch = records(2)
    settled = settle_batch(batch, BatchResult({"1": Outcome.SUCCEEDED}), head_attempts=0,
                           max_attempts=3)
    assert settled.completed == 1
    assert settled.retry


def test_dead_letter_outcome_completes_and_goes_to_the_failure_queue() -> None:
    batch = records(3)
    result = BatchResult({"1": Outcome.SUCCEEDED, "2": Outcome.DEAD_LETTER,
                          "3": Outcome.SUCCEEDED}, {"2": "schema invalid: field x"})
    settled = settle_batch(batch, result, head_attempts=0, max_attempts=3)
    assert settled.completed == 3
    assert settled.checkpoint == "3"
    [letter] = settled.dead_letters
    assert letter.message.id == "2"
    assert letter.reason == "schema invalid: field x"


def test_retries_are_bounded_then_the_record_is_dead_lettered() -> None:
    batch = records(2)
    result = BatchResult({"1": Outcome.RETRY}, {"1": "boom"})
    attempts = 0
    for expected in (1, 2):
        settled = settle_batch(batch, result, head_attempts=attempts, max_attempts=3)
        assert settled.retry
        assert settled.completed == 0
        assert settled.checkpoint is None
        attempts = settled.head_attempts
        assert attempts == expected
    final = settle_batch(batch, result, head_attempts=attempts, max_attempts=3)
    assert not final.retry
    assert final.failed
    assert final.completed == 1
    assert final.checkpoint == "1"  # the shard moves on past the bad record
    [letter] = final.dead_letters
    assert letter.attempts == 3
    assert "boom" in letter.reason


def test_handler_exception_bisects_without_spending_attempts() -> None:
    batch = records(5)
    settled = settle_batch(batch, None, head_attempts=0, max_attempts=3, handler_error="E")
    assert settled.retry
    assert settled.window == 3
    assert settled.head_attempts == 0
    single = settle_batch(batch[:1], None, head_attempts=2, max_attempts=3, handler_error="E")
    assert single.completed == 1
    assert single.dead_letters[0].reason.startswith("E")


def test_settle_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="batch"):
        settle_batch([], BatchResult({}), head_attempts=0, max_attempts=3)
    with pytest.raises(ValueError, match="max_attempts"):
        settle_batch(records(1), BatchResult({}), head_attempts=0, max_attempts=0)


@pytest.mark.parametrize(
    ("next_iterator", "got", "ending", "position", "expected"),
    [
        (None, True, None, "5", True),  # AWS: no next iterator
        ("it", True, "9", "9", False),  # records came: read on
        ("it", False, None, "9", False),  # open shard, empty read
        ("it", False, "9", "5", False),  # closed, an empty read before the end
        ("it", False, "9", "9", True),  # closed and read to its end
        ("it", False, "0", None, True),  # closed and empty
    ],
)
def test_shard_end(
    next_iterator: str | None, got: bool, ending: str | None, position: str | None,
    expected: bool,
) -> None:
    assert is_shard_end(next_iterator=next_iterator, got_records=got, ending_sequence=ending,
                        position=position) is expected


def test_backoff_is_full_jitter_within_a_capped_window() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, base=0.5, cap=4.0, rng=rng) for n in range(1, 10)]
    windows = [min(4.0, 0.5 * 2 ** (n - 1)) for n in range(1, 10)]
    assert all(0 <= d <= w for d, w in zip(delays, windows, strict=True))
    with pytest.raises(ValueError, match="failures"):
        backoff_delay(0, base=1, cap=2)


@pytest.mark.parametrize("body", ["x" * 100_000, "é" * 60_000, "\u0001" * 40_000, "ok"])
def test_failure_message_fits_the_sqs_batch_budget(body: str) -> None:
    document = {"shard_id": "shardId-1", "sequence_number": "42", "body": body}
    text = fit_failure_message(document, max_bytes=25_000)
    assert len(text.encode()) <= 25_000
    parsed = json.loads(text)
    assert parsed["shard_id"] == "shardId-1"
    assert parsed["sequence_number"] == "42"
    assert parsed["body_truncated"] is (body != "ok")
    assert body.startswith(parsed["body"])
    assert len(parsed["body"]) > 1_000 or body == "ok"


def test_failure_message_refuses_metadata_that_cannot_fit() -> None:
    with pytest.raises(ValueError, match="without its body"):
        fit_failure_message({"reason": "r" * 100, "body": "b"}, max_bytes=50)


def test_one_failure_message_for_both_hosts() -> None:
    from shared.consumers.streams import failure_message
    from shared.consumers.streams._failures import FAILURE_MESSAGE_BYTES

    record = Message(id="9", body="x" * 40_000, source=SourceKind.KINESIS,
                     source_name="shardId-1", sequence="9", group_id="dev-1",
                     approximate_arrival=1.5)
    ecs = json.loads(failure_message(record, stream="telemetry", shard_id="shardId-1",
                                     reason="r" * 3_000, attempts=3, worker="w-1",
                                     application="telemetry"))
    lambda_ = json.loads(failure_message(record, stream="arn:aws:kinesis:...", shard_id="shardId-1",
                                         reason=None, attempts=1, worker="lambda:fn"))
    assert list(ecs) == ["source", "stream", "application", "shard_id", "sequence_number",
                         "partition_key", "reason", "attempts", "approximate_arrival",
                         "worker", "body", "body_truncated"]
    assert "application" not in lambda_
    assert lambda_["reason"] is None
    assert (ecs["source"], ecs["sequence_number"], ecs["partition_key"]) == (
        "kinesis", "9", "dev-1")
    assert len(ecs["reason"]) == 2_000
    for document in (ecs, lambda_):
        assert document["body_truncated"] is True
        assert len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()) \
            <= FAILURE_MESSAGE_BYTES
