"""Operating the stack: dead letters, replays and the stack's layout for both.

- `DeadLetterQueues`: list, peek at, redrive and purge the stack's DLQs (`fleetline dlq`);
  `dead_letter_sources(template)` says what dead-letters where; `error_class(reason)`.
- `check_window`, `start_replay`, `wait_replay`: replay an archive window onto its bus
  (`fleetline replay`); `bus_archives`, `rules_for_type` find the archive and the rules.
- `stack_queues`: every queue of a deployed stack, by logical id, as URLs at the endpoint.

Errors: `UnknownQueueError` (not a DLQ of the stack), `ReplayWindowError` (a window that
cannot be replayed); both `FleetlineError`, printed by the CLI as one `error:` line.
"""

from shared.operations._dlq import (
    DeadLetterQueues,
    DlqSummary,
    PeekedMessage,
    RedriveResult,
    UnknownQueueError,
    error_class,
)
from shared.operations._replay import (
    ReplayWindow,
    ReplayWindowError,
    check_window,
    start_replay,
    wait_replay,
)
from shared.operations._stack import stack_physical_ids, stack_queues
from shared.operations._topology import (
    DeadLetterSource,
    bus_archives,
    dead_letter_sources,
    rules_for_type,
)

__all__ = [
    "DeadLetterQueues",
    "DeadLetterSource",
    "DlqSummary",
    "PeekedMessage",
    "RedriveResult",
    "ReplayWindow",
    "ReplayWindowError",
    "UnknownQueueError",
    "bus_archives",
    "check_window",
    "dead_letter_sources",
    "error_class",
    "rules_for_type",
    "stack_physical_ids",
    "stack_queues",
    "start_replay",
    "wait_replay",
]
