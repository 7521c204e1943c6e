"""DynamoDB Streams consumer: the same lease, checkpoint and failure-queue machinery as
Kinesis (`_stream.StreamConsumer`) over `DynamoDBStreamSource` (DescribeStream for shards and
parents, GetShardIterator, GetRecords on the `dynamodbstreams` API).

Each stream record becomes a `Message`: id and sequence = the record's SequenceNumber,
group_id = the item's partition key value (records of one item are in order within a shard),
approximate_arrival = ApproximateCreationDateTime (the lag figure), and body = the stream
record as JSON, shaped as Lambda delivers it (eventID, eventName, eventSource, awsRegion,
eventSourceARN, dynamodb: {Keys, NewImage, OldImage, SequenceNumber, SizeBytes,
StreamViewType, ApproximateCreationDateTime in epoch seconds}; images in DynamoDB JSON), so
one handler serves both hosts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from shared.aws import AwsClients, aws_errors, call_decoded
from shared.consumers._message import BatchHandler, Message, SourceKind
from shared.consumers._stream import (
    ExpiredIteratorError,
    InitialPosition,
    RecordsPage,
    ShardInfo,
    StreamConsumer,
    StreamConsumerConfig,
    TrimmedDataError,
)
from shared.errors import AwsRequestError, ConfigurationError
from shared.metrics import ConsumerMetrics

__all__ = ["DynamoDBStreamSource", "DynamoDBStreamsConsumer", "latest_stream_arn"]

_STREAMS_MAX_LIMIT = 1_000


async def latest_stream_arn(aws: AwsClients, table_name: str) -> str:
    """The ARN of the table's current stream.

    Raises:
        ConfigurationError: the table has no stream enabled.
    """
    ddb = await aws.client("dynamodb")
    with aws_errors():
        described = await ddb.describe_table(TableName=table_name)
    arn = described["Table"].get("LatestStreamArn")
    if not arn:
        raise ConfigurationError(f"table {table_name} has no stream; enable StreamSpecification")
    return str(arn)


def _key_text(value: Mapping[str, Any]) -> str:
    """A DynamoDB JSON key value ({"S": ...} / {"N": ...} / {"B": ...}) as text."""
    if "S" in value:
        return str(value["S"])
    if "N" in value:
        return str(value["N"])
    if "B" in value:
        return str(value["B"])  # base64 text on the wire
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class DynamoDBStreamSource:
    """The DynamoDB Streams side of the shard consumer seam, for one stream ARN."""

    def __init__(self, aws: AwsClients, stream_arn: str) -> None:
        if not stream_arn.startswith("arn:") or "/stream/" not in stream_arn:
            raise ValueError(f"stream_arn must be a DynamoDB stream ARN, got {stream_arn!r}")
        self._aws = aws
        self._arn = stream_arn
        self._hash_key: str | None = None

    @property
    def kind(self) -> SourceKind:
        return SourceKind.DYNAMODB_STREAM

    @property
    def name(self) -> str:
        return self._arn

    @property
    def default_limit(self) -> int:
        return _STREAMS_MAX_LIMIT

    async def list_shards(self) -> Sequence[ShardInfo]:
        client = await self._aws.client("dynamodbstreams")
        shards: list[ShardInfo] = []
        kwargs: dict[str, Any] = {"StreamArn": self._arn}
        while True:
            with aws_errors():
                response = await client.describe_stream(**kwargs)
            description = response["StreamDescription"]
            for key in description.get("KeySchema", []):
                if key.get("KeyType") == "HASH":
                    self._hash_key = str(key["AttributeName"])
            for shard in description.get("Shards", []):
                parent = shard.get("ParentShardId")
                shards.append(
                    ShardInfo(
                        shard_id=shard["ShardId"],
                        parent_shard_ids=(parent,) if parent else (),
                        ending_sequence=shard.get("SequenceNumberRange", {}).get(
                            "EndingSequenceNumber"
                        ),
                    )
                )
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            kwargs["ExclusiveStartShardId"] = last

    async def get_iterator(
        self, shard_id: str, *, after: str | None, initial: InitialPosition
    ) -> str:
        client = await self._aws.client("dynamodbstreams")
        kwargs: dict[str, Any] = {"StreamArn": self._arn, "ShardId": shard_id}
        if after is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
        else:
            kwargs.update(ShardIteratorType=str(initial))
        try:
            with aws_errors():
                response = await client.get_shard_iterator(**kwargs)
        except AwsRequestError as exc:
            if exc.code == "TrimmedDataAccessException":
                raise TrimmedDataError(str(exc)) from exc
            raise
        return str(response["ShardIterator"])

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        """One GetRecords call.

        Raises:
            ExpiredIteratorError: the iterator is older than 15 minutes.
            TrimmedDataError: the position is older than the 24 h retention.
            AwsUnavailableError: throttled or unavailable.
        """
        client = await self._aws.client("dynamodbstreams")
        try:
            with aws_errors():
                # The page as wire JSON, which is already the shape Lambda delivers (images
                # in DynamoDB JSON, times in epoch seconds): botocore's parser would walk
                # every attribute of every image (see shared._wire).
                response = await call_decoded(client, "GetRecords", ShardIterator=iterator,
                                              Limit=limit)
        except AwsRequestError as exc:
            if exc.code == "ExpiredIteratorException":
                raise ExpiredIteratorError(str(exc)) from exc
            if exc.code == "TrimmedDataAccessException":
                raise TrimmedDataError(str(exc)) from exc
            raise
        messages = [self._message(shard_id, record) for record in response.get("Records", [])]
        return RecordsPage(messages=messages, next_iterator=response.get("NextShardIterator"))

    def _message(self, shard_id: str, record: dict[str, Any]) -> Message:
        change = record.get("dynamodb", {})
        sequence = str(change["SequenceNumber"])
        keys: Mapping[str, Any] = change.get("Keys", {})
        if self._hash_key is not None and self._hash_key in keys:
            group = _key_text(keys[self._hash_key])
        else:
            group = "|".join(_key_text(keys[name]) for name in sorted(keys))
        record["eventSourceARN"] = self._arn
        created = change.get("ApproximateCreationDateTime")
        arrival = float(created) if isinstance(created, (int, float)) else None
        return Message(
            id=sequence,
            body=orjson.dumps(record).decode(),
            source=SourceKind.DYNAMODB_STREAM,
            source_name=shard_id,
            attributes={"eventName": str(record.get("eventName", ""))},
            group_id=group,
            sequence=sequence,
            approximate_arrival=arrival,
            raw={"stream_arn": self._arn, "shard_id": shard_id, "event_id":
                 record.get("eventID"), "event_name": record.get("eventName")},
        )


class DynamoDBStreamsConsumer(StreamConsumer):
    """Consumes a DynamoDB table's stream with shard leases (see `StreamConsumer`).
    `stream_arn` comes from the stack or from `latest_stream_arn(aws, table)`."""

    def __init__(
        self, aws: AwsClients, handler: BatchHandler, *, stream_arn: str,
        config: StreamConsumerConfig, metrics: ConsumerMetrics | None = None,
    ) -> None:
        source = DynamoDBStreamSource(aws, stream_arn)
        super().__init__(aws, handler, source, config, metrics=metrics)
