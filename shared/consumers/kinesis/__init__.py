"""Kinesis Data Streams as a message source, in the same shape as its siblings
(`shared.consumers.sqs`, `shared.consumers.dynamodb_streams`):

    _wire     a `Message` from a GetRecords record and from a Lambda Kinesis record (one
              builder, two entry points)
    _poller   `KinesisSource` (the `ShardSource` over ListShards, GetShardIterator,
              GetRecords) and `KinesisConsumer`, the ECS consumer

Settling, checkpoints, leases and the failure queue are the same for both stream sources and
live in `shared.consumers.streams`.
"""

from shared.consumers.kinesis._poller import KinesisConsumer, KinesisSource
from shared.consumers.kinesis._wire import message_from_kinesis_record

__all__ = ["KinesisConsumer", "KinesisSource", "message_from_kinesis_record"]
