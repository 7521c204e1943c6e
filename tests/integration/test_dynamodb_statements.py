"""Batched conditional writes against the emulator: each statement lands or fails alone, a
failed condition returns the item, and the outbox item written as a statement is the item
its Put writes; the batch committer's default path sends one BatchExecuteStatement."""

from __future__ import annotations

import json
import threading

import anyio
import pytest

from shared.aws import AwsClients
from shared.consumers._message import Message, Outcome, SourceKind
from shared.dynamodb import (
    execute_statements,
    from_item,
    insert_statement,
    to_item,
    update_statement,
)
from shared.events import Envelope
from shared.outbox import (
    Aggregate,
    BatchCommitter,
    Decision,
    ItemRef,
    ItemWrite,
    OutboxConfig,
    added_events,
    item_put,
    item_statement,
)

from ._outbox_support import CounterBumped, CounterChanged, create_table, read_stream

pytestmark = pytest.mark.emulator


async def _item(aws: AwsClients, table: str, pk: str) -> dict[str, object] | None:
    dynamodb = await aws.client("dynamodb")
    found = (await dynamodb.get_item(TableName=table, Key={"pk": {"S": pk}},
                                     ConsistentRead=True)).get("Item")
    return from_item(found) if found else None


async def test_each_statement_lands_or_fails_alone(aws: AwsClients) -> None:
    await create_table(aws, "things")
    dynamodb = await aws.client("dynamodb")
    await dynamodb.put_item(TableName="things", Item=to_item({"pk": "b", "v": 1, "n": 10}))
    results = await execute_statements(aws, [
        insert_statement("things", to_item({"pk": "a", "v": 1, "blob": b"\x00\x01"})),
        insert_statement("things", to_item({"pk": "b", "v": 1})),  # exists
        update_statement("things", to_item({"pk": "b"}), set_values=to_item({"v": 2}),
                         remove=["n"], conditions=to_item({"v": 1}), return_item=True),
        update_statement("things", to_item({"pk": "b"}), set_values=to_item({"v": 9}),
                         conditions=to_item({"v": 1}), return_item=True),  # v is 2 now
        update_statement("things", to_item({"pk": "missing"}), set_values=to_item({"v": 2}),
                         conditions=to_item({"v": 1})),
    ])
    assert [r.error for r in results] == [
        None, "DuplicateItem", None, "ConditionalCheckFailed", "ConditionalCheckFailed"]
    assert results[3].item is not None
    assert from_item(results[3].item) == {"pk": "b", "v": 2}  # the item as it was
    assert results[4].item is None
    assert await _item(aws, "things", "a") == {"pk": "a", "v": 1, "blob": b"\x00\x01"}
    assert await _item(aws, "things", "b") == {"pk": "b", "v": 2}
    assert aws.counter.snapshot()["dynamodb.BatchExecuteStatement"] == 1


async def test_more_than_25_statements_are_refused_before_sending(aws: AwsClients) -> None:
    statements = [insert_statement("things", to_item({"pk": str(i)})) for i in range(26)]
    with pytest.raises(ValueError, match="at most 25"):
        await execute_statements(aws, statements)
    assert "dynamodb.BatchExecuteStatement" not in aws.counter.snapshot()


@pytest.mark.parametrize("version", [0, 3])
async def test_the_statement_stores_the_item_the_put_stores(aws: AwsClients,
                                                            version: int) -> None:
    """The same `ItemWrite` sent as a Put to one table and as a statement to another leaves
    the same item; an UPDATE drops the state attributes and the outbox the Put leaves out."""
    config = OutboxConfig()
    for table in ("by-put", "by-statement"):
        await create_table(aws, table)
        if version:
            dynamodb = await aws.client("dynamodb")
            await dynamodb.put_item(TableName=table, Item=to_item({
                "pk": "a", "gone": "x", "kept": 1, "version": version,
                "outbox": ['{"id": "old"}']}))
    write = ItemWrite(
        table="by-put", key=to_item({"pk": "a"}), state=to_item({"kept": 2, "new": [1, "2"]}),
        version=version, event_seq=5, inbox=("e-1", "e-2"),
        previous=("gone", "kept") if version else ())
    dynamodb = await aws.client("dynamodb")
    await dynamodb.put_item(**item_put(write, config))
    statement = item_statement(
        ItemWrite(**{**{f: getattr(write, f) for f in write.__slots__}, "table": "by-statement"}),
        config)
    assert statement is not None
    (result,) = await execute_statements(aws, [statement])
    assert result.applied
    by_put = await _item(aws, "by-put", "a")
    assert by_put == await _item(aws, "by-statement", "a")
    assert by_put is not None
    assert "gone" not in by_put
    assert "outbox" not in by_put


