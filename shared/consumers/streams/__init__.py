"""The shard consumer core shared by the two stream sources, `shared.consumers.kinesis` and
`shared.consumers.dynamodb_streams` (docs/streams.md):

    _source           the seam to one streaming service (`ShardSource`) and its values
    _config           `StreamConsumerConfig`, `StreamConsumerStatistics`
    _consumer         `StreamConsumer`: the coordinator (shard sync, lease rounds, renewals)
    _shard            one task per held lease: read, hand to the handler, checkpoint
    _decisions        pure: settle a page, shard end, backoff, Lambda's batchItemFailures
    _failures         the failure-queue message (one document for ECS and Lambda) and its send
    _leases           the lease table (thin conditional reads and writes)
    _lease_decisions  pure: which leases to take, steal or hand off

A source folder holds what differs per service: its wire forms (a `Message` from a
GetRecords record and from a Lambda record) and its `ShardSource`, built on `read_page` and
`shard_iterator` from here. The Lambda stream adapters (`shared.hosts.lambda_`) use
`stream_batch_item_failures`, `failure_message` and `send_failure_messages`. The lease table
and its decisions are this package's own (tests of them import `_leases` and
`_lease_decisions`).
"""

from shared.consumers.streams._config import StreamConsumerConfig, StreamConsumerStatistics
from shared.consumers.streams._consumer import StreamConsumer
from shared.consumers.streams._decisions import stream_batch_item_failures
from shared.consumers.streams._failures import failure_message, send_failure_messages
from shared.consumers.streams._leases import create_lease_table
from shared.consumers.streams._source import (
    ExpiredIteratorError,
    InitialPosition,
    RecordsPage,
    ShardInfo,
    ShardSource,
    TrimmedDataError,
    read_page,
    shard_iterator,
)

__all__ = [
    "ExpiredIteratorError",
    "InitialPosition",
    "RecordsPage",
    "ShardInfo",
    "ShardSource",
    "StreamConsumer",
    "StreamConsumerConfig",
    "StreamConsumerStatistics",
    "TrimmedDataError",
    "create_lease_table",
    "failure_message",
    "read_page",
    "send_failure_messages",
    "shard_iterator",
    "stream_batch_item_failures",
]
