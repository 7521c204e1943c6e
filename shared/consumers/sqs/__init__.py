"""SQS as a message source, in one folder with the same shape as its siblings
(`shared.consumers.kinesis`, `shared.consumers.dynamodb_streams`):

    _wire       the wire forms: a `Message` from a ReceiveMessage entry and from a Lambda SQS
                record (one builder), a queue ARN, the RedrivePolicy, a DLQ entry (pure)
    _settle     the decisions: `settle`, `sqs_batch_item_failures`, `due_for_extension` (pure)
    _queue      the thin calls both hosts make: `queue_url` (the one ARN/name -> URL
                resolver), `describe_queue`, `send_dead_letters`, `change_visibility`
    _poller     `SqsConsumer`, the long-polling consumer an ECS worker runs (with
                `_settings` and its `_deletes` buffer)

The Lambda adapter (`shared.hosts.lambda_.sqs_handler`) uses `message_from_sqs_record`,
`describe_queue`, `settle` and the calls above; the ECS worker (`shared.hosts.SqsQueue`) and
the local runner's event source mappings use `queue_url` and `SqsConsumer`.

The SQS trace carriers (`sqs_trace_attributes`, `carrier_from_sqs`) stay in
`shared.tracing`: producers that never consume (the outbox, services sending to a queue)
use them, `tracing` imports nothing of `shared`, and `batch_handler` (consumers' core) imports
`tracing`; moving them here would make `tracing` import `consumers` and close a cycle.
"""

from shared.consumers.sqs._poller import SqsConsumer
from shared.consumers.sqs._queue import (
    QueueDescription,
    change_visibility,
    describe_queue,
    queue_url,
    send_dead_letters,
)
from shared.consumers.sqs._settings import DeadLetterMode, SqsConsumerStatistics, SqsSettings
from shared.consumers.sqs._settle import (
    Action,
    Disposition,
    Settlement,
    settle,
    sqs_batch_item_failures,
)
from shared.consumers.sqs._wire import DEAD_LETTER_ATTRIBUTE, message_from_sqs_record

__all__ = [
    "DEAD_LETTER_ATTRIBUTE",
    "Action",
    "DeadLetterMode",
    "Disposition",
    "QueueDescription",
    "Settlement",
    "SqsConsumer",
    "SqsConsumerStatistics",
    "SqsSettings",
    "change_visibility",
    "describe_queue",
    "message_from_sqs_record",
    "queue_url",
    "send_dead_letters",
    "settle",
    "sqs_batch_item_failures",
]
