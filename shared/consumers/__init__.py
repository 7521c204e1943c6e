"""Consuming messages: one `Message` shape from every source, one `BatchHandler` contract,
and the consumers that feed it.

    handler = batch_handler(handle, decode=registry.decode)   # plain async handler -> batch
    consumer = SqsConsumer(aws, queue_url, handler)            # or run it in a Lambda
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)

See docs/consumers.md for defaults and a message's life.
"""

from shared.consumers._backoff import Backoff
from shared.consumers._batch import (
    Action,
    Disposition,
    Settlement,
    plan_groups,
    released_after,
    settle,
    sqs_batch_item_failures,
    stream_batch_item_failures,
)
from shared.consumers._errors import ConsumerError, DeadLetter, DuplicateEvent, RetryLater
from shared.consumers._handlers import (
    DeliveryControl,
    EventHandler,
    HandlerContext,
    batch_handler,
    classify,
    delivery_control,
    json_body,
)
from shared.consumers._lease_decisions import SHARD_END, Lease
from shared.consumers._leases import LeaseLostError, LeaseTable, create_lease_table
from shared.consumers._message import BatchHandler, BatchResult, Message, Outcome, SourceKind
from shared.consumers._sqs import (
    DEAD_LETTER_ATTRIBUTE,
    ConsumerStatistics,
    DeadLetterMode,
    SqsConsumer,
    SqsSettings,
    message_from_sqs,
)
from shared.consumers._stream import (
    ExpiredIteratorError,
    InitialPosition,
    RecordsPage,
    ShardInfo,
    ShardSource,
    StreamConsumer,
    StreamConsumerConfig,
    StreamConsumerStatistics,
    TrimmedDataError,
)
from shared.consumers.dynamodb_streams import (
    DynamoDBStreamsConsumer,
    DynamoDBStreamSource,
    latest_stream_arn,
)
from shared.consumers.kinesis import KinesisConsumer, KinesisSource

__all__ = [
    "DEAD_LETTER_ATTRIBUTE",
    "SHARD_END",
    "Action",
    "Backoff",
    "BatchHandler",
    "BatchResult",
    "ConsumerError",
    "ConsumerStatistics",
    "DeadLetter",
    "DeadLetterMode",
    "DeliveryControl",
    "Disposition",
    "DuplicateEvent",
    "DynamoDBStreamSource",
    "DynamoDBStreamsConsumer",
    "EventHandler",
    "ExpiredIteratorError",
    "HandlerContext",
    "InitialPosition",
    "KinesisConsumer",
    "KinesisSource",
    "Lease",
    "LeaseLostError",
    "LeaseTable",
    "Message",
    "Outcome",
    "RecordsPage",
    "RetryLater",
    "Settlement",
    "ShardInfo",
    "ShardSource",
    "SourceKind",
    "SqsConsumer",
    "SqsSettings",
    "StreamConsumer",
    "StreamConsumerConfig",
    "StreamConsumerStatistics",
    "TrimmedDataError",
    "batch_handler",
    "classify",
    "create_lease_table",
    "delivery_control",
    "json_body",
    "latest_stream_arn",
    "message_from_sqs",
    "plan_groups",
    "released_after",
    "settle",
    "sqs_batch_item_failures",
    "stream_batch_item_failures",
]
