"""The wire forms of DynamoDB Streams, in one place for the poller and the Lambda adapter.

One builder makes every DynamoDB Streams `Message`: id and sequence = the record's
SequenceNumber, group_id = the item's partition key value (records of one item are in order
within a shard), approximate_arrival = ApproximateCreationDateTime (the lag figure),
attribute `eventName`, and body = the stream record as JSON, shaped as Lambda delivers it
(eventID, eventName, eventSource, awsRegion, eventSourceARN, dynamodb: {Keys, NewImage,
OldImage, SequenceNumber, SizeBytes, StreamViewType, ApproximateCreationDateTime in epoch
seconds}; images in DynamoDB JSON), so one handler serves both hosts. Two thin entry points:

- `message_from_dynamodb`: a GetRecords record as wire JSON (already Lambda's shape but for
  `eventSourceARN`, which it adds), for the shard named by the caller. The table's hash key
  (from DescribeStream) picks the group; `raw` holds `stream_arn`, `shard_id`, `event_id`,
  `event_name`.
- `message_from_dynamodb_record`: a record of a Lambda DynamoDB Streams event. An event
  names neither the table's key schema nor the shard: the group is every key value joined
  with "|" (the partition key alone on a table without a sort key), source_name is the
  record's `eventID` (its part before a ":"), else the stream ARN; `raw` is the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from shared.consumers._message import Message, SourceKind

__all__ = ["message_from_dynamodb", "message_from_dynamodb_record"]


def _key_text(value: Mapping[str, Any]) -> str:
    """A DynamoDB JSON key value ({"S": ...} / {"N": ...} / {"B": ...}) as text."""
    if "S" in value:
        return str(value["S"])
    if "N" in value:
        return str(value["N"])
    if "B" in value:
        return str(value["B"])  # base64 text on the wire
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _group(keys: Mapping[str, Any], hash_key: str | None) -> str | None:
    if hash_key is not None and hash_key in keys:
        return _key_text(keys[hash_key])
    return "|".join(_key_text(keys[name]) for name in sorted(keys)) or None


def _message(
    record: Mapping[str, Any], *, source_name: str, hash_key: str | None,
    raw: Mapping[str, Any],
) -> Message:
    change = record.get("dynamodb") or {}
    sequence = str(change["SequenceNumber"])
    created = change.get("ApproximateCreationDateTime")
    return Message(
        id=sequence,
        body=orjson.dumps(record, default=str).decode(),
        source=SourceKind.DYNAMODB_STREAM,
        source_name=source_name,
        attributes={"eventName": str(record.get("eventName", ""))},
        group_id=_group(change.get("Keys") or {}, hash_key),
        sequence=sequence,
        approximate_arrival=float(created) if isinstance(created, (int, float)) else None,
        raw=raw,
    )


def message_from_dynamodb(
    record: dict[str, Any], *, stream_arn: str, shard_id: str, hash_key: str | None
) -> Message:
    """A `Message` from one GetRecords record (wire JSON) of shard `shard_id`; sets the
    record's `eventSourceARN` to `stream_arn` (the record is the body, as in Lambda)."""
    record["eventSourceARN"] = stream_arn
    return _message(
        record, source_name=shard_id, hash_key=hash_key,
        raw={"stream_arn": stream_arn, "shard_id": shard_id, "event_id": record.get("eventID"),
             "event_name": record.get("eventName")},
    )


def message_from_dynamodb_record(record: Mapping[str, Any]) -> Message:
    """A `Message` from one record of a DynamoDB Streams event source mapping event; the
    body is the record as JSON, as the ECS DynamoDB Streams consumer makes it."""
    source_name = str(record.get("eventID", "")).split(":", 1)[0]
    return _message(
        record, source_name=source_name or str(record.get("eventSourceARN", "")),
        hash_key=None, raw=record,
    )
