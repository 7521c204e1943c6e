"""Pure decisions of the outbox: item building, transaction planning, cancellation verdicts,
PutEvents batching and partial-failure selection, stream record extraction."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from shared.consumers._message import Outcome
from shared.events import Envelope, EventRegistry, event_type
from shared.inbox import InboxConfig, InboxMode, remember
from shared.outbox import (
    Aggregate,
    ItemRef,
    OutboxConfig,
    OutboxError,
    StreamRecordError,
    TransactionTooLargeError,
    added_events,
    aggregate_from_item,
    build_write,
    cancellation_verdicts,
    plan_transaction,
    stage,
)
from shared.outbox._batch import follower_outcome, pack_transactions
from shared.outbox._publisher import entry_for, failed_entries, plan_batches
from shared.outbox.pipe import handler as pipe_handler

EVENTS = EventRegistry()


@event_type("ThingHappened", source="fleetline.unit", registry=EVENTS)
class ThingHappened(BaseModel):
    n: int


REF = ItemRef(table="t", key={"pk": "a-1"})
CONFIG = OutboxConfig()


def _aggregate(version: int = 0, seq: int = 0, processed: tuple[str, ...] = ()) -> Aggregate:
    return Aggregate(ref=REF, state={"x": 1}, version=version, last_sequence=seq,
                     processed=processed)


def test_new_item_carries_state_events_and_processed_id_in_one_put() -> None:
    write = stage(_aggregate(), {"x": 2}, events=[ThingHappened(n=1), ThingHappened(n=2)],
                  processed_ids=["e-0"], trace={})
    (put,) = build_write(write, CONFIG, now=0)
    item = put["Item"]
    assert item["pk"] == {"S": "a-1"}
    assert item["x"] == {"N": "2"}
    assert item["version"] == {"N": "1"}
    assert item["event_seq"] == {"N": "2"}
    assert item["inbox"] == {"L": [{"S": "e-0"}]}
    stored = [json.loads(e["S"]) for e in item["outbox"]["L"]]
    assert [e["sequence"] for e in stored] == [1, 2]
    assert put["ConditionExpression"] == "attribute_not_exists(#k)"


def test_existing_item_is_conditional_on_its_version_and_replaces_the_outbox() -> None:
    write = stage(_aggregate(version=4, seq=7), {"x": 3}, trace={})
    (put,) = build_write(write, CONFIG, now=0)
    assert put["ConditionExpression"] == "#v = :v"
    assert put["ExpressionAttributeValues"] == {":v": {"N": "4"}}
    assert "outbox" not in put["Item"]  # a write without events leaves no stale events
    assert put["Item"]["event_seq"] == {"N": "7"}


def test_inbox_window_keeps_the_newest_ids() -> None:
    assert remember(["a", "b", "c"], ["d", "e"], 4) == ["b", "c", "d", "e"]
    assert remember([], ["a", "a"], 3) == ["a"]


def test_reserved_or_key_attributes_in_state_are_refused() -> None:
    with pytest.raises(OutboxError, match="version"):
        build_write(stage(_aggregate(), {"version": 1}, trace={}), CONFIG, now=0)
    with pytest.raises(OutboxError, match="pk"):
        build_write(stage(_aggregate(), {"pk": "b"}, trace={}), CONFIG, now=0)


def test_item_round_trips_to_an_aggregate() -> None:
    write = stage(_aggregate(version=1, seq=1, processed=("e-1",)), {"x": 5},
                  events=[ThingHappened(n=1)], processed_ids=["e-2"], trace={})
    (put,) = build_write(write, CONFIG, now=0)
    back = aggregate_from_item(REF, put["Item"], CONFIG)
    assert back.state == {"x": 5}
    assert (back.version, back.last_sequence) == (2, 2)
    assert back.processed == ("e-1", "e-2")
    assert back.seen("e-2")


def test_more_than_100_operations_are_refused_before_planning_anything() -> None:
    writes = [stage(Aggregate(ref=ItemRef(table="t", key={"pk": str(i)}), state={}), {"x": i},
                    trace={}) for i in range(101)]
    with pytest.raises(TransactionTooLargeError) as info:
        plan_transaction(writes, CONFIG, now=0)
    assert (info.value.operations, info.value.limit) == (101, 100)
    assert not info.value.retryable


def test_inbox_table_records_count_as_operations() -> None:
    config = OutboxConfig(inbox=InboxConfig(mode=InboxMode.TABLE, table="inbox"))
    writes = [stage(Aggregate(ref=ItemRef(table="t", key={"pk": str(i)}), state={}), {},
                    processed_ids=[f"e{i}"], trace={}) for i in range(60)]
    assert [len(g) for g in pack_transactions(writes, config)] == [50, 10]
    items, refs = plan_transaction(writes[:2], config, now=100)
    assert len(items) == 4
    assert refs[1].event_id == "e0"
    assert items[1]["Put"]["Item"]["id"] == {"S": "default#e0"}


def test_one_item_twice_in_a_commit_is_refused() -> None:
    write = stage(_aggregate(), {}, trace={})
    with pytest.raises(OutboxError, match="twice"):
        plan_transaction([write, write], CONFIG, now=0)


def test_cancellation_reasons_name_duplicates_conflicts_and_bystanders() -> None:
    a = stage(_aggregate(version=1), {}, processed_ids=["dup"], trace={})
    b = stage(Aggregate(ref=ItemRef(table="t", key={"pk": "b"}), state={}, version=2), {},
              processed_ids=["new"], trace={})
    c = stage(Aggregate(ref=ItemRef(table="t", key={"pk": "c"}), state={}), {}, trace={})
    _, refs = plan_transaction([a, b, c], CONFIG, now=0)
    stored_a = {"pk": {"S": "a-1"}, "version": {"N": "2"}, "inbox": {"L": [{"S": "dup"}]}}
    stored_b = {"pk": {"S": "b"}, "version": {"N": "3"}, "inbox": {"L": [{"S": "other"}]}}
    reasons: list[dict[str, Any]] = [
        {"Code": "ConditionalCheckFailed", "Item": stored_a},
        {"Code": "ConditionalCheckFailed", "Item": stored_b},
        {"Code": "None"},
    ]
    verdicts = cancellation_verdicts(reasons, refs, [a, b, c], CONFIG)
    assert verdicts[0].duplicates == {"dup"}
    assert not verdicts[0].conflict
    assert verdicts[1].conflict
    assert verdicts[1].current is not None
    assert verdicts[1].current.version == 3
    assert verdicts[2].clean
    transient = cancellation_verdicts([{"Code": "TransactionConflict"}], refs[:1], [a], CONFIG)
    assert transient[0].transient == "TransactionConflict"


def test_second_copy_in_a_batch_follows_the_first() -> None:
    assert follower_outcome(Outcome.SUCCEEDED) is Outcome.DUPLICATE
    assert follower_outcome(Outcome.DUPLICATE) is Outcome.DUPLICATE
    assert follower_outcome(Outcome.RETRY) is Outcome.RETRY
    assert follower_outcome(Outcome.DEAD_LETTER) is Outcome.DEAD_LETTER


def test_put_events_batches_respect_count_and_size() -> None:
    batches, oversized = plan_batches([1] * 25)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert oversized == []
    kb = 1024
    batches, oversized = plan_batches([100 * kb, 100 * kb, 100 * kb, 300 * kb, 10])
    assert batches == [[0, 1], [2, 4]]
    assert oversized == [3]


def test_only_failed_entries_are_selected_for_retry() -> None:
    results = [{"EventId": "1"}, {"ErrorCode": "ThrottlingException", "ErrorMessage": "slow"},
               {"EventId": "3"}]
    assert failed_entries([4, 5, 6], results) == [(5, "ThrottlingException", "slow")]
    assert failed_entries([1, 2], [{"EventId": "x"}]) == [(2, "MissingResult",
                                                            "no result for entry")]


def _record(new: list[dict[str, Any]], old: list[dict[str, Any]] | None = None,
            name: str = "MODIFY") -> dict[str, Any]:
    def image(events: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pk": {"S": "a-1"}, "outbox": {"L": [{"S": json.dumps(e)} for e in events]}}

    change: dict[str, Any] = {"NewImage": image(new)}
    if old is not None:
        change["OldImage"] = image(old)
    return {"eventName": name, "dynamodb": change}


def _env(n: int) -> dict[str, Any]:
    return json.loads(Envelope.new(ThingHappened(n=n), aggregate_id="a-1", sequence=n,
                                   trace={}).to_json())


def test_stream_record_yields_only_the_events_its_write_added() -> None:
    one, two = _env(1), _env(2)
    assert [e["id"] for e in added_events(_record([one]))] == [one["id"]]
    assert added_events(_record([one], old=[one])) == []  # a write that did not add events
    assert [e["id"] for e in added_events(_record([two], old=[one]))] == [two["id"]]
    assert added_events({"eventName": "REMOVE", "dynamodb": {}}) == []
    def untraced(envelopes: list[dict[str, object]]) -> list[dict[str, object]]:
        # the Pipe's envelopes leave carrying its PRODUCER span (their `trace`); all else
        # is as committed
        return [{k: v for k, v in e.items() if k != "trace"} for e in envelopes]

    assert untraced(pipe_handler([_record([one]), _record([two], old=[one])])) == untraced(
        [one, two])
    assert untraced(pipe_handler({"Records": [_record([one])]})) == untraced([one])


def test_malformed_outbox_names_the_field() -> None:
    bad = {"eventName": "INSERT", "dynamodb": {"NewImage": {"outbox": {"L": [{"S": "{"}]}}}}
    with pytest.raises(StreamRecordError, match=r"outbox\[0\]"):
        added_events(bad)
    with pytest.raises(StreamRecordError, match="dynamodb"):
        added_events({"eventName": "INSERT"})


def test_entry_carries_the_original_id_and_the_xray_header() -> None:
    envelope = _env(1)
    envelope["trace"] = {"X-Amzn-Trace-Id": "Root=1-abc"}
    entry = entry_for(envelope, "bus")
    assert json.loads(entry["Detail"])["id"] == envelope["id"]
    assert (entry["Source"], entry["DetailType"]) == ("fleetline.unit", "ThingHappened")
    assert entry["TraceHeader"] == "Root=1-abc"


def test_a_write_that_meets_its_own_first_attempt_is_done_not_a_conflict() -> None:
    # The SDK sent the write again after the first attempt's answer was lost: the condition
    # fails against the item that attempt left (next version, our events in the outbox).
    created = stage(_aggregate(), {"x": 2}, events=[ThingHappened(n=1)], trace={})
    item = build_write(created, CONFIG, now=0)[0]["Item"]
    _, refs = plan_transaction([created], CONFIG, now=0)
    verdict = cancellation_verdicts([{"Code": "ConditionalCheckFailed", "Item": item}],
                                    refs, [created], CONFIG)[0]
    assert verdict.clean
    # another commit's item (other event ids) at the same version is a conflict
    other = stage(_aggregate(), {"x": 3}, events=[ThingHappened(n=1)], trace={})
    theirs = build_write(other, CONFIG, now=0)[0]["Item"]
    verdict = cancellation_verdicts([{"Code": "ConditionalCheckFailed", "Item": theirs}],
                                    refs, [created], CONFIG)[0]
    assert verdict.conflict
