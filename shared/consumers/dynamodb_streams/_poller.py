"""DynamoDB Streams consumer: the same lease, checkpoint and failure-queue machinery as
Kinesis (`shared.consumers.streams.StreamConsumer`) over `DynamoDBStreamSource`
(DescribeStream for shards, parents and the key schema, GetShardIterator, GetRecords on the
`dynamodbstreams` API). Records become `Message`s in `_wire`; lag is now minus the last
record's ApproximateCreationDateTime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from shared.aws import AwsClients, aws_errors
from shared.consumers._message import BatchHandler, SourceKind
from shared.consumers.dynamodb_streams._wire import message_from_dynamodb
from shared.consumers.streams import (
    InitialPosition,
    RecordsPage,
    ShardInfo,
    StreamConsumer,
    StreamConsumerConfig,
    read_page,
    shard_iterator,
)
from shared.errors import ConfigurationError
from shared.metrics import ConsumerMetrics

__all__ = ["DynamoDBStreamSource", "DynamoDBStreamsConsumer", "latest_stream_arn"]


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


class DynamoDBStreamSource:
    """The DynamoDB Streams side of the shard consumer seam, for one stream ARN.

    Raises ValueError when `stream_arn` is not a DynamoDB stream ARN.
    """

    kind: Final = SourceKind.DYNAMODB_STREAM
    default_limit: Final = 1_000  # records per GetRecords: the service maximum

    def __init__(self, aws: AwsClients, stream_arn: str) -> None:
        if not stream_arn.startswith("arn:") or "/stream/" not in stream_arn:
            raise ValueError(f"stream_arn must be a DynamoDB stream ARN, got {stream_arn!r}")
        self._aws = aws
        self._arn = stream_arn
        self._hash_key: str | None = None

    @property
    def name(self) -> str:
        return self._arn

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
        return await shard_iterator(client, {"StreamArn": self._arn}, shard_id, after=after,
                                    initial=initial, sequence_parameter="SequenceNumber")

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        """One GetRecords call.

        Raises:
            ExpiredIteratorError: the iterator is older than 15 minutes.
            TrimmedDataError: the position is older than the 24 h retention.
            AwsUnavailableError: throttled or unavailable.
        """
        client = await self._aws.client("dynamodbstreams")
        return await read_page(
            client, iterator, limit=limit,
            to_message=lambda record: message_from_dynamodb(
                record, stream_arn=self._arn, shard_id=shard_id, hash_key=self._hash_key),
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
