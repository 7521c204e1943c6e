"""Kinesis Data Streams consumer without a JVM: `KinesisConsumer` = the shared shard consumer
core (`_stream.StreamConsumer`: leases, rebalancing, checkpoints, failure queue) over
`KinesisSource` (ListShards, GetShardIterator, GetRecords).

Each record becomes a `Message`: id and sequence = sequence number, group_id = partition key,
body = the data as UTF-8 text (data that is not UTF-8 arrives base64-encoded with the
attribute `content-transfer-encoding: base64`), approximate_arrival = arrival time (epoch s).
Lag is Kinesis' MillisBehindLatest.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from shared.aws import AwsClients, aws_errors, call_decoded
from shared.consumers._message import BatchHandler, Message, SourceKind
from shared.consumers._stream import (
    ExpiredIteratorError,
    InitialPosition,
    RecordsPage,
    ShardInfo,
    StreamConsumer,
    StreamConsumerConfig,
)
from shared.errors import AwsRequestError
from shared.metrics import ConsumerMetrics

__all__ = ["KinesisConsumer", "KinesisSource"]

_KINESIS_MAX_LIMIT = 10_000


def _stream_kwargs(stream: str) -> dict[str, str]:
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


class KinesisSource:
    """The Kinesis side of the shard consumer seam. `stream` is a stream name or ARN."""

    def __init__(self, aws: AwsClients, stream: str) -> None:
        if not stream:
            raise ValueError("stream must name a Kinesis stream (name or ARN)")
        self._aws = aws
        self._stream = stream

    @property
    def kind(self) -> SourceKind:
        return SourceKind.KINESIS

    @property
    def name(self) -> str:
        return self._stream

    @property
    def default_limit(self) -> int:
        return _KINESIS_MAX_LIMIT

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
        kwargs: dict[str, Any] = {**_stream_kwargs(self._stream), "ShardId": shard_id}
        if after is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        else:
            kwargs.update(ShardIteratorType=str(initial))
        with aws_errors():
            response = await client.get_shard_iterator(**kwargs)
        return str(response["ShardIterator"])

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        """One GetRecords call.

        Raises:
            ExpiredIteratorError: the iterator is older than 5 minutes.
            AwsUnavailableError: throttled (ProvisionedThroughputExceeded) or unavailable.
        """
        client = await self._aws.client("kinesis")
        try:
            with aws_errors():
                # The page as wire JSON (Data base64, arrival in epoch seconds): botocore's
                # parser would walk 5 members of up to 10,000 records (see shared._wire).
                response = await call_decoded(client, "GetRecords", ShardIterator=iterator,
                                              Limit=limit)
        except AwsRequestError as exc:
            if exc.code == "ExpiredIteratorException":
                raise ExpiredIteratorError(str(exc)) from exc
            raise
        messages = [self._message(shard_id, record) for record in response.get("Records", [])]
        behind = response.get("MillisBehindLatest")
        return RecordsPage(
            messages=messages,
            next_iterator=response.get("NextShardIterator"),
            millis_behind=int(behind) if behind is not None else None,
        )

    def _message(self, shard_id: str, record: dict[str, Any]) -> Message:
        data = binascii.a2b_base64(record["Data"])
        sequence = str(record["SequenceNumber"])
        partition_key = str(record["PartitionKey"])
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
            approximate_arrival=record.get("ApproximateArrivalTimestamp"),
            raw={"stream": self._stream, "shard_id": shard_id, "partition_key": partition_key,
                 "sequence_number": sequence},
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
