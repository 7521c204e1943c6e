"""Gap: Kinesis SubscribeToShard (enhanced fan-out), which the dashboard reads readings with.

moto registers stream consumers (always ACTIVE) but answers SubscribeToShard with HTTP 500
NotImplemented. Here the action streams what AWS streams, over HTTP/1.1 as botocore reads
it: an `application/vnd.amazon.eventstream` body whose first message is the
`initial-response` and then `SubscribeToShardEvent`s, each with the shard's new records
(wire JSON: data base64, arrival in epoch seconds), `ContinuationSequenceNumber` and
`MillisBehindLatest`. Records are pushed as they arrive (the shard is looked at every
`POLL_SECONDS`); an event is sent at least every `HEARTBEAT_SECONDS` even without records,
as AWS does, which is also how a subscription whose client went away ends (the write
fails and the server closes it). A subscription ends after `FLEETLINE_EMULATOR_SUBSCRIPTION_SECONDS`
(default 300, AWS's five minutes; the client subscribes again from the continuation), or
at the end of a closed shard with its `ChildShards`. Starting positions: LATEST,
TRIM_HORIZON, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP. An unknown consumer
or shard answers ResourceNotFoundException. Not modelled: the 2 MB/s per shard limit, and
ResourceInUseException for a second subscription of one consumer to one shard.

Records are read through moto's own `Shard.get_records` (with or without the
`kinesis-reads` speed fix); a put from another thread while a read walks the shard is
retried at the next look.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from shared.emulator._fixes import Fix, FixKind

__all__ = ["FIX", "HEARTBEAT_SECONDS", "PAGE_RECORDS", "POLL_SECONDS", "SUBSCRIPTION_ENV", "apply",
           "event_message", "record_json", "start_after", "subscription"]

POLL_SECONDS: Final = 0.02
HEARTBEAT_SECONDS: Final = 1.0
SUBSCRIPTION_ENV: Final = "FLEETLINE_EMULATOR_SUBSCRIPTION_SECONDS"
PAGE_RECORDS: Final = 1_000
_MARKER: Final = "_fleetline_fan_out"


# --------------------------------------------------------------------------- the wire (pure)


def _header(name: str, value: str) -> bytes:
    key, text = name.encode(), value.encode()
    return struct.pack("!B", len(key)) + key + struct.pack("!BH", 7, len(text)) + text


def event_message(event_type: str, payload: bytes) -> bytes:
    """One event-stream message (prelude, CRCs, string headers) of `event_type`."""
    headers = b"".join(_header(k, v) for k, v in (
        (":event-type", event_type), (":message-type", "event"),
        (":content-type", "application/json")))
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(headers))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack("!I", binascii.crc32(message))


def _epoch(value: Any) -> float:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value)


def record_json(record: Any) -> dict[str, Any]:
    """A moto record in the wire form of a SubscribeToShardEvent (moto 5.2.5 keeps data as
    base64 text, 5.2.6 as bytes)."""
    data = record.data
    encoded = base64.b64encode(data).decode() if isinstance(data, bytes) else str(data)
    return {"SequenceNumber": str(record.sequence_number),
            "ApproximateArrivalTimestamp": round(_epoch(record.created_at), 3),
            "Data": encoded, "PartitionKey": record.partition_key}


def start_after(shard: Any, position: Mapping[str, Any]) -> int:
    """The sequence number after which a subscription starting at `position` reads.

    Raises ValueError naming the field when `position` is not one of the five types."""
    kind = position.get("Type")
    if kind == "LATEST":
        return int(shard.get_max_sequence_number())
    if kind == "TRIM_HORIZON":
        return 0
    if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
        number = int(str(position.get("SequenceNumber", "")))
        return number - 1 if kind == "AT_SEQUENCE_NUMBER" else number
    if kind == "AT_TIMESTAMP":
        at = position.get("Timestamp")
        stamp = at if isinstance(at, datetime.datetime) else datetime.datetime.fromtimestamp(
            float(at), tz=datetime.UTC)  # type: ignore[arg-type]
        return int(shard.get_sequence_number_at(stamp))
    raise ValueError(f"StartingPosition.Type must be LATEST, TRIM_HORIZON, AT_SEQUENCE_NUMBER, "
                     f"AFTER_SEQUENCE_NUMBER or AT_TIMESTAMP, got {kind!r}")


def _child_shards(stream: Any, shard_id: str) -> list[dict[str, Any]]:
    children = []
    for child in stream.shards.values():
        parents = [p for p in (child.parent, child.adjacent_parent) if p]
        if shard_id in parents:
            children.append({"ShardId": child.shard_id, "ParentShards": parents,
                             "HashKeyRange": {"StartingHashKey": str(child.starting_hash),
                                              "EndingHashKey": str(child.ending_hash)}})
    return children


def subscription(stream: Any, shard: Any, after: int, *, seconds: float) -> Iterator[bytes]:
    """The event stream of one subscription: the initial response, then the shard's
    records after `after` as they arrive, for `seconds` or until the shard's end."""
    yield event_message("initial-response", b"{}")
    deadline = time.monotonic() + seconds
    last_sent = 0.0
    while True:
        try:
            records, last, behind = shard.get_records(str(after), PAGE_RECORDS)
        except RuntimeError:  # a put changed the shard while moto walked it: look again
            records, last, behind = [], after, 0
        ended = not shard.is_open and int(shard.get_max_sequence_number()) <= last
        now = time.monotonic()
        if records or ended or now - last_sent >= HEARTBEAT_SECONDS:
            event: dict[str, Any] = {
                "Records": [record_json(r) for r in records],
                "ContinuationSequenceNumber": str(last),
                "MillisBehindLatest": int(behind),
            }
            if ended:
                event["ChildShards"] = _child_shards(stream, shard.shard_id)
            yield event_message("SubscribeToShardEvent", json.dumps(event).encode())
            last_sent, after = now, last
            if ended:
                return
        if now >= deadline:
            return
        if not records:
            time.sleep(POLL_SECONDS)


