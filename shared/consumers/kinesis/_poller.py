"""Kinesis Data Streams consumer without a JVM: `KinesisConsumer` = the shard consumer core
(`shared.consumers.streams.StreamConsumer`: leases, rebalancing, checkpoints, failure queue)
over `KinesisSource` (ListShards, GetShardIterator, GetRecords). Records become `Message`s in
`_wire`; lag is Kinesis' MillisBehindLatest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from shared.aws import AwsClients, aws_errors
from shared.consumers._message import BatchHandler, SourceKind
from shared.consumers.kinesis._wire import message_from_kinesis
from shared.consumers.streams import (
    InitialPosition,
    RecordsPage,
    ShardInfo,
    StreamConsumer,
    StreamConsumerConfig,
    read_page,
    shard_iterator,
)
from shared.metrics import ConsumerMetrics

__all__ = ["KinesisConsumer", "KinesisSource"]


def _stream_kwargs(stream: str) -> dict[str, str]:
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


class KinesisSource:
    """The Kinesis side of the shard consumer seam. `stream` is a stream name or ARN.

    Raises ValueError when `stream` is empty.
    """

    kind: Final = SourceKind.KINESIS
    default_limit: Final = 10_000  # records per GetRecords: the service maximum

    def __init__(self, aws: AwsClients, stream: str) -> None:
        if not stream:
            raise ValueError("stream must name a Kinesis stream (name or ARN)")
        self._aws = aws
        self._stream = stream

    @property
    def name(self) -> str:
        return self._stream

    async def list_shards(self) -> Sequence[ShardInfo]:
        """Every shard the stream retains, open and closed, with parents."""
        client = await self._aws.client("kinesis")
        shards: list[ShardInfo] = []
        kwargs: dict[str, Any] = dict(_stream_kwargs(self._stream))
        while True:
            with aws_errors():
                page = await client.list_shards(**kwargs)
            for shard in page.get("Shards", []):
                parents = tuple(
                    p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                    if p
                )
                ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
                shards.append(
                    ShardInfo(shard_id=shard["ShardId"], parent_shard_ids=parents,
                              ending_sequence=ending)
                )
            token = page.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}  # ListShards refuses the stream name with a token

    async def get_iterator(
        self, shard_id: str, *, after: str | None, initial: InitialPosition
    ) -> str:
        client = await self._aws.client("kinesis")
        return await shard_iterator(client, _stream_kwargs(self._stream), shard_id, after=after,
                                    initial=initial, sequence_parameter="StartingSequenceNumber")

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        """One GetRecords call.

        Raises:
            ExpiredIteratorError: the iterator is older than 5 minutes.
            AwsUnavailableError: throttled (ProvisionedThroughputExceeded) or unavailable.
        """
        client = await self._aws.client("kinesis")
        return await read_page(
            client, iterator, limit=limit,
            to_message=lambda record: message_from_kinesis(
                record, stream=self._stream, shard_id=shard_id),
        )


class KinesisConsumer(StreamConsumer):
    """Consumes a Kinesis stream with DynamoDB shard leases (see `StreamConsumer`).

        consumer = KinesisConsumer(aws, handler, stream="telemetry",
                                   config=StreamConsumerConfig(lease_table=..., application=...))
    """

    def __init__(
        self, aws: AwsClients, handler: BatchHandler, *, stream: str,
        config: StreamConsumerConfig, metrics: ConsumerMetrics | None = None,
    ) -> None:
        super().__init__(aws, handler, KinesisSource(aws, stream), config, metrics=metrics)
