"""The publisher's rules with an in-memory bus behind its PutEvents seam: order per aggregate,
retry of exactly the failed entries, permanent failures block only their aggregate."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from shared.consumers._message import Message, Outcome, SourceKind
from shared.events import Envelope, EventRegistry, event_type
from shared.outbox import PublisherConfig, Relay
from shared.outbox._publisher import EventPublisher
from shared.testing import MemoryEventBus

EVENTS = EventRegistry()


@event_type("StepTaken", source="fleetline.unit", registry=EVENTS)
class StepTaken(BaseModel):
    n: int


def _env(aggregate: str, n: int) -> dict[str, Any]:
    return json.loads(Envelope.new(StepTaken(n=n), aggregate_id=aggregate, sequence=n,
                                   trace={}).to_json())


CONFIG = PublisherConfig(bus_name="bus", base_delay=0.0, max_attempts=3)


async def test_partial_failure_resends_only_the_failed_entry_and_keeps_order() -> None:
    a1, a2, b1 = _env("a", 1), _env("a", 2), _env("b", 1)
    bus = MemoryEventBus({a1["id"]: ["ThrottlingException"]})
    report = await EventPublisher(None, CONFIG, send=bus).publish([a1, a2, b1])
    assert report.ok
    assert bus.calls == [[a1["id"], b1["id"]], [a1["id"]], [a2["id"]]]
    assert bus.published == [b1["id"], a1["id"], a2["id"]]


async def test_permanent_failure_blocks_only_its_aggregate() -> None:
    a1, a2, b1 = _env("a", 1), _env("a", 2), _env("b", 1)
    bus = MemoryEventBus({a1["id"]: ["ValidationException"]})
    report = await EventPublisher(None, CONFIG, send=bus).publish([a1, a2, b1])
    assert bus.published == [b1["id"]]
    assert a1["id"] in report.permanent
    assert report.failed[a2["id"]] == f"blocked by {a1['id']}"


async def test_retries_are_bounded_then_reported() -> None:
    a1 = _env("a", 1)
    bus = MemoryEventBus({a1["id"]: ["InternalFailure"] * 10})
    report = await EventPublisher(None, CONFIG, send=bus).publish([a1])
    assert len(bus.calls) == 3
    assert not report.ok
    assert a1["id"] not in report.permanent


def _message(mid: str, events: list[dict[str, Any]]) -> Message:
    record = {"eventName": "MODIFY", "dynamodb": {
        "ApproximateCreationDateTime": 1.0,
        "NewImage": {"outbox": {"L": [{"S": json.dumps(e)} for e in events]}}}}
    return Message(id=mid, body=json.dumps(record), source=SourceKind.DYNAMODB_STREAM,
                   source_name="shard-1")


async def test_relay_outcomes_per_record_and_lag() -> None:
    a1, a2, b1 = _env("a", 1), _env("a", 2), _env("b", 1)
    bus = MemoryEventBus({a1["id"]: ["ValidationException"], b1["id"]: ["InternalFailure"] * 5})
    lags: list[float] = []
    relay = Relay(None, CONFIG, send=bus, on_lag=lags.append)
    bad = Message(id="r0", body="not json", source=SourceKind.DYNAMODB_STREAM, source_name="s")
    result = await relay([bad, _message("r1", [a1]), _message("r2", [a2]),
                          _message("r3", [b1]), _message("r4", [])])
    assert result.outcomes == {
        "r0": Outcome.DEAD_LETTER,  # unreadable record
        "r1": Outcome.DEAD_LETTER,  # EventBridge refuses its event for good
        "r2": Outcome.RETRY,  # blocked behind a1: never published before it
        "r3": Outcome.RETRY,  # kept failing transiently
        "r4": Outcome.SUCCEEDED,  # a write that added no events
    }
    assert len(lags) == 4
    assert all(lag > 0 for lag in lags)


async def test_the_calls_of_a_round_overlap_up_to_max_in_flight_and_keep_each_order() -> None:
    """A round holds one event per aggregate, so its PutEvents calls may overlap; the next
    round (each aggregate's next event) starts only when the whole round is answered."""
    import anyio

    in_flight = peak = 0
    bus = MemoryEventBus({})

    async def slow_bus(entries: list[dict[str, Any]]) -> Sequence[Mapping[str, Any]]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)  # every call of the round is started before any returns
        in_flight -= 1
        return await bus(entries)

    envelopes = [_env(f"device-{d:02d}", n) for n in (1, 2) for d in range(60)]
    config = PublisherConfig(bus_name="bus", base_delay=0.0, max_in_flight=3)
    report = await EventPublisher(None, config, send=slow_bus).publish(envelopes)
    assert report.ok
    assert peak == 3  # 6 calls per round (60 events), never more than 3 at once
    assert len(bus.calls) == 12
    first_round = {e["id"] for e in envelopes[:60]}
    assert set(bus.published[:60]) == first_round  # round 2 only after round 1