def _error(kind: str, message: str) -> tuple[int, dict[str, str], str]:
    return 400, {"status": "400", "Content-Type": "application/x-amz-json-1.1"}, json.dumps(
        {"__type": kind, "message": message})


def apply() -> None:
    from moto.kinesis.responses import KinesisResponse

    if getattr(getattr(KinesisResponse, "subscribe_to_shard", None), _MARKER, False):
        return

    def subscribe_to_shard(self: Any) -> Any:
        consumer_arn = str(self._get_param("ConsumerARN") or "")
        shard_id = str(self._get_param("ShardId") or "")
        backend = self.kinesis_backend
        stream = next((s for s in list(backend.streams.values())
                       if s.get_consumer_by_arn(consumer_arn) is not None), None)
        if stream is None:
            return _error("ResourceNotFoundException", f"Consumer {consumer_arn} not found")
        shard = stream.shards.get(shard_id)
        if shard is None:
            return _error("ResourceNotFoundException",
                          f"Shard {shard_id} in stream {stream.stream_name} not found")
        try:
            after = start_after(shard, self._get_param("StartingPosition") or {})
        except (TypeError, ValueError) as exc:
            return _error("InvalidArgumentException", str(exc))
        seconds = float(os.environ.get(SUBSCRIPTION_ENV) or 300)
        return 200, {"Content-Type": "application/vnd.amazon.eventstream"}, subscription(
            stream, shard, after, seconds=seconds)

    setattr(subscribe_to_shard, _MARKER, True)
    KinesisResponse.subscribe_to_shard = subscribe_to_shard  # type: ignore[attr-defined]


FIX = Fix(
    name="kinesis-fan-out",
    kind=FixKind.GAP,
    summary="Kinesis SubscribeToShard streams a shard's records to a registered consumer",
    checks=(
        "moto.kinesis.responses:KinesisResponse.kinesis_backend",
        "moto.kinesis.models:Stream.get_consumer_by_arn",
        "moto.kinesis.models:Shard.get_records",
        "moto.kinesis.models:Shard.get_max_sequence_number",
        "moto.kinesis.models:Shard.get_sequence_number_at",
        "moto.kinesis.models:Record.__init__",
        "moto.kinesis.models:Consumer.to_json",
        "moto.core.responses:BaseResponse.call_action",
        "moto.core.utils:convert_to_flask_response.__call__",
    ),
    verified={"5.2.6": "4f190a015026ca79"},
    apply=apply,
)
