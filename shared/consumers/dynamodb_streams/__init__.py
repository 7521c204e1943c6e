"""DynamoDB Streams as a message source, in the same shape as its siblings
(`shared.consumers.sqs`, `shared.consumers.kinesis`):

    _wire     a `Message` from a GetRecords record and from a Lambda DynamoDB Streams record
              (one builder, two entry points)
    _poller   `DynamoDBStreamSource` (the `ShardSource` over DescribeStream,
              GetShardIterator, GetRecords), `DynamoDBStreamsConsumer`, the ECS consumer, and
              `latest_stream_arn`

Settling, checkpoints, leases and the failure queue are the same for both stream sources and
live in `shared.consumers.streams`.
"""

from shared.consumers.dynamodb_streams._poller import (
    DynamoDBStreamsConsumer,
    DynamoDBStreamSource,
    latest_stream_arn,
)
from shared.consumers.dynamodb_streams._wire import message_from_dynamodb_record

__all__ = [
    "DynamoDBStreamSource",
    "DynamoDBStreamsConsumer",
    "latest_stream_arn",
    "message_from_dynamodb_record",
]
