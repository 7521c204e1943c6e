"""One trace end to end on the emulator, with the real SDK's InMemorySpanExporter:

    API request span (SERVER)
    ├── unit of work commit: the envelope stores this context (the outbox)
    ├── relay PutEvents (PRODUCER), from the table's stream
    └── worker's consumer span (CONSUMER), after bus -> rule -> SQS queue -> SqsConsumer

Resources are created through the API inside the test: a table with a stream, a custom bus,
a rule with an SQS target. The tests after it carry a context over one real transport each:
SQS attributes, an SNS notification to an SQS subscriber, a Step Functions task payload.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from shared import tracing
from shared.aws import AwsClients
from shared.consumers import (
    HandlerContext,
    Message,
    Outcome,
    SourceKind,
    SqsConsumer,
    SqsSettings,
    batch_handler,
)
from shared.consumers.sqs._wire import message_from_sqs
from shared.events import EventRegistry, TypedEvent, event_type
from shared.outbox import ItemRef, PublisherConfig, Relay, UnitOfWork

pytestmark = pytest.mark.emulator

REG = EventRegistry()
TABLE, BUS, QUEUE = "e2e-parcels", "e2e-bus", "e2e-worker"


@event_type("ParcelRouted", source="fleetline.e2e", registry=REG)
class ParcelRouted(BaseModel):
    parcel_id: str
    hub: str


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("e2e", exporter=exporter)
    yield exporter
    exporter.clear()


async def _create_resources(aws: AwsClients) -> tuple[str, str]:
    """(stream ARN of the table, URL of the queue behind the bus)."""
    dynamodb, events, sqs = (
        await aws.client("dynamodb"), await aws.client("events"), await aws.client("sqs")
    )
    table = await dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    await events.create_event_bus(Name=BUS)
    url = (await sqs.create_queue(QueueName=QUEUE))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    await events.put_rule(
        Name="to-worker", EventBusName=BUS,
        EventPattern=json.dumps({"source": ["fleetline.e2e"], "detail-type": ["ParcelRouted"]}),
    )
    await events.put_targets(
        Rule="to-worker", EventBusName=BUS, Targets=[{"Id": "worker", "Arn": arn}]
    )
    return str(table["TableDescription"]["LatestStreamArn"]), str(url)


def _plain(value: Any) -> Any:
    """A stream record as JSON (what the local pipe hands the relay)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def _stream_messages(aws: AwsClients, stream_arn: str) -> list[Message]:
    streams = await aws.client("dynamodbstreams")
    shards = (await streams.describe_stream(StreamArn=stream_arn))["StreamDescription"]["Shards"]
    messages: list[Message] = []
    for shard in shards:
        iterator = (await streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON",
        ))["ShardIterator"]
        page = await streams.get_records(ShardIterator=iterator, Limit=100)
        for record in page["Records"]:
            sequence = record["dynamodb"]["SequenceNumber"]
            messages.append(Message(
                id=sequence, body=json.dumps(_plain(record)), sequence=sequence,
                source=SourceKind.DYNAMODB_STREAM, source_name=shard["ShardId"],
            ))
    return messages


def _one(spans: InMemorySpanExporter, kind: SpanKind, name_part: str = "") -> ReadableSpan:
    found = [
        s for s in spans.get_finished_spans() if s.kind is kind and name_part in s.name
    ]
    assert len(found) == 1, [(s.name, s.kind) for s in spans.get_finished_spans()]
    return found[0]


