"""Errors of the effect layer: unit of work, outbox relay, inbox.

    FleetlineError (shared.errors)
    ├── RetryableError
    │   ├── ConcurrencyConflictError   an item changed since it was loaded (version moved)
    │   └── PublishError               PutEvents entries kept failing (throttle, 5xx)
    └── PermanentError
        ├── OutboxError                misuse of the unit of work (refused before any write)
        │   └── TransactionTooLargeError   more than 100 operations in one commit
        ├── UnpublishableEventError    an event PutEvents refuses for good (too big, invalid)
        └── StreamRecordError          a stream record the relay cannot read

    DuplicateEvent (shared.consumers)
    └── AlreadyProcessedError      the inbox already holds this event id (a duplicate)

`retryable` is on the type: a consumer backs off on a conflict and dead-letters the rest.
`AlreadyProcessedError` is not a failure: the consumer adapters map it (a DuplicateEvent) to
`Outcome.DUPLICATE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.consumers import DuplicateEvent
from shared.errors import PermanentError, RetryableError

__all__ = [
    "AlreadyProcessedError",
    "ConcurrencyConflictError",
    "OutboxError",
    "PublishError",
    "StreamRecordError",
    "TransactionTooLargeError",
    "UnpublishableEventError",
]


class OutboxError(PermanentError):
    """The unit of work was used wrongly; nothing was written."""


class TransactionTooLargeError(OutboxError):
    """A commit needs more operations than one DynamoDB transaction allows."""

    def __init__(self, operations: int, limit: int) -> None:
        super().__init__(
            f"commit needs {operations} write operations; one DynamoDB transaction allows "
            f"at most {limit}. Nothing was written: split the work into smaller units."
        )
        self.operations = operations
        self.limit = limit


class ConcurrencyConflictError(RetryableError):
    """Another writer changed an item after it was loaded. Reload and decide again.

    `current` holds the items as they are now, by (table, key) string, when DynamoDB returned
    them (ReturnValuesOnConditionCheckFailure), so a retry needs no extra read."""

    def __init__(self, message: str, *, current: Mapping[str, Mapping[str, Any] | None]) -> None:
        super().__init__(message)
        self.current = current


class AlreadyProcessedError(DuplicateEvent):
    """The event id is already in the inbox: its effect was applied before."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id: str = event_id


class PublishError(RetryableError):
    """Publishing failed after the retries allowed in one attempt; try again later."""


class UnpublishableEventError(PermanentError):
    """EventBridge refuses this event for good (too large, malformed)."""


class StreamRecordError(PermanentError):
    """A DynamoDB stream record that is not what the relay expects."""
