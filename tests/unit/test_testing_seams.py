"""The in-memory seams of `shared.testing` keep the contracts of what they stand in for."""

from __future__ import annotations

import anyio
import pytest

from shared.consumers import Message, Outcome, SourceKind
from shared.consumers.streams import InitialPosition
from shared.testing import MemoryBatchHandler, MemoryConsumer, MemoryShardSource


def message(id: str, body: str) -> Message:
    return Message(id=id, body=body, source=SourceKind.KINESIS, source_name="s0")


async def test_the_batch_handler_stops_at_a_retry_and_leaves_the_rest_unattempted() -> None:
    handler = MemoryBatchHandler(retry={"bad": "not today"})
    result = await handler([message("1", "a"), message("2", "bad"), message("3", "b")])
    assert result.outcomes == {"1": Outcome.SUCCEEDED, "2": Outcome.RETRY}
    assert result.reasons == {"2": "not today"}
    assert handler.bodies() == {"a"}
    assert [len(call) for call in handler.calls] == [3]


async def test_a_split_closes_the_parent_which_ends_after_its_last_record() -> None:
    source = MemoryShardSource()
    assert source.put("k1", "before") == "s0"
    source.split("s0", ("s1", "s2"), route=lambda key: "s2")
    assert source.put("k1", "after") == "s2"
    shards = {s.shard_id: s for s in await source.list_shards()}
    assert shards["s0"].ending_sequence == "1"
    assert shards["s2"].parent_shard_ids == ("s0",)
    iterator = await source.get_iterator("s0", after=None, initial=InitialPosition.TRIM_HORIZON)
    page = await source.get_records("s0", iterator, limit=10)
    assert [m.body for m in page.messages] == ["before"]
    assert page.next_iterator is None  # a closed shard read to its end
    latest = await source.get_iterator("s2", after=None, initial=InitialPosition.LATEST)
    assert (await source.get_records("s2", latest, limit=10)).messages == []


def test_a_split_refuses_a_closed_parent_and_a_route_to_a_closed_shard() -> None:
    source = MemoryShardSource()
    source.split("s0", ("s1",), route=lambda key: "s0")
    with pytest.raises(ValueError, match="not an open shard"):
        source.split("s0", ("s9",))
    with pytest.raises(KeyError, match="not an open shard"):
        source.put("k", "v")
    with pytest.raises(ValueError, match="not a closed shard"):
        source.expire("s1")
    source.expire("s0")
    with pytest.raises(ValueError, match="not a closed shard"):
        source.expire("s0")


async def test_a_consumer_stopped_before_it_runs_returns_at_once() -> None:
    consumer = MemoryConsumer()
    consumer.stop()
    with anyio.fail_after(1):
        await consumer.run()
    assert consumer.stops == 1