async def test_one_trace_from_api_request_through_outbox_bus_queue_and_worker(
    aws: AwsClients, spans: InMemorySpanExporter
) -> None:
    stream_arn, queue_url = await _create_resources(aws)

    # 1. The API request: load, decide, commit state + event atomically (the outbox).
    with tracing.tracer("e2e.api").start_as_current_span("POST /parcels", kind=SpanKind.SERVER):
        uow = UnitOfWork(aws)
        parcel = await uow.load(ItemRef(table=TABLE, key={"pk": "p-1"}))
        uow.save(parcel, {"status": "routed"}, events=[ParcelRouted(parcel_id="p-1", hub="AMS")])
        (committed,) = await uow.commit()

    # 2. The relay, later and outside the request: stream -> PutEvents.
    relay = Relay(aws, PublisherConfig(bus_name=BUS))
    relayed = await relay(await _stream_messages(aws, stream_arn))
    assert set(relayed.outcomes.values()) == {Outcome.SUCCEEDED}

    # 3. The worker: SqsConsumer + the event registry; one consumer span per message.
    handled: list[tuple[TypedEvent[BaseModel], HandlerContext]] = []
    done = anyio.Event()

    async def handle(event: TypedEvent[BaseModel], ctx: HandlerContext) -> None:
        handled.append((event, ctx))
        done.set()

    consumer = SqsConsumer(
        aws, queue_url, batch_handler(handle, registry=REG),
        settings=SqsSettings(wait_time_seconds=1, drain_seconds=2.0),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        with anyio.fail_after(15):
            await done.wait()
        consumer.stop()

    (event, _), = handled
    assert event.id == committed.id
    assert event.data_as(ParcelRouted).hub == "AMS"

    request = _one(spans, SpanKind.SERVER, "POST /parcels")
    publish = _one(spans, SpanKind.PRODUCER)
    consume = _one(spans, SpanKind.CONSUMER, "process e2e-worker")
    assert request.context is not None
    assert publish.context is not None
    trace_id = request.context.trace_id
    assert {s.context.trace_id for s in (publish, consume) if s.context} == {trace_id}
    # request -> commit -> publish (PRODUCER, the relay's hop) -> bus -> queue -> consumer
    assert publish.parent is not None
    assert publish.parent.span_id == request.context.span_id
    assert consume.parent is not None
    assert consume.parent.span_id == publish.context.span_id
    assert consume.parent.is_remote  # it crossed the bus and the queue
    assert publish.end_time is not None
    assert consume.start_time is not None
    assert publish.end_time <= consume.start_time
    assert consume.attributes is not None
    assert consume.attributes["messaging.destination.name"] == "e2e-worker"  # the name
    assert consume.attributes["messaging.operation.type"] == "process"
    assert publish.attributes is not None
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.destination.name"] == BUS
    assert queue_url.endswith("/e2e-worker")


# ----------------------------------------------------------------------- single transports


async def _receive(aws: AwsClients, url: str) -> dict[str, Any]:
    sqs = await aws.client("sqs")
    with anyio.fail_after(10):
        while True:
            got = await sqs.receive_message(
                QueueUrl=url, WaitTimeSeconds=1, MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            if got.get("Messages"):
                return dict(got["Messages"][0])


def _assert_continues(spans: InMemorySpanExporter, consumer: str, producer: str) -> None:
    (child,) = [s for s in spans.get_finished_spans() if s.name == consumer]
    (parent,) = [s for s in spans.get_finished_spans() if s.name == producer]
    assert child.context is not None
    assert parent.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id


async def test_sqs_message_attributes_carry_the_trace_through_the_queue(
    aws: AwsClients, spans: InMemorySpanExporter
) -> None:
    sqs = await aws.client("sqs")
    url = (await sqs.create_queue(QueueName="traced"))["QueueUrl"]
    with tracing.tracer("e2e").start_as_current_span("send", kind=SpanKind.PRODUCER):
        attributes = tracing.sqs_trace_attributes(
            {"kind": {"DataType": "String", "StringValue": "plain"}}
        )
        await sqs.send_message(
            QueueUrl=url, MessageBody="not an envelope",
            MessageAttributes=attributes.message_attributes,
            MessageSystemAttributes=attributes.system_attributes,
        )
    raw = await _receive(aws, url)
    assert raw["Attributes"]["AWSTraceHeader"] == (
        attributes.system_attributes["AWSTraceHeader"]["StringValue"]
    )
    with tracing.consumer_span(message_from_sqs(raw, url), "receive"):
        pass
    _assert_continues(spans, "receive", "send")


async def test_sns_notification_carries_the_trace_to_an_sqs_subscriber(
    aws: AwsClients, spans: InMemorySpanExporter
) -> None:
    sns, sqs = await aws.client("sns"), await aws.client("sqs")
    topic = (await sns.create_topic(Name="alarms"))["TopicArn"]
    url = (await sqs.create_queue(QueueName="alarm-sub"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)  # non-raw delivery
    with tracing.tracer("e2e").start_as_current_span("publish", kind=SpanKind.PRODUCER):
        await sns.publish(
            TopicArn=topic, Message="{}", MessageAttributes=tracing.sns_trace_attributes()
        )
    notification = json.loads((await _receive(aws, url))["Body"])
    with tracing.consumer_span(tracing.carrier_from_sns(notification), "notified"):
        pass
    _assert_continues(spans, "notified", "publish")


async def test_step_functions_task_payload_carries_the_trace(
    aws: AwsClients, spans: InMemorySpanExporter
) -> None:
    sfn, sqs = await aws.client("stepfunctions"), await aws.client("sqs")
    url = (await sqs.create_queue(QueueName="sfn-task"))["QueueUrl"]
    definition = {
        "StartAt": "Notify",
        "States": {
            "Notify": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage",
                # a task payload: business fields plus the execution's trace carrier
                "Parameters": {
                    "QueueUrl": url,
                    "MessageBody": {"rollout_id.$": "$.rollout_id", "trace.$": "$.trace"},
                },
                "End": True,
            }
        },
    }
    machine = await sfn.create_state_machine(
        name="traced", definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/sfn-test",
    )
    with tracing.tracer("e2e").start_as_current_span("start rollout", kind=SpanKind.PRODUCER):
        await sfn.start_execution(
            stateMachineArn=machine["stateMachineArn"], name="rollout-1",
            input=json.dumps(tracing.with_trace({"rollout_id": "r-1"})),
        )
    payload = json.loads((await _receive(aws, url))["Body"])
    assert payload["rollout_id"] == "r-1"
    with tracing.consumer_span(tracing.carrier_from_payload(payload), "task"):
        pass
    _assert_continues(spans, "task", "start rollout")
