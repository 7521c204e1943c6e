"""The transactional outbox: a unit of work that commits state, events and processed ids
atomically, the relay that publishes the events from the table's stream, and the batch
committer that applies a whole batch of messages with one commit.

    UnitOfWork        load aggregates, stage state + events, commit (one conditional write or
                      one TransactWriteItems <= 100 operations)
    BatchCommitter    a BatchHandler: decide per message (pure), commit per batch (one
                      conditional write per aggregate, 25 to a request), map to Outcomes
    item_put / item_statement
                      the aggregate item's write, the one writer of the item format
                      (also used by stores that encode their state themselves)
    Relay             a BatchHandler over DynamoDB stream records: PutEvents, order per
                      aggregate, partial-failure retry, original ids (`send=`: the PutEvents
                      seam, `SendEntries`; `shared.testing.MemoryEventBus` in tests)
    added_events      the events one stream record's write added (also used by `pipe.handler`)

The pure steps behind these (batch planning, verdicts, the publisher's batching) stay in the
private modules; their tests import them there. See docs/outbox.md. Errors: see
`shared.outbox._errors` (the tree is in its docstring).
"""

from shared.outbox._batch import BatchCommitter, BatchConfig, WriteMode
from shared.outbox._errors import (
    AlreadyProcessedError,
    ConcurrencyConflictError,
    OutboxError,
    PublishError,
    StreamRecordError,
    TransactionTooLargeError,
    UnpublishableEventError,
)
from shared.outbox._item import (
    ItemWrite,
    aggregate_from_item,
    build_write,
    item_put,
    item_statement,
)
from shared.outbox._model import (
    Aggregate,
    Decision,
    Emitted,
    EventDraft,
    ItemRef,
    OutboxConfig,
    StagedWrite,
)
from shared.outbox._publisher import PublisherConfig, SendEntries
from shared.outbox._relay import Relay, added_events
from shared.outbox._unit_of_work import (
    UnitOfWork,
    WriteVerdict,
    cancellation_verdicts,
    plan_transaction,
    stage,
)

__all__ = [
    "Aggregate",
    "AlreadyProcessedError",
    "BatchCommitter",
    "BatchConfig",
    "ConcurrencyConflictError",
    "Decision",
    "Emitted",
    "EventDraft",
    "ItemRef",
    "ItemWrite",
    "OutboxConfig",
    "OutboxError",
    "PublishError",
    "PublisherConfig",
    "Relay",
    "SendEntries",
    "StagedWrite",
    "StreamRecordError",
    "TransactionTooLargeError",
    "UnitOfWork",
    "UnpublishableEventError",
    "WriteMode",
    "WriteVerdict",
    "added_events",
    "aggregate_from_item",
    "build_write",
    "cancellation_verdicts",
    "item_put",
    "item_statement",
    "plan_transaction",
    "stage",
]
