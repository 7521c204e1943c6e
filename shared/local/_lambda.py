"""Calling a Lambda handler locally, unchanged: its `Handler` string, a context object like
the runtime's, and the events Lambda builds for event source mappings (pure builders)."""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread

from shared.consumers import BatchResult, Message, Outcome
from shared.errors import ConfigurationError

__all__ = [
    "LambdaContext",
    "dynamodb_stream_event",
    "invoke",
    "kinesis_event",
    "load_handler",
    "outcomes_from_response",
    "sqs_event",
]

Handler = Callable[[Any, Any], Any]


def load_handler(handler: str) -> Handler:
    """`services.orders.api.handler` -> the function. Raises ConfigurationError."""
    module_name, _, attribute = handler.rpartition(".")
    if not module_name:
        raise ConfigurationError(f"Handler {handler!r} must be module.function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"Handler {handler!r}: cannot import {module_name}: {exc}"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigurationError(f"Handler {handler!r}: {module_name} has no function {attribute}")
    return function  # type: ignore[no-any-return]


@dataclass
class LambdaContext:
    """The attributes and method handlers read from the runtime's context object."""

    function_name: str
    timeout_s: float = 3.0
    region: str = "us-east-1"
    account: str = "123456789012"
    memory_limit_in_mb: int = 128
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


async def invoke(handler: Handler, event: Any, context: LambdaContext) -> Any:
    """Call the handler as the runtime would. A synchronous handler runs in a worker thread
    (it may call `asyncio.run` itself, as Lambda adapters do); an async one is awaited.
    Raises TimeoutError after the function's timeout, like a timed-out invocation."""
    with anyio.fail_after(context.timeout_s):
        if inspect.iscoroutinefunction(handler):
            return await handler(event, context)
        return await anyio.to_thread.run_sync(handler, event, context, abandon_on_cancel=True)


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def _arn_region(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else "us-east-1"


def sqs_event(messages: Sequence[Message], queue_arn: str) -> dict[str, Any]:
    """The event Lambda builds from an SQS receive (`Message.raw` = the ReceiveMessage item)."""
    records = []
    for message in messages:
        raw = message.raw
        records.append(
            {
                "messageId": message.id,
                "receiptHandle": message.receipt or raw.get("ReceiptHandle", ""),
                "body": message.body,
                "attributes": dict(raw.get("Attributes", {})),
                "messageAttributes": {
                    name: {
                        "stringValue": attr.get("StringValue"),
                        "binaryValue": attr.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": attr.get("DataType", "String"),
                    }
                    for name, attr in dict(raw.get("MessageAttributes", {})).items()
                },
                "md5OfBody": raw.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": _arn_region(queue_arn),
            }
        )
    return {"Records": records}


def kinesis_event(messages: Sequence[Message], stream_arn: str) -> dict[str, Any]:
    """The event Lambda builds from Kinesis records. The record's data is `Message.body`
    (base64 already when the `content-transfer-encoding` attribute says so), or `raw["Data"]`."""
    records = []
    for message in messages:
        raw = message.raw
        data = raw.get("Data")
        if isinstance(data, bytes | bytearray):
            encoded = base64.b64encode(bytes(data)).decode()
        elif message.attributes.get("content-transfer-encoding") == "base64":
            encoded = message.body
        else:
            encoded = base64.b64encode(message.body.encode()).decode()
        arrival = _epoch(raw.get("ApproximateArrivalTimestamp")) or message.approximate_arrival
        shard = str(raw.get("shard_id") or message.source_name).rsplit("/", 1)[-1]
        sequence = message.sequence or message.id
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": raw.get("PartitionKey")
                    or raw.get("partition_key")
                    or message.group_id
                    or "",
                    "sequenceNumber": sequence,
                    "data": encoded,
                    "approximateArrivalTimestamp": arrival or time.time(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard}:{sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "",
                "awsRegion": _arn_region(stream_arn),
                "eventSourceARN": stream_arn,
            }
        )
    return {"Records": records}


def dynamodb_stream_event(messages: Sequence[Message], stream_arn: str) -> dict[str, Any]:
    """The event Lambda builds from DynamoDB stream records. The record is `raw` when it
    holds `dynamodb`, else the JSON document in `Message.body` (the consumer's form)."""
    records = []
    for message in messages:
        raw: dict[str, Any] = dict(message.raw)
        if "dynamodb" not in raw:
            try:
                parsed = json.loads(message.body)
            except json.JSONDecodeError:
                parsed = {}
            raw = parsed if isinstance(parsed, dict) else {}
        dynamodb = dict(raw.get("dynamodb", {}))
        created = _epoch(dynamodb.get("ApproximateCreationDateTime"))
        if created is not None:
            dynamodb["ApproximateCreationDateTime"] = created
        dynamodb.setdefault("SequenceNumber", message.sequence or message.id)
        records.append(
            {
                "eventID": raw.get("eventID", message.id),
                "eventName": raw.get("eventName", message.attributes.get("eventName", "INSERT")),
                "eventVersion": raw.get("eventVersion", "1.1"),
                "eventSource": "aws:dynamodb",
                "awsRegion": raw.get("awsRegion", _arn_region(stream_arn)),
                "dynamodb": dynamodb,
                "eventSourceARN": stream_arn,
            }
        )
    return {"Records": records}


def outcomes_from_response(
    messages: Sequence[Message],
    response: Any,
    *,
    report_batch_item_failures: bool,
) -> BatchResult:
    """Lambda's reading of a handler's answer: listed `batchItemFailures` are retried (only
    when the mapping has ReportBatchItemFailures), everything else succeeded. A malformed
    answer fails the whole batch, as it does on AWS."""
    if not report_batch_item_failures:
        return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})
    failures: set[str] = set()
    if isinstance(response, Mapping) and response.get("batchItemFailures") is not None:
        items = response["batchItemFailures"]
        if not isinstance(items, list) or not all(
            isinstance(i, Mapping) and i.get("itemIdentifier") for i in items
        ):
            return _all_retry(messages, "malformed batchItemFailures")
        failures = {str(i["itemIdentifier"]) for i in items}
    reason = "reported in batchItemFailures"
    return BatchResult(
        {m.id: Outcome.RETRY if m.id in failures else Outcome.SUCCEEDED for m in messages},
        {m.id: reason for m in messages if m.id in failures},
    )


def _all_retry(messages: Sequence[Message], reason: str) -> BatchResult:
    return BatchResult({m.id: Outcome.RETRY for m in messages}, {m.id: reason for m in messages})
