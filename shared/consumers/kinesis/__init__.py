"""Kinesis Data Streams as a message source, in the same shape as its siblings
(`shared.consumers.sqs`, `shared.consumers.dynamodb_streams`):

    _wire     a `Message` from a GetRecords record, from a Lambda Kinesis record and from a
              SubscribeToShard event's record (one builder, three entry points)
    _poller   `KinesisSource` (the `ShardSource` over ListShards, GetShardIterator,
              GetRecords) and `KinesisConsumer`, the ECS consumer
    _fanout   `KinesisFanOut`: every record of every shard, pushed through an enhanced
              fan-out consumer of the process's own (`fan_out_consumer`), for a broadcast
              reader with a disposable view: no leases, no checkpoints, from LATEST

Settling, checkpoints, leases and the failure queue are the same for both stream sources and
live in `shared.consumers.streams`.
"""

from shared.consumers.kinesis._fanout import (
    FanOutConsumer,
    FanOutSettings,
    FanOutStatistics,
    KinesisFanOut,
    deregister_fan_out_consumer,
    fan_out_consumer,
    list_fan_out_consumers,
    stream_arn,
)
from shared.consumers.kinesis._poller import KinesisConsumer, KinesisSource
from shared.consumers.kinesis._wire import message_from_kinesis_record

__all__ = [
    "FanOutConsumer",
    "FanOutSettings",
    "FanOutStatistics",
    "KinesisConsumer",
    "KinesisFanOut",
    "KinesisSource",
    "deregister_fan_out_consumer",
    "fan_out_consumer",
    "list_fan_out_consumers",
    "message_from_kinesis_record",
    "stream_arn",
]
