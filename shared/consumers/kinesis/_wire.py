"""The wire forms of Kinesis, in one place for the poller and the Lambda adapter (pure).

One builder makes every Kinesis `Message`: id and sequence = the sequence number, group_id =
the partition key, source_name = the shard id, body = the data as UTF-8 text (data that is not
UTF-8 arrives base64-encoded, with the attribute `content-transfer-encoding: base64`),
approximate_arrival = the arrival time (epoch seconds), and `raw` holding `stream`,
`shard_id`, `partition_key` and `sequence_number`. Two thin entry points read the two shapes:

- `message_from_kinesis`: a GetRecords record as wire JSON (`Data` base64, `SequenceNumber`,
  `PartitionKey`, `ApproximateArrivalTimestamp` in epoch seconds; see `shared.aws.call_decoded`),
  for the shard named by the caller.
- `message_from_kinesis_record`: a record of a Lambda Kinesis event (`kinesis.data`,
  `kinesis.sequenceNumber`, ..., the shard in `eventID` "<shard id>:<sequence>", the stream
  in `eventSourceARN`); its `raw` also keeps the record's own keys.
- `message_from_fan_out`: a record of a SubscribeToShardEvent as botocore parses it (`Data`
  bytes, `ApproximateArrivalTimestamp` a datetime), for the shard named by the caller.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from typing import Any

from shared.consumers._message import Message, SourceKind

__all__ = ["message_from_fan_out", "message_from_kinesis", "message_from_kinesis_record"]

_NO_RECORD: Mapping[str, Any] = {}


def _message(
    *,
    data: bytes,
    sequence: str,
    partition_key: str,
    shard_id: str,
    stream: str | None,
    arrival: Any,
    record: Mapping[str, Any] = _NO_RECORD,
) -> Message:
    attributes: dict[str, str] = {}
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        body = base64.b64encode(data).decode("ascii")
        attributes["content-transfer-encoding"] = "base64"
    return Message(
        id=sequence,
        body=body,
        source=SourceKind.KINESIS,
        source_name=shard_id,
        attributes=attributes,
        group_id=partition_key,
        sequence=sequence,
        approximate_arrival=float(arrival) if arrival is not None else None,
        raw={**record, "stream": stream, "shard_id": shard_id, "partition_key": partition_key,
             "sequence_number": sequence},
    )


def message_from_kinesis(record: Mapping[str, Any], *, stream: str, shard_id: str) -> Message:
    """A `Message` from one GetRecords record (wire JSON) of shard `shard_id` of `stream`
    (the stream's name or ARN as the consumer knows it)."""
    return _message(
        data=binascii.a2b_base64(record["Data"]),
        sequence=str(record["SequenceNumber"]),
        partition_key=str(record["PartitionKey"]),
        shard_id=shard_id,
        stream=stream,
        arrival=record.get("ApproximateArrivalTimestamp"),
    )


def message_from_kinesis_record(record: Mapping[str, Any]) -> Message:
    """A `Message` from one record of a Kinesis event source mapping event; the same
    `Message` the ECS consumer makes (UTF-8 body, or base64 with
    `content-transfer-encoding`)."""
    kinesis = record["kinesis"]
    return _message(
        data=binascii.a2b_base64(kinesis.get("data", "")),
        sequence=str(kinesis["sequenceNumber"]),
        partition_key=str(kinesis.get("partitionKey", "")),
        shard_id=str(record.get("eventID", "")).split(":", 1)[0],  # "<shard id>:<sequence>"
        stream=record.get("eventSourceARN"),
        arrival=kinesis.get("approximateArrivalTimestamp"),
        record=record,
    )


def message_from_fan_out(record: Mapping[str, Any], *, stream: str, shard_id: str) -> Message:
    """A `Message` from one record of a SubscribeToShardEvent as botocore parses it (`Data`
    bytes, `ApproximateArrivalTimestamp` a datetime) of shard `shard_id` of `stream`; the
    same `Message` GetRecords gives."""
    arrival = record.get("ApproximateArrivalTimestamp")
    if isinstance(arrival, datetime.datetime):
        arrival = arrival.timestamp()
    return _message(
        data=bytes(record["Data"]),
        sequence=str(record["SequenceNumber"]),
        partition_key=str(record["PartitionKey"]),
        shard_id=shard_id,
        stream=stream,
        arrival=arrival,
    )
