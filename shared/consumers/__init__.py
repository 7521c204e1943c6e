"""Consuming messages: one `Message` shape from every source, one `BatchHandler` contract,
and the consumers that feed it.

Layout: the core every source shares is here (`_message`, `_errors`, `_backoff`, `_batch`:
lanes, `_delivery`: `DeliveryControl` and its one implementation `BatchProgress`,
`_handlers`: `batch_handler`); each source has a folder of the same shape (`sqs/`,
`kinesis/`, `dynamodb_streams/`, `eventbridge/`: `_wire` for its `Message` builders from the
poller's and from Lambda's shapes, `_poller` for its ECS consumer); the shard consumer core
of the two stream sources is `streams/`.

This package exports what a service's handlers and workers use: the message contract, the
handler adapter and its errors, the three consumers with their settings and statistics, and
what a host hands a handler (`DeliveryControl`). What only hosts and sources need (settling,
Lambda record builders, the `ShardSource` seam, queue calls) is exported by the source's
folder: `shared.consumers.sqs`, `.kinesis`, `.dynamodb_streams`, `.eventbridge`, `.streams`.

    handler = batch_handler(handle, decode=registry.decode)   # plain async handler -> batch
    consumer = SqsConsumer(aws, queue_url, handler)            # or run it in a Lambda
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)

See docs/consumers.md for defaults and a message's life.
"""

from shared.consumers._backoff import Backoff
from shared.consumers._delivery import BatchProgress, DeliveryControl, delivery_control
from shared.consumers._errors import ConsumerError, DeadLetter, DuplicateEvent, RetryLater
from shared.consumers._handlers import EventHandler, HandlerContext, batch_handler, json_object
from shared.consumers._message import (
    BatchHandler,
    BatchResult,
    Message,
    Outcome,
    SourceKind,
    destination_name,
    message_span_attributes,
)
from shared.consumers.dynamodb_streams import DynamoDBStreamsConsumer
from shared.consumers.kinesis import KinesisConsumer
from shared.consumers.sqs import DeadLetterMode, SqsConsumer, SqsConsumerStatistics, SqsSettings
from shared.consumers.streams import (
    InitialPosition,
    StreamConsumerConfig,
    StreamConsumerStatistics,
    create_lease_table,
)

__all__ = [
    "Backoff",
    "BatchHandler",
    "BatchProgress",
    "BatchResult",
    "ConsumerError",
    "DeadLetter",
    "DeadLetterMode",
    "DeliveryControl",
    "DuplicateEvent",
    "DynamoDBStreamsConsumer",
    "EventHandler",
    "HandlerContext",
    "InitialPosition",
    "KinesisConsumer",
    "Message",
    "Outcome",
    "RetryLater",
    "SourceKind",
    "SqsConsumer",
    "SqsConsumerStatistics",
    "SqsSettings",
    "StreamConsumerConfig",
    "StreamConsumerStatistics",
    "batch_handler",
    "create_lease_table",
    "delivery_control",
    "destination_name",
    "json_object",
    "message_span_attributes",
]
