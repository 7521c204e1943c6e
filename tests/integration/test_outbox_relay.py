"""The unit of work commits state and events in one write; the relay publishes them."""

from __future__ import annotations

import pytest

from shared.aws import AwsClients
from shared.consumers._message import Outcome
from shared.outbox import (
    ItemRef,
    PublisherConfig,
    Relay,
    TransactionTooLargeError,
    UnitOfWork,
)

from ._outbox_support import OrderChanged, bus_to_queue, create_table, drain, ids, read_stream

pytestmark = pytest.mark.emulator


async def test_commit_then_relay_publishes_each_event_once_in_order(aws: AwsClients) -> None:
    stream = await create_table(aws, "orders")
    assert stream is not None
    url = await bus_to_queue(aws, "bus", "sink", source_prefix="fleetline.test")
    ref = ItemRef(table="orders", key={"pk": "o-1"})
    committed = []
    for step in range(3):
        uow = UnitOfWork(aws)
        order = await uow.load(ref)
        uow.save(order, {"status": f"s{step}"}, events=[OrderChanged(step=step)])
        committed.extend(await uow.commit())
    assert [e.sequence for e in committed] == [1, 2, 3]
    relay = Relay(aws, PublisherConfig(bus_name="bus"))
    messages = await read_stream(aws, stream)
    result = await relay(messages)
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    bodies = await drain(aws, url, expect=3)
    assert ids(bodies) == [e.id for e in committed]
    assert [b["detail"]["sequence"] for b in bodies] == [1, 2, 3]
    assert bodies[0]["detail-type"] == "OrderChanged"


async def test_more_than_100_operations_fail_before_writing(aws: AwsClients) -> None:
    await create_table(aws, "many", stream=None)
    uow = UnitOfWork(aws)
    refs = [ItemRef(table="many", key={"pk": f"k{i}"}) for i in range(101)]
    found = await uow.load_many(refs)
    for ref in refs:
        uow.save(found[ref.token], {"n": 1})
    before = aws.counter.snapshot().get("dynamodb.TransactWriteItems", 0)
    with pytest.raises(TransactionTooLargeError, match="101"):
        await uow.commit()
    assert aws.counter.snapshot().get("dynamodb.TransactWriteItems", 0) == before
    dynamodb = await aws.client("dynamodb")
    assert (await dynamodb.scan(TableName="many"))["Count"] == 0
