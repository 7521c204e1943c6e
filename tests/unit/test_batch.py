"""Pure batch decisions: lanes, releases after a failure, settlement, batchItemFailures."""

from __future__ import annotations

import random

from shared.consumers import Backoff, BatchResult, Message, Outcome, SourceKind
from shared.consumers._batch import chunks, plan_groups, released_after
from shared.consumers.sqs import Action, settle, sqs_batch_item_failures
from shared.consumers.sqs._settle import due_for_extension
from shared.consumers.streams import stream_batch_item_failures


def msg(id: str, group: str | None = None, *, receive_count: int = 1,
        sequence: str | None = None) -> Message:
    return Message(id=id, body="{}", source=SourceKind.SQS, source_name="q", group_id=group,
                   receive_count=receive_count, sequence=sequence, receipt=f"r-{id}")


BACKOFF = Backoff(base=2.0, cap=60.0)


def test_lanes_keep_group_order_and_ungrouped_messages_run_alone() -> None:
    batch = [msg("a1", "A"), msg("x"), msg("b1", "B"), msg("a2", "A"), msg("y"), msg("b2", "B")]
    lanes = [[m.id for m in lane] for lane in plan_groups(batch)]
    assert lanes == [["a1", "a2"], ["x"], ["b1", "b2"], ["y"]]


def test_released_after_the_first_failure_of_a_lane() -> None:
    lane = [msg("a1", "A"), msg("a2", "A"), msg("a3", "A"), msg("a4", "A")]
    outcomes = {"a1": Outcome.SUCCEEDED, "a2": Outcome.RETRY}
    assert [m.id for m in released_after(lane, outcomes)] == ["a3", "a4"]
    assert released_after(lane, dict.fromkeys(["a1", "a2", "a3", "a4"],
                                               Outcome.DUPLICATE)) == []
    # A lane whose first message has no outcome releases everything behind it.
    assert [m.id for m in released_after(lane, {})] == ["a2", "a3", "a4"]


def test_settlement_maps_each_outcome_to_an_action() -> None:
    batch = [msg("ok"), msg("dup"), msg("retry", receive_count=3), msg("dead"), msg("skipped")]
    result = BatchResult(
        {"ok": Outcome.SUCCEEDED, "dup": Outcome.DUPLICATE, "retry": Outcome.RETRY,
         "dead": Outcome.DEAD_LETTER, "ghost": Outcome.SUCCEEDED},
        {"retry": "RuntimeError: x", "dead": "InvalidMessageError: body: not JSON"},
    )
    s = settle(batch, result, backoff=BACKOFF, rng=random.Random(1))
    actions = {d.message.id: d.action for d in s.dispositions}
    assert actions == {"ok": Action.DELETE, "dup": Action.DELETE, "retry": Action.RETRY,
                       "dead": Action.DEAD_LETTER, "skipped": Action.RELEASE}
    retry = s.of(Action.RETRY)[0]
    assert 0 <= retry.visibility <= 8  # window for the third receive: 2 * 2**2
    assert retry.reason == "RuntimeError: x"
    assert s.of(Action.RELEASE)[0].visibility == 0
    assert s.of(Action.DEAD_LETTER)[0].reason == "InvalidMessageError: body: not JSON"
    assert s.unknown_ids == ("ghost",)
    assert s.count(Outcome.DUPLICATE) == 1


def test_retry_on_the_last_allowed_receive_goes_to_the_dlq_with_the_reason() -> None:
    batch = [msg("early", receive_count=1), msg("last", receive_count=3)]
    result = BatchResult({"early": Outcome.RETRY, "last": Outcome.RETRY},
                         {"early": "boom", "last": "boom"})
    s = settle(batch, result, backoff=BACKOFF, rng=random.Random(1), max_receive_count=3)
    assert [d.action for d in s.dispositions] == [Action.RETRY, Action.DEAD_LETTER]
    assert s.dispositions[1].reason == "gave up after 3 receives: boom"
    # Without a reachable DLQ the redrive policy does it; we just back off.
    s2 = settle(batch, result, backoff=BACKOFF, rng=random.Random(1), max_receive_count=3,
                dead_letter_available=False)
    assert [d.action for d in s2.dispositions] == [Action.RETRY, Action.RETRY]


def test_dead_letter_without_a_dlq_backs_off_to_the_cap() -> None:
    result = BatchResult({"d": Outcome.DEAD_LETTER})
    s = settle([msg("d")], result, backoff=BACKOFF, rng=random.Random(1),
               dead_letter_available=False)
    assert s.dispositions[0].action is Action.RETRY
    assert s.dispositions[0].visibility == 60


def test_handler_delay_hint_replaces_the_backoff() -> None:
    result = BatchResult({"a": Outcome.RETRY}, delays={"a": 42.5})
    s = settle([msg("a")], result, backoff=BACKOFF, rng=random.Random(1))
    assert s.dispositions[0].visibility == 43


def test_sqs_batch_item_failures_list_every_unfinished_message() -> None:
    batch = [msg("a"), msg("b"), msg("c"), msg("d")]
    result = BatchResult({"a": Outcome.SUCCEEDED, "b": Outcome.RETRY,
                          "c": Outcome.DEAD_LETTER})
    assert sqs_batch_item_failures(batch, result) == [
        {"itemIdentifier": "b"}, {"itemIdentifier": "c"}, {"itemIdentifier": "d"}]
    assert sqs_batch_item_failures(batch, result, handled=["c"]) == [
        {"itemIdentifier": "b"}, {"itemIdentifier": "d"}]


def test_stream_batch_item_failures_name_the_lowest_failed_sequence_numerically() -> None:
    batch = [msg("9", sequence="9"), msg("10", sequence="10"), msg("11", sequence="11"),
             msg("100", sequence="100")]
    result = BatchResult({"9": Outcome.SUCCEEDED, "10": Outcome.SUCCEEDED,
                          "11": Outcome.RETRY, "100": Outcome.RETRY})
    # "100" < "11" as text; as numbers 11 is the lowest failure.
    assert stream_batch_item_failures(batch, result) == [{"itemIdentifier": "11"}]
    assert stream_batch_item_failures(batch, result, handled=["11"]) == [
        {"itemIdentifier": "100"}]
    done = BatchResult(dict.fromkeys(["9", "10", "11", "100"], Outcome.SUCCEEDED))
    assert stream_batch_item_failures(batch, done) == []


def test_due_for_extension_is_earliest_first_within_the_threshold() -> None:
    deadlines = {"a": 105.0, "b": 101.0, "c": 130.0, "d": 99.0}
    assert due_for_extension(deadlines, now=100.0, threshold=5.0) == ["d", "b", "a"]
    assert due_for_extension(deadlines, now=100.0, threshold=0.5) == ["d"]


def test_chunks_of_ten() -> None:
    assert [len(c) for c in chunks(list(range(23)))] == [10, 10, 3]
    assert chunks([]) == []
