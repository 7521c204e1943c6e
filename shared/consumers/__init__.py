"""Consuming messages: one `Message` shape from every source, one `BatchHandler` contract,
and the consumers that feed it.

Layout: the core every source shares is here (`_message`, `_errors`, `_backoff`, `_batch`:
lanes, `_delivery`: `DeliveryControl` and its one implementation `BatchProgress`,
`_handlers`: `batch_handler`); each source has a folder of the same shape (`sqs/`,
`kinesis/`, `dynamodb_streams/`, `eventbridge/`: `_wire` for its `Message` builders from the
poller's and from Lambda's shapes, `_poller` for its ECS consumer); the shard consumer core
of the two stream sources is `streams/`. Names new to this layout are exported by those
subpackages; the names below stay for existing importers.

    handler = batch_handler(handle, decode=registry.decode)   # plain async handler -> batch
    consumer = SqsConsumer(aws, queue_url, handler)            # or run it in a Lambda
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)

See docs/consumers.md for defaults and a message's life.
"""

from shared.consumers._backoff import Backoff
from shared.consumers._batch import plan_groups, released_after
from shared.consumers._delivery import BatchProgress, DeliveryControl, delivery_control
from shared.consumers._errors import ConsumerError, DeadLetter, DuplicateEvent, RetryLater
from shared.consumers._handlers import (
    EventHandler,
    HandlerContext,
    batch_handler,
    classify,
    json_body,
)
from shared.consumers._message import BatchHandler, BatchResult, Message, Outcome, SourceKind
from shared.consumers.dynamodb_streams import (
    DynamoDBStreamsConsumer,
    DynamoDBStreamSource,
    latest_stream_arn,
)
from shared.consumers.kinesis import KinesisConsumer, KinesisSource
from shared.consumers.sqs import (
    DEAD_LETTER_ATTRIBUTE,
    Action,
    DeadLetterMode,
    Disposition,
    Settlement,
    SqsConsumer,
    SqsConsumerStatistics,
    SqsSettings,
    message_from_sqs,
    settle,
    sqs_batch_item_failures,
)
from shared.consumers.streams import (
    SHARD_END,
    ExpiredIteratorError,
    InitialPosition,
    Lease,
    LeaseLostError,
    LeaseTable,
    RecordsPage,
    ShardInfo,
    ShardSource,
    StreamConsumer,
    StreamConsumerConfig,
    StreamConsumerStatistics,
    TrimmedDataError,
    create_lease_table,
    stream_batch_item_failures,
)

__all__ = [
    "DEAD_LETTER_ATTRIBUTE",
    "SHARD_END",
    "Action",
    "Backoff",
    "BatchHandler",
    "BatchProgress",
    "BatchResult",
    "ConsumerError",
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
    "SqsConsumerStatistics",
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