async def test_the_default_batch_path_is_one_statement_batch(aws: AwsClients) -> None:
    """Ten counters in one batch: one BatchGetItem and one BatchExecuteStatement (no
    transaction); each event applied once; the stream carries each write's events."""
    stream = await create_table(aws, "counters")
    assert stream is not None

    def locate(envelope: Envelope) -> ItemRef:
        return ItemRef(table="counters", key={"pk": str(envelope.data["counter"])})  # type: ignore[index]

    def decide(envelope: Envelope, counter: Aggregate) -> Decision:
        total = int(counter.state.get("total", 0)) + 1
        name = counter.ref.key["pk"]
        return Decision(state={"total": total}, events=[CounterChanged(counter=name, total=total)])

    committer = BatchCommitter(aws, locate=locate, decide=decide)
    events = [Envelope.new(CounterBumped(counter=f"c{i}"), aggregate_id=f"c{i}", sequence=1)
              for i in range(10)]
    messages = [Message(id=f"m{i}", body=e.to_json(), source=SourceKind.SQS, source_name="q")
                for i, e in enumerate(events)]
    aws.counter.reset()
    first = await committer(messages)
    assert set(first.outcomes.values()) == {Outcome.SUCCEEDED}
    assert aws.counter.snapshot() == {"dynamodb.BatchGetItem": 1,
                                      "dynamodb.BatchExecuteStatement": 1}
    again = await committer([*messages, *(
        Message(id=f"n{i}", body=Envelope.new(CounterBumped(counter=f"c{i}"),
                                              aggregate_id=f"c{i}", sequence=2).to_json(),
                source=SourceKind.SQS, source_name="q") for i in range(10))])
    assert [again.outcomes[f"m{i}"] for i in range(10)] == [Outcome.DUPLICATE] * 10
    assert [again.outcomes[f"n{i}"] for i in range(10)] == [Outcome.SUCCEEDED] * 10
    for i in range(10):
        assert (await _item(aws, "counters", f"c{i}") or {})["total"] == 2
    records = [json.loads(m.body) for m in await read_stream(aws, stream)]
    assert sorted(r["eventName"] for r in records) == ["INSERT"] * 10 + ["MODIFY"] * 10
    published = [e for r in records for e in added_events(r)]
    assert sorted((e["aggregate_id"], e["data"]["total"]) for e in published) == sorted(
        (f"c{i}", total) for i in range(10) for total in (1, 2))


async def test_a_write_that_finds_a_newer_version_decides_again_without_a_read(
    aws: AwsClients,
) -> None:
    """Another writer moves every counter between the committer's read and its write: each
    UPDATE fails its version condition and returns the item as it is now; the committer
    decides again on that item and writes again. No second read; every event applied once,
    on top of the other writer's change."""
    await create_table(aws, "counters")
    dynamodb = await aws.client("dynamodb")
    for i in range(5):
        await dynamodb.put_item(TableName="counters",
                                Item=to_item({"pk": f"c{i}", "total": 1, "version": 1}))
    moved: set[str] = set()

    def other_writer_moves(name: str) -> None:
        """Another worker's write, made while `decide` runs (it cannot await): its own
        clients, on a thread with its own event loop."""
        async def write() -> None:
            async with AwsClients() as other:
                await (await other.client("dynamodb")).put_item(
                    TableName="counters", Item=to_item({"pk": name, "total": 10, "version": 2}))

        thread = threading.Thread(target=anyio.run, args=(write,))
        thread.start()
        thread.join()

    def locate(envelope: Envelope) -> ItemRef:
        return ItemRef(table="counters", key={"pk": str(envelope.data["counter"])})  # type: ignore[index]

    def decide(envelope: Envelope, counter: Aggregate) -> Decision:
        name = str(counter.ref.key["pk"])
        if name not in moved:  # the first decision on each counter is made on a stale read
            moved.add(name)
            other_writer_moves(name)
        return Decision(state={"total": int(counter.state.get("total", 0)) + 1})

    committer = BatchCommitter(aws, locate=locate, decide=decide)
    messages = [Message(id=f"m{i}", source=SourceKind.SQS, source_name="q",
                        body=Envelope.new(CounterBumped(counter=f"c{i}"), aggregate_id=f"c{i}",
                                          sequence=1).to_json())
                for i in range(5)]
    aws.counter.reset()
    result = await committer(messages)
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert aws.counter.snapshot() == {"dynamodb.BatchGetItem": 1,
                                      "dynamodb.BatchExecuteStatement": 2}
    for i in range(5):
        item = await _item(aws, "counters", f"c{i}") or {}
        assert (item["total"], item["version"]) == (11, 3)
