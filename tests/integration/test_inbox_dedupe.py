"""A message delivered twice applies its effect once: across batches, within one batch, when
two workers commit the same event concurrently, and with the inbox kept as a table."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from shared.aws import AwsClients
from shared.consumers._message import Message, Outcome, SourceKind
from shared.events import Envelope
from shared.inbox import InboxConfig, InboxMode
from shared.outbox import (
    Aggregate,
    BatchCommitter,
    BatchConfig,
    Decision,
    ItemRef,
    OutboxConfig,
    WriteMode,
)

from ._outbox_support import CounterBumped, CounterChanged, create_table

pytestmark = pytest.mark.emulator


def _message(envelope: Envelope, transport_id: str) -> Message:
    return Message(id=transport_id, body=envelope.to_json(), source=SourceKind.SQS,
                   source_name="q")


def _bump(counter: str, key: str = "c-1") -> Envelope:
    return Envelope.new(CounterBumped(counter=counter), aggregate_id=key, sequence=1)


def _committer(aws: AwsClients, table: str, **config: Any) -> BatchCommitter:
    def locate(envelope: Envelope) -> ItemRef:
        return ItemRef(table=table, key={"pk": str(envelope.data["counter"])})  # type: ignore[index]

    def decide(envelope: Envelope, counter: Aggregate) -> Decision:
        total = int(counter.state.get("total", 0)) + 1
        name = counter.ref.key["pk"]
        return Decision(state={"total": total}, events=[CounterChanged(counter=name, total=total)])

    return BatchCommitter(aws, locate=locate, decide=decide, config=BatchConfig(**config))


async def _total(aws: AwsClients, table: str, key: str) -> int:
    dynamodb = await aws.client("dynamodb")
    item = (await dynamodb.get_item(TableName=table, Key={"pk": {"S": key}}))["Item"]
    return int(item["total"]["N"])


async def test_redelivery_in_a_later_batch_is_a_duplicate(aws: AwsClients) -> None:
    await create_table(aws, "counters")
    handle = _committer(aws, "counters")
    event = _bump("a")
    first = await handle([_message(event, "m1"), _message(_bump("b"), "m2")])
    assert first.outcomes == {"m1": Outcome.SUCCEEDED, "m2": Outcome.SUCCEEDED}
    again = await handle([_message(event, "m3")])  # new transport id, same envelope id
    assert again.outcomes == {"m3": Outcome.DUPLICATE}
    assert await _total(aws, "counters", "a") == 1


async def test_both_copies_in_one_batch_apply_once(aws: AwsClients) -> None:
    await create_table(aws, "counters")
    handle = _committer(aws, "counters")
    event, other = _bump("a"), _bump("a")
    result = await handle([_message(event, "m1"), _message(other, "m2"),
                           _message(event, "m3")])
    assert result.outcomes == {"m1": Outcome.SUCCEEDED, "m2": Outcome.SUCCEEDED,
                               "m3": Outcome.DUPLICATE}
    assert await _total(aws, "counters", "a") == 2  # two distinct events, one write


@pytest.mark.parametrize("mode", list(WriteMode))
async def test_concurrent_workers_on_one_event_apply_it_once(aws: AwsClients,
                                                             mode: WriteMode) -> None:
    await create_table(aws, "counters")
    events = [_bump(f"k{i}") for i in range(5)]
    outcomes: list[dict[str, Outcome]] = []

    async def worker(name: str) -> None:
        async with AwsClients() as own:
            handle = _committer(own, "counters", write_mode=mode)
            result = await handle([_message(e, f"{name}{i}") for i, e in enumerate(events)])
            outcomes.append({k[1:]: v for k, v in result.outcomes.items()})

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "a")
        tg.start_soon(worker, "b")
    for i in range(5):
        pair = sorted(o[str(i)] for o in outcomes)
        # Either one applied and the other saw the duplicate, or the loser retries later.
        assert pair in ([Outcome.DUPLICATE, Outcome.SUCCEEDED], [Outcome.RETRY,
                        Outcome.SUCCEEDED]), pair
        assert await _total(aws, "counters", f"k{i}") == 1


@pytest.mark.parametrize("mode", [WriteMode.STATEMENTS, WriteMode.TRANSACTION, WriteMode.ITEMS])
async def test_write_modes_and_inbox_table(aws: AwsClients, mode: WriteMode) -> None:
    await create_table(aws, "counters")
    await create_table(aws, "inbox", key="id", stream=None)
    inbox = InboxConfig(mode=InboxMode.TABLE, table="inbox", consumer="counting")
    handle = _committer(aws, "counters", write_mode=mode, outbox=OutboxConfig(inbox=inbox))
    events = [_bump("a"), _bump("b"), _bump("a")]
    first = await handle([_message(e, f"m{i}") for i, e in enumerate(events)])
    assert set(first.outcomes.values()) == {Outcome.SUCCEEDED}
    # Redeliver all three plus a new one: the inbox table names exactly the old three.
    fresh = _bump("b")
    again = await handle([_message(e, f"r{i}") for i, e in enumerate([*events, fresh])])
    assert again.outcomes == {"r0": Outcome.DUPLICATE, "r1": Outcome.DUPLICATE,
                              "r2": Outcome.DUPLICATE, "r3": Outcome.SUCCEEDED}
    assert await _total(aws, "counters", "a") == 2
    assert await _total(aws, "counters", "b") == 2
    dynamodb = await aws.client("dynamodb")
    records = (await dynamodb.scan(TableName="inbox"))["Items"]
    assert len(records) == 4
    assert all(int(r["expires_at"]["N"]) > 0 for r in records)


async def test_a_retried_event_holds_back_the_later_events_of_its_aggregate(
    aws: AwsClients,
) -> None:
    from shared.consumers import RetryLater

    await create_table(aws, "counters")
    first, second, other = _bump("a"), _bump("a"), _bump("b")

    def locate(envelope: Envelope) -> ItemRef:
        return ItemRef(table="counters", key={"pk": str(envelope.data["counter"])})  # type: ignore[index]

    def decide(envelope: Envelope, counter: Aggregate) -> Decision:
        if envelope.id == first.id:
            raise RetryLater("downstream busy")
        return Decision(state={"total": int(counter.state.get("total", 0)) + 1})

    handle = BatchCommitter(aws, locate=locate, decide=decide)
    result = await handle([_message(first, "m1"), _message(second, "m2"),
                           _message(other, "m3")])
    assert result.outcomes == {"m1": Outcome.RETRY, "m2": Outcome.RETRY,
                               "m3": Outcome.SUCCEEDED}
    assert "waits for event" in result.reasons["m2"]
    assert await _total(aws, "counters", "b") == 1
