"""Lambda events built from the runtime's Messages, and Lambda's reading of the answer."""

import base64
import json

from shared.consumers._message import Message, Outcome, SourceKind
from shared.local._lambda import (
    dynamodb_stream_event,
    kinesis_event,
    outcomes_from_response,
    sqs_event,
)

QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:q"


def _sqs(i: int) -> Message:
    return Message(
        id=f"m{i}",
        body=f"b{i}",
        source=SourceKind.SQS,
        source_name="url",
        receipt=f"r{i}",
        raw={
            "MessageId": f"m{i}",
            "ReceiptHandle": f"r{i}",
            "Body": f"b{i}",
            "MD5OfBody": "x",
            "Attributes": {"ApproximateReceiveCount": "1"},
            "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}},
        },
    )


def test_sqs_event_records() -> None:
    (record,) = sqs_event([_sqs(1)], QUEUE_ARN)["Records"]
    assert record["messageId"] == "m1"
    assert record["receiptHandle"] == "r1"
    assert record["body"] == "b1"
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == QUEUE_ARN
    assert record["awsRegion"] == "eu-west-1"
    assert record["messageAttributes"]["k"]["stringValue"] == "v"
    assert record["attributes"] == {"ApproximateReceiveCount": "1"}


def test_kinesis_event_encodes_data_and_ids() -> None:
    message = Message(
        id="7",
        body='{"a":1}',
        source=SourceKind.KINESIS,
        source_name="shardId-000",
        group_id="dev-1",
        sequence="7",
        raw={"shard_id": "shardId-000", "partition_key": "dev-1"},
    )
    (record,) = kinesis_event([message], "arn:aws:kinesis:us-east-1:1:stream/t")["Records"]
    assert base64.b64decode(record["kinesis"]["data"]) == b'{"a":1}'
    assert record["kinesis"]["partitionKey"] == "dev-1"
    assert record["eventID"] == "shardId-000:7"


def test_dynamodb_event_from_the_consumer_document() -> None:
    document = {
        "eventID": "e",
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": {"pk": {"S": "1"}},
            "SequenceNumber": "9",
            "NewImage": {"pk": {"S": "1"}},
        },
    }
    message = Message(
        id="9",
        body=json.dumps(document),
        source=SourceKind.DYNAMODB_STREAM,
        source_name="shard",
        sequence="9",
    )
    (record,) = dynamodb_stream_event([message], "arn:s")["Records"]
    assert record["eventName"] == "MODIFY"
    assert record["dynamodb"]["NewImage"] == {"pk": {"S": "1"}}
    assert record["eventSourceARN"] == "arn:s"


def test_batch_item_failures_become_retries() -> None:
    messages = [_sqs(1), _sqs(2)]
    result = outcomes_from_response(
        messages,
        {"batchItemFailures": [{"itemIdentifier": "m2"}]},
        report_batch_item_failures=True,
    )
    assert result.outcomes == {"m1": Outcome.SUCCEEDED, "m2": Outcome.RETRY}
    # Without ReportBatchItemFailures a returned list means nothing, as on AWS.
    ignored = outcomes_from_response(
        messages,
        {"batchItemFailures": [{"itemIdentifier": "m2"}]},
        report_batch_item_failures=False,
    )
    assert set(ignored.outcomes.values()) == {Outcome.SUCCEEDED}
    malformed = outcomes_from_response(
        messages, {"batchItemFailures": [{}]}, report_batch_item_failures=True
    )
    assert set(malformed.outcomes.values()) == {Outcome.RETRY}
