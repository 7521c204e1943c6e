"""`batch_handler` without AWS: decoding, outcomes by exception type, FIFO lanes, early
outcomes and heartbeats through the delivery control; SQS message parsing and settings."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from shared.consumers import (
    DeadLetter,
    DuplicateEvent,
    HandlerContext,
    Message,
    Outcome,
    RetryLater,
    SourceKind,
    SqsSettings,
    batch_handler,
    delivery_control,
)
from shared.consumers.sqs._wire import message_from_sqs
from shared.errors import InvalidMessageError, PermanentError, RetryableError
from shared.events import Envelope, EventRegistry, TypedEvent
from shared.testing import MemoryDeliveryControl


def msg(id: str, body: Any, group: str | None = None) -> Message:
    text = body if isinstance(body, str) else json.dumps(body)
    return Message(id=id, body=text, source=SourceKind.SQS, source_name="https://q/orders",
                   group_id=group, receipt=f"r-{id}")


async def test_exceptions_map_to_outcomes_by_type() -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> Outcome | None:
        match event["do"]:
            case "ok":
                return None
            case "dup":
                raise DuplicateEvent("e1")
            case "later":
                raise RetryLater("busy", delay=30)
            case "transient":
                raise RetryableError("throttled")
            case "bug":
                raise KeyError("surprise")  # unknown: retryable, the DLQ catches repeats
            case "permanent":
                raise PermanentError("refused")
            case "dead":
                raise DeadLetter("cannot ever work")
            case "explicit":
                return Outcome.DUPLICATE
        raise AssertionError(event)

    names = ["ok", "dup", "later", "transient", "bug", "permanent", "dead", "explicit"]
    result = await batch_handler(handle, tracing=False)([msg(n, {"do": n}) for n in names])
    assert dict(result.outcomes) == {
        "ok": Outcome.SUCCEEDED, "dup": Outcome.DUPLICATE, "later": Outcome.RETRY,
        "transient": Outcome.RETRY, "bug": Outcome.RETRY, "permanent": Outcome.DEAD_LETTER,
        "dead": Outcome.DEAD_LETTER, "explicit": Outcome.DUPLICATE,
    }
    assert result.delays == {"later": 30}
    assert result.reasons["dead"] == "DeadLetter: cannot ever work"
    assert "dup" not in result.reasons


async def test_undecodable_messages_are_dead_lettered_with_the_reason() -> None:
    handled: list[str] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        handled.append(ctx.message.id)

    result = await batch_handler(handle)([msg("bad", "{nope"), msg("good", {"a": 1})])
    assert result.outcomes["bad"] is Outcome.DEAD_LETTER
    assert result.reasons["bad"].startswith("InvalidMessageError: body: not JSON")
    assert handled == ["good"]


class DevicePaired(BaseModel):
    device_id: str
    owner: str


@pytest.fixture
def registry() -> EventRegistry:
    r = EventRegistry()
    r.register(DevicePaired, type="DevicePaired", source="fleetline.tests", version=1)
    return r


async def test_registry_decoding_gives_typed_events_and_names_bad_fields(
    registry: EventRegistry,
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def handle(event: TypedEvent[DevicePaired], ctx: HandlerContext) -> None:
        seen.append((event.data.device_id, ctx.event_id))

    good = Envelope.new(DevicePaired(device_id="d-1", owner="o"), aggregate_id="d-1",
                        sequence=1)
    bad = json.loads(good.to_json())
    bad["id"] = "0190c6a0-0000-7000-8000-000000000001"
    bad["data"] = {"device_id": "d-2"}  # owner missing
    unknown = {**json.loads(good.to_json()), "type": "DeviceExploded"}
    handler = batch_handler(handle, registry=registry)
    result = await handler([msg("g", good.to_json()), msg("b", bad), msg("u", unknown)])
    assert seen == [("d-1", good.id)]
    assert result.outcomes["b"] is Outcome.DEAD_LETTER
    assert "data.owner" in result.reasons["b"]
    assert result.outcomes["u"] is Outcome.DEAD_LETTER
    assert "DeviceExploded" in result.reasons["u"]


async def test_a_failure_stops_its_group_only_and_groups_run_concurrently() -> None:
    order: list[str] = []
    both_running = anyio.Event()
    running = 0

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        with anyio.fail_after(2):
            await both_running.wait()  # only possible if the two groups overlap
        running -= 1
        order.append(ctx.message.id)
        if ctx.message.id == "a2":
            raise RetryableError("a2 fails")

    batch = [msg("a1", {}, "A"), msg("b1", {}, "B"), msg("a2", {}, "A"), msg("b2", {}, "B"),
             msg("a3", {}, "A")]
    result = await batch_handler(handle, tracing=False)(batch)
    assert [i for i in order if i.startswith("a")] == ["a1", "a2"]
    assert [i for i in order if i.startswith("b")] == ["b1", "b2"]
    assert result.outcomes["a2"] is Outcome.RETRY
    assert "a3" not in result.outcomes  # not attempted: the host releases it


async def test_concurrency_bounds_lanes() -> None:
    running = peak = 0

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    await batch_handler(handle, concurrency=2)([msg(str(i), {}) for i in range(8)])
    assert peak == 2


async def test_heartbeat_and_early_outcomes_go_to_the_delivery_control() -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        await ctx.heartbeat(90)
        if event.get("fail"):
            raise InvalidMessageError("nope", field="x")

    control = MemoryDeliveryControl()
    with delivery_control(control):
        await batch_handler(handle)([msg("1", {}), msg("2", {"fail": True})])
    assert control.extended == [("1", 90), ("2", 90)]
    assert sorted(control.completed_ids) == [("1", Outcome.SUCCEEDED),
                                             ("2", Outcome.DEAD_LETTER)]


async def test_heartbeat_outside_a_host_does_nothing_and_refuses_negative() -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        await ctx.heartbeat()
        with pytest.raises(ValueError, match="seconds"):
            await ctx.heartbeat(-1)

    result = await batch_handler(handle)([msg("1", {})])
    assert result.outcomes["1"] is Outcome.SUCCEEDED


def test_batch_handler_refuses_bad_options(registry: EventRegistry) -> None:
    async def handle(event: Any, ctx: HandlerContext) -> None:
        return None

    with pytest.raises(ValueError, match="concurrency"):
        batch_handler(handle, concurrency=0)
    with pytest.raises(ValueError, match="registry or decode"):
        batch_handler(handle, registry=registry, decode=lambda m: m)


def test_message_from_sqs_reads_system_and_message_attributes() -> None:
    raw = {
        "MessageId": "id-1", "ReceiptHandle": "rh", "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "4", "SentTimestamp": "1700000000123",
                       "MessageGroupId": "dev-9", "SequenceNumber": "18",
                       "AWSTraceHeader": "Root=1-abc"},
        "MessageAttributes": {
            "traceparent": {"DataType": "String", "StringValue": "00-abc-def-01"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00"},
        },
    }
    m = message_from_sqs(raw, "https://sqs/q.fifo")
    assert (m.id, m.receipt, m.receive_count, m.group_id, m.sequence) == (
        "id-1", "rh", 4, "dev-9", "18")
    assert m.approximate_arrival == pytest.approx(1_700_000_000.123)
    assert m.attributes == {"traceparent": "00-abc-def-01", "AWSTraceHeader": "Root=1-abc"}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"wait_time_seconds": 21}, "wait_time_seconds"), ({"max_messages": 11}, "max_messages"),
     ({"max_in_flight": 0}, "max_in_flight"), ({"pollers": 0}, "pollers"),
     ({"visibility_timeout": 0}, "visibility_timeout"),
     ({"heartbeat_interval": 0}, "heartbeat_interval"), ({"drain_seconds": -1}, "drain_seconds")],
)
def test_settings_refuse_out_of_range_values_by_name(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SqsSettings(**kwargs)


def test_settings_defaults_follow_the_documented_choices() -> None:
    s = SqsSettings()
    assert (s.wait_time_seconds, s.max_messages, s.max_in_flight) == (20, 10, 20)
    assert (s.heartbeat_interval, s.extend_when_remaining, s.drain_seconds) == (1.0, 5.0, 45.0)




def test_public_names_resolve() -> None:
    import shared.consumers as consumers
    import shared.hosts as hosts
    import shared.hosts.lambda_ as lambda_

    for module in (consumers, hosts, lambda_):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module.__name__


def test_an_error_that_says_when_to_retry_sets_the_delay() -> None:
    from shared.consumers._handlers import classify
    from shared.idempotency import IdempotencyInProgressError

    assert classify(IdempotencyInProgressError("k", retry_after=7.5)) == (Outcome.RETRY, 7.5)
    assert classify(RetryableError("blip")) == (Outcome.RETRY, None)
    assert classify(RuntimeError("bug")) == (Outcome.RETRY, None)
