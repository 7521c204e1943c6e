"""The wire forms of each source (`shared.consumers.<source>._wire`): one builder per source,
so the poller's shape and the Lambda event's shape of the same record give the same Message."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.consumers import Message, SourceKind
from shared.consumers.dynamodb_streams import message_from_dynamodb_record
from shared.consumers.dynamodb_streams._wire import message_from_dynamodb
from shared.consumers.kinesis import message_from_kinesis_record
from shared.consumers.kinesis._wire import message_from_kinesis
from shared.consumers.sqs import message_from_sqs_record
from shared.consumers.sqs._wire import (
    RedrivePolicy,
    message_from_sqs,
    parse_queue_arn,
    parse_redrive_policy,
)

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"


def same_delivery(a: Message, b: Message) -> None:
    """Everything but where the source is named (`source_name`) and `raw`."""
    fields = ("id", "body", "source", "attributes", "receive_count", "group_id", "sequence",
              "receipt", "approximate_arrival")
    assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}


def test_sqs_receive_entry_and_lambda_record_make_the_same_message() -> None:
    system = {"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000000",
              "MessageGroupId": "g", "SequenceNumber": "18", "AWSTraceHeader": TRACE}
    entry = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": '{"n":1}', "Attributes": system,
             "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "t1"},
                                   "blob": {"DataType": "Binary", "BinaryValue": b"\x00"}}}
    record = {"messageId": "m1", "receiptHandle": "r1", "body": '{"n":1}', "attributes": system,
              "messageAttributes": {"tenant": {"dataType": "String", "stringValue": "t1"},
                                    "blob": {"dataType": "Binary", "binaryValue": "AA=="}},
              "eventSource": "aws:sqs", "eventSourceARN": QUEUE_ARN}

    polled = message_from_sqs(entry, QUEUE_URL)
    delivered = message_from_sqs_record(record)

    same_delivery(polled, delivered)
    assert polled.attributes == {"tenant": "t1", "AWSTraceHeader": TRACE}
    assert (polled.receive_count, polled.group_id, polled.approximate_arrival) == (
        2, "g", 1_700_000_000.0)
    assert (polled.source_name, delivered.source_name) == (QUEUE_URL, QUEUE_ARN)
    # A DLQ copy of the Lambda delivery keeps attributes and trace header in the API shape.
    assert delivered.raw["MessageAttributes"] == {
        "tenant": {"DataType": "String", "StringValue": "t1"}}
    assert delivered.raw["Attributes"]["AWSTraceHeader"] == TRACE


def test_queue_arn_and_redrive_policy() -> None:
    assert parse_queue_arn(QUEUE_ARN) == ("123456789012", "orders")
    with pytest.raises(ValueError, match="not an SQS queue ARN"):
        parse_queue_arn("arn:aws:sqs:us-east-1")
    assert parse_redrive_policy(None) is None
    assert parse_redrive_policy("") is None
    assert parse_redrive_policy(json.dumps(
        {"deadLetterTargetArn": QUEUE_ARN + "-dlq", "maxReceiveCount": "5"})) == RedrivePolicy(
        dead_letter_target_arn=QUEUE_ARN + "-dlq", max_receive_count=5)
    assert parse_redrive_policy("{}") == RedrivePolicy(dead_letter_target_arn=None,
                                                       max_receive_count=None)


@pytest.mark.parametrize("data", [b'{"a":1}', b"\xff\xfe"])
def test_kinesis_get_records_record_and_lambda_record_make_the_same_message(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    wire = {"Data": encoded, "SequenceNumber": "4955", "PartitionKey": "dev-1",
            "ApproximateArrivalTimestamp": 1700000000.5}
    stream_arn = "arn:aws:kinesis:us-east-1:123456789012:stream/telemetry"
    record = {"kinesis": {"data": encoded, "sequenceNumber": "4955", "partitionKey": "dev-1",
                          "approximateArrivalTimestamp": 1700000000.5},
              "eventID": "shardId-000000000001:4955", "eventSourceARN": stream_arn}

    polled = message_from_kinesis(wire, stream="telemetry", shard_id="shardId-000000000001")
    delivered = message_from_kinesis_record(record)

    same_delivery(polled, delivered)
    assert polled.source is SourceKind.KINESIS
    assert polled.source_name == delivered.source_name == "shardId-000000000001"
    assert (polled.raw["stream"], delivered.raw["stream"]) == ("telemetry", stream_arn)
    for m in (polled, delivered):
        assert (m.raw["shard_id"], m.raw["partition_key"], m.raw["sequence_number"]) == (
            "shardId-000000000001", "dev-1", "4955")


def dynamodb_record(keys: dict[str, Any]) -> dict[str, Any]:
    return {"eventID": "e-1", "eventName": "MODIFY", "eventSource": "aws:dynamodb",
            "dynamodb": {"Keys": keys, "SequenceNumber": "700", "SizeBytes": 40,
                         "NewImage": {"pk": {"S": "ö-1"}}, "ApproximateCreationDateTime": 1.7e9}}


def test_dynamodb_get_records_record_and_lambda_record_make_the_same_message() -> None:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024"
    keys = {"pk": {"S": "o-1"}, "sk": {"N": "3"}}
    polled = message_from_dynamodb(dynamodb_record(keys), stream_arn=arn, shard_id="shard-0",
                                   hash_key="pk")
    delivered = message_from_dynamodb_record({**dynamodb_record(keys), "eventSourceARN": arn})

    assert json.loads(polled.body) == json.loads(delivered.body)
    assert json.loads(polled.body)["eventSourceARN"] == arn
    assert (polled.id, polled.sequence, polled.attributes) == (
        delivered.id, delivered.sequence, delivered.attributes)
    assert polled.approximate_arrival == delivered.approximate_arrival == 1.7e9
    # The poller knows the key schema (DescribeStream); a Lambda event does not.
    assert (polled.group_id, delivered.group_id) == ("o-1", "o-1|3")
    assert polled.raw == {"stream_arn": arn, "shard_id": "shard-0", "event_id": "e-1",
                          "event_name": "MODIFY"}
