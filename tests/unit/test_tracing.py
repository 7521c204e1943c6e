"""Trace context across every transport: producer span -> inject -> (the transport's shape) ->
extract -> consumer span, with the real SDK and its InMemorySpanExporter."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from pydantic import BaseModel

from shared import tracing
from shared.consumers import HandlerContext, Message, Outcome, SourceKind, batch_handler
from shared.events import Envelope, EventRegistry, event_type, to_put_events_entry
from shared.testing import capture_spans

REG = EventRegistry()


@event_type("BeaconPinged", source="fleetline.tests", registry=REG)
class BeaconPinged(BaseModel):
    beacon_id: str


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test-tracing", exporter=exporter)
    yield exporter
    exporter.clear()


def _by_name(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (found,) = [s for s in exporter.get_finished_spans() if s.name == name]
    return found


def _assert_child_of(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.context is not None
    assert parent.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.parent.is_remote
    assert child.kind is SpanKind.CONSUMER


def _produce(name: str = "produce") -> Any:
    return tracing.tracer("test").start_as_current_span(name, kind=SpanKind.PRODUCER)


# --------------------------------------------------------------------------- ids


def test_trace_ids_are_xray_compatible(spans: InMemorySpanExporter) -> None:
    with _produce():
        header = tracing.xray_trace_header()
    span = _by_name(spans, "produce")
    assert span.context is not None
    epoch = span.context.trace_id >> 96  # X-Ray: the first 32 bits are the start time
    assert abs(epoch - time.time()) < 60
    assert header is not None
    assert header.startswith(f"Root={tracing.format_xray_trace_id(span.context.trace_id)};")
    assert tracing.xray_trace_header() is None  # outside any span


# --------------------------------------------------------------------------- SQS


def test_sqs_message_attributes_continue_the_trace(spans: InMemorySpanExporter) -> None:
    with _produce():
        attrs = tracing.sqs_trace_attributes({"kind": {"DataType": "String", "StringValue": "x"}})
    assert set(attrs.message_attributes) == {"kind", "traceparent"}
    assert set(attrs.system_attributes) == {"AWSTraceHeader"}
    # what ReceiveMessage returns, flattened by the SQS consumer into Message.attributes
    received = Message(
        id="m-1", body="{}", source=SourceKind.SQS, source_name="q",
        attributes={
            "traceparent": attrs.message_attributes["traceparent"]["StringValue"],
            "AWSTraceHeader": attrs.system_attributes["AWSTraceHeader"]["StringValue"],
        },
    )
    with tracing.consumer_span(received, "consume"):
        pass
    _assert_child_of(_by_name(spans, "consume"), _by_name(spans, "produce"))


def test_sqs_api_shapes_and_the_xray_header_alone_are_enough(spans: InMemorySpanExporter) -> None:
    with _produce():
        attrs = tracing.sqs_trace_attributes()
    # only the system attribute (e.g. a message sent by an X-Ray-instrumented producer)
    carrier = tracing.carrier_from_sqs(
        None, {"AWSTraceHeader": attrs.system_attributes["AWSTraceHeader"]["StringValue"]}
    )
    assert set(carrier) == {"X-Amzn-Trace-Id"}
    with tracing.consumer_span(carrier, "consume-xray"):
        pass
    # the Lambda event shape (stringValue)
    lambda_carrier = tracing.carrier_from_sqs(
        {"traceparent": {"stringValue": attrs.message_attributes["traceparent"]["StringValue"],
                         "dataType": "String"}}
    )
    with tracing.consumer_span(lambda_carrier, "consume-lambda"):
        pass
    producer = _by_name(spans, "produce")
    _assert_child_of(_by_name(spans, "consume-xray"), producer)
    _assert_child_of(_by_name(spans, "consume-lambda"), producer)


def test_sqs_never_exceeds_ten_message_attributes(spans: InMemorySpanExporter) -> None:
    nine = {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(9)}
    ten = {**nine, "a9": {"DataType": "String", "StringValue": "v"}}
    with _produce():
        with_room = tracing.sqs_trace_attributes(nine)
        full = tracing.sqs_trace_attributes(ten)
        with pytest.raises(ValueError, match="10"):
            tracing.sqs_trace_attributes({**ten, "a10": {}})
    assert len(with_room.message_attributes) == 10
    assert "traceparent" in with_room.message_attributes
    assert full.message_attributes == ten  # no room: the caller's attributes are kept as is
    assert "AWSTraceHeader" in full.system_attributes  # ... and the trace still travels
    assert nine == {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(9)}


# --------------------------------------------------------------------------- SNS


def test_sns_notification_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with _produce():
        attributes = tracing.sns_trace_attributes()
    # the JSON a non-raw SQS subscription receives
    notification = json.loads(json.dumps({
        "Type": "Notification", "MessageId": "n-1", "Message": "{}",
        "MessageAttributes": {
            k: {"Type": v["DataType"], "Value": v["StringValue"]} for k, v in attributes.items()
        },
    }))
    with tracing.consumer_span(tracing.carrier_from_sns(notification), "consume"):
        pass
    _assert_child_of(_by_name(spans, "consume"), _by_name(spans, "produce"))


# --------------------------------------------------------------------------- EventBridge


def test_eventbridge_event_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with _produce():
        envelope = Envelope.new(BeaconPinged(beacon_id="b"), aggregate_id="b", sequence=1)
        entry = to_put_events_entry(envelope, "bus")
    assert entry["TraceHeader"] == envelope.trace["X-Amzn-Trace-Id"]
    delivered = json.dumps({
        "version": "0", "id": "x", "detail-type": entry["DetailType"], "source": entry["Source"],
        "detail": json.loads(entry["Detail"]),
    })
    event = REG.decode(delivered)
    with tracing.consumer_span(event, "consume"):
        pass
    _assert_child_of(_by_name(spans, "consume"), _by_name(spans, "produce"))


# --------------------------------------------------------------------------- Kinesis / outbox


def test_kinesis_record_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with _produce():
        envelope = Envelope.new(BeaconPinged(beacon_id="b"), aggregate_id="b", sequence=1)
    record = {"kinesis": {"partitionKey": "b",
                          "data": base64.b64encode(envelope.to_json().encode()).decode()}}
    with tracing.consumer_span(REG.decode(record), "consume"):
        pass
    _assert_child_of(_by_name(spans, "consume"), _by_name(spans, "produce"))


def test_outbox_keeps_the_context_at_commit_time(spans: InMemorySpanExporter) -> None:
    with (
        tracing.tracer("test").start_as_current_span("api-request"),
        tracing.tracer("test").start_as_current_span("commit"),
    ):
        stored = Envelope.new(BeaconPinged(beacon_id="b"), aggregate_id="b", sequence=1)
    # later, in the relay, outside any span: the stored context is what travels
    relayed = Envelope.model_validate_json(stored.to_json())
    assert relayed.trace == stored.trace
    with tracing.consumer_span(relayed, "consume"):
        pass
    _assert_child_of(_by_name(spans, "consume"), _by_name(spans, "commit"))


# --------------------------------------------------------------------------- Step Functions


def test_step_functions_payload_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with _produce():
        execution_input = json.dumps(tracing.with_trace({"rollout_id": "r-1"}))
        header = tracing.xray_trace_header()
    task_payload = json.loads(execution_input)  # the definition passes "trace.$": "$.trace"
    assert task_payload["rollout_id"] == "r-1"
    assert header == task_payload["trace"]["X-Amzn-Trace-Id"]
    with tracing.consumer_span(tracing.carrier_from_payload(task_payload), "task"):
        pass
    _assert_child_of(_by_name(spans, "task"), _by_name(spans, "produce"))
    assert tracing.carrier_from_payload({"trace": "garbage"}) == {}


# --------------------------------------------------------------------------- batches


def test_mixed_batch_links_every_producer_and_each_message_continues_its_own(
    spans: InMemorySpanExporter,
) -> None:
    envelopes = []
    for name, count in (("producer-a", 2), ("producer-b", 1)):
        with _produce(name):
            envelopes += [
                Envelope.new(BeaconPinged(beacon_id=name), aggregate_id=name, sequence=i)
                for i in range(count)
            ]
    untraced = Envelope.new(BeaconPinged(beacon_id="c"), aggregate_id="c", sequence=0)
    batch = [*envelopes, untraced]

    with tracing.batch_span(batch, "process-batch"):
        for index, envelope in enumerate(batch):
            with tracing.consumer_span(envelope, f"message-{index}"):
                pass

    producer_a, producer_b = _by_name(spans, "producer-a"), _by_name(spans, "producer-b")
    batch_span = _by_name(spans, "process-batch")
    assert batch_span.kind is SpanKind.CONSUMER
    assert producer_a.context is not None
    assert producer_b.context is not None
    assert [(link.context.trace_id, link.context.span_id) for link in batch_span.links] == [
        (producer_a.context.trace_id, producer_a.context.span_id),
        (producer_b.context.trace_id, producer_b.context.span_id),
    ]
    assert batch_span.attributes is not None
    assert batch_span.attributes["messaging.batch.message_count"] == 4
    _assert_child_of(_by_name(spans, "message-0"), producer_a)
    _assert_child_of(_by_name(spans, "message-1"), producer_a)
    _assert_child_of(_by_name(spans, "message-2"), producer_b)
    # no producer context: the message continues the batch span instead of inventing a parent
    orphan = _by_name(spans, "message-3")
    assert orphan.parent is not None
    assert batch_span.context is not None
    assert orphan.parent.span_id == batch_span.context.span_id


def test_relay_publish_joins_the_commit_trace_or_links_many(spans: InMemorySpanExporter) -> None:
    def committed(name: str) -> dict[str, Any]:
        with tracing.tracer("test").start_as_current_span(name):
            envelope = Envelope.new(BeaconPinged(beacon_id=name), aggregate_id=name, sequence=1)
        return json.loads(envelope.to_json())  # the relay holds envelopes as plain dicts

    one, other = committed("commit-1"), committed("commit-2")
    with tracing.producer_span([one], "bus publish"):
        pass
    with tracing.producer_span([one, other], "bus publish many"):
        pass
    single = _by_name(spans, "bus publish")
    commit_1, commit_2 = _by_name(spans, "commit-1"), _by_name(spans, "commit-2")
    assert single.kind is SpanKind.PRODUCER
    assert single.parent is not None
    assert commit_1.context is not None
    assert commit_2.context is not None
    assert single.parent.span_id == commit_1.context.span_id
    assert single.context is not None
    assert single.context.trace_id == commit_1.context.trace_id
    many = _by_name(spans, "bus publish many")
    assert many.parent is None
    assert [link.context.span_id for link in many.links] == [
        commit_1.context.span_id, commit_2.context.span_id,
    ]


# --------------------------------------------------------------------------- robustness


def test_unreadable_carriers_start_a_new_trace_and_errors_are_recorded(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.consumer_span({"traceparent": "not-a-traceparent"}, "garbage"):
        pass
    assert _by_name(spans, "garbage").parent is None
    with pytest.raises(RuntimeError), tracing.consumer_span(None, "failing"):
        raise RuntimeError("handler broke")
    failing = _by_name(spans, "failing")
    assert failing.status.status_code is StatusCode.ERROR
    assert [e.name for e in failing.events] == ["exception"]



# --------------------------------------------------------------------------- batch_handler


def _traced_messages(producer: str, *ids: str) -> list[Message]:
    """Messages made inside one producer span `producer` (a new trace): each body is an
    envelope carrying that context, and the SQS attributes carry it too (the relay -> SQS
    path)."""
    out = []
    with _produce(producer):
        for message_id in ids:
            envelope = Envelope.new(BeaconPinged(beacon_id=message_id),
                                    aggregate_id=message_id, sequence=1)
            sqs = tracing.sqs_trace_attributes()
            flat = {name: value["StringValue"]
                    for name, value in {**sqs.message_attributes,
                                        **sqs.system_attributes}.items()}
            out.append(Message(id=message_id, body=envelope.to_json(), source=SourceKind.SQS,
                               source_name="https://sqs/beacons", attributes=flat))
    assert all(REG.decode(m.body).envelope.trace for m in out)  # the bodies carry the trace
    return out


async def _ignore(event: Any, ctx: HandlerContext) -> None:
    return None


def test_batch_handler_links_producers_when_a_batch_mixes_traces() -> None:
    with capture_spans() as captured:
        a_1, a_2 = _traced_messages("producer-a", "a-1", "a-2")
        (b_1,) = _traced_messages("producer-b", "b-1")
        result = anyio.run(batch_handler(_ignore, registry=REG), [a_1, b_1, a_2])
    assert result.outcomes == {m: Outcome.SUCCEEDED for m in ("a-1", "a-2", "b-1")}
    producer_a, producer_b = captured.one("producer-a"), captured.one("producer-b")
    assert producer_a.context is not None
    assert producer_b.context is not None
    assert producer_a.context.trace_id != producer_b.context.trace_id

    batch = captured.one("process beacons batch")
    assert batch.kind is SpanKind.CONSUMER
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (producer_a.context.trace_id, producer_a.context.span_id),
        (producer_b.context.trace_id, producer_b.context.span_id),
    ]
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["messaging.destination.name"] == "beacons"  # the name, not a URL

    consumers = captured.named("process beacons")
    assert len(consumers) == 3
    by_message = {
        span.attributes["messaging.message.id"]: span
        for span in consumers if span.attributes is not None
    }
    _assert_child_of(by_message["a-1"], producer_a)
    _assert_child_of(by_message["a-2"], producer_a)
    _assert_child_of(by_message["b-1"], producer_b)
    # the batch span covers the messages' processing (it is made at the end, backdated)
    assert batch.start_time is not None
    assert batch.end_time is not None
    for span in consumers:
        assert span.start_time is not None
        assert span.end_time is not None
        assert batch.start_time <= span.start_time <= span.end_time <= batch.end_time


def test_batch_handler_reads_transport_attributes_when_the_body_has_no_trace() -> None:
    def attributes_only(producer: str, message_id: str) -> Message:
        with _produce(producer):
            sqs = tracing.sqs_trace_attributes()
        attributes = {name: value["StringValue"]
                      for name, value in {**sqs.message_attributes,
                                          **sqs.system_attributes}.items()}
        return Message(id=message_id, body=json.dumps({"beacon": message_id}),
                       source=SourceKind.SQS, source_name="https://sqs/raw",
                       attributes=attributes)

    with capture_spans() as captured:
        batch = [attributes_only("producer-a", "a-1"), attributes_only("producer-b", "b-1")]
        result = anyio.run(batch_handler(_ignore), batch)  # the default JSON decoder
    assert result.outcomes == {"a-1": Outcome.SUCCEEDED, "b-1": Outcome.SUCCEEDED}
    producer_a, producer_b = captured.one("producer-a"), captured.one("producer-b")
    by_message = {
        span.attributes["messaging.message.id"]: span
        for span in captured.named("process raw") if span.attributes is not None
    }
    _assert_child_of(by_message["a-1"], producer_a)
    _assert_child_of(by_message["b-1"], producer_b)
    assert len(captured.one("process raw batch").links) == 2


def test_batch_handler_makes_no_batch_span_for_one_trace() -> None:
    with capture_spans() as captured:
        with tracing.tracer("test").start_as_current_span("request"):
            # two producer spans, one trace: still a single-trace batch
            messages = [*_traced_messages("producer-1", "m-1", "m-2"),
                        *_traced_messages("producer-2", "m-3")]
        anyio.run(batch_handler(_ignore, registry=REG), messages)
        anyio.run(batch_handler(_ignore, registry=REG), messages[:1])
        mixed = [*_traced_messages("elsewhere", "x-1"), messages[0]]
        anyio.run(batch_handler(_ignore, registry=REG, tracing=False), mixed)
    assert len(captured.named("process beacons")) == 4
    assert captured.named("process beacons batch") == []  # also none with tracing off
    request = captured.one("request")
    assert request.context is not None
    assert {s.context.trace_id for s in captured.spans
            if s.context is not None and s.name != "elsewhere"} == {request.context.trace_id}


def test_mixed_batch_links_need_two_traces() -> None:
    def ctx(trace_id: int, span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=True,
                           trace_flags=TraceFlags(TraceFlags.SAMPLED))

    assert tracing.mixed_batch_links([]) == []
    assert tracing.mixed_batch_links([ctx(1, 1), ctx(1, 2), ctx(1, 1)]) == []
    assert tracing.mixed_batch_links([ctx(1, 1), ctx(2, 5), ctx(1, 1), ctx(1, 2)]) == [
        ctx(1, 1), ctx(2, 5), ctx(1, 2)
    ]


# ----------------------------------------------------------------------- operate (issue 13)
def test_an_x_ray_header_alone_continues_its_trace_whatever_its_case() -> None:
    header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    for carrier in ({"X-Amzn-Trace-Id": header}, {"x-amzn-trace-id": header}):
        found = tracing.span_context_of(carrier)
        assert found is not None
        assert format(found.trace_id, "032x") == "5759e988bd862e3fe1be46a994272793"


def test_otel_service_name_names_the_service() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = tracing.configure_tracing(
        "default-name", exporter=InMemorySpanExporter(),
        environ={"OTEL_SERVICE_NAME": "orders-notifications"})
    assert provider.resource.attributes["service.name"] == "orders-notifications"
    provider = tracing.configure_tracing("default-name", exporter=InMemorySpanExporter(),
                                         environ={})
    assert provider.resource.attributes["service.name"] == "default-name"


def test_a_handler_span_is_an_internal_child_of_the_consumer_span() -> None:
    with capture_spans() as captured:
        with (tracing.consumer_span({}, "process q"),
              tracing.handler_span("orders.notify OrderConfirmed")):
            pass
        # called on its own, it continues the producer in `source` as the one CONSUMER span
        with _produce("producer"):
            carrier = tracing.current_carrier()
        with tracing.handler_span("orders.alone", source=carrier):
            pass
    consumer, handler = captured.one("process q"), captured.one("orders.notify OrderConfirmed")
    assert handler.kind is SpanKind.INTERNAL
    assert consumer.context is not None
    assert handler.parent is not None
    assert handler.parent.span_id == consumer.context.span_id  # in-process: not remote
    alone = captured.one("orders.alone")
    assert alone.kind is SpanKind.CONSUMER
    _assert_child_of(alone, captured.one("producer"))


def test_publish_spans_sit_between_the_commit_and_the_consumers() -> None:
    with capture_spans() as captured:
        with _produce("commit-a"):
            a = {"id": "e-1", "trace": tracing.current_carrier()}
            a2 = {"id": "e-2", "trace": tracing.current_carrier()}
        with _produce("commit-b"):
            b = {"id": "e-3", "trace": tracing.current_carrier()}
        sent, spans = tracing.reparent_envelopes([a, a2, b], "publish bus")
        spans.end(["e-3"])
    publishes = captured.named("publish bus")
    assert len(publishes) == 2  # one per commit context
    by_parent = {p.parent.span_id: p for p in publishes if p.parent is not None}
    commit_a, commit_b = captured.one("commit-a"), captured.one("commit-b")
    assert commit_a.context is not None
    assert commit_b.context is not None
    pub_a, pub_b = by_parent[commit_a.context.span_id], by_parent[commit_b.context.span_id]
    assert pub_a.kind is SpanKind.PRODUCER
    assert pub_b.status.status_code.name == "ERROR"  # its event was not published
    assert pub_a.attributes is not None
    assert pub_a.attributes["messaging.batch.message_count"] == 2
    assert [e["id"] for e in sent] == ["e-1", "e-2", "e-3"]
    moved = tracing.span_context_of(sent[0]["trace"])
    assert moved is not None
    assert pub_a.context is not None
    assert moved.span_id == pub_a.context.span_id


def test_destination_names_are_names_not_addresses() -> None:
    from shared.consumers._message import destination_name

    assert destination_name("https://sqs.us-east-1.amazonaws.com/1/orders-tasks") == (
        "orders-tasks")
    assert destination_name("arn:aws:sqs:us-east-1:1:orders-tasks") == "orders-tasks"
    assert destination_name("arn:aws:kinesis:us-east-1:1:stream/telemetry") == "telemetry"
    assert destination_name(
        "arn:aws:dynamodb:us-east-1:1:table/orders/stream/2026-01-01T00:00:00.000") == "orders"
