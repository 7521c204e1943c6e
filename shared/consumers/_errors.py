"""The exception tree of `shared.consumers`.

    FleetlineError
    ├── DuplicateEvent             not a failure: a handler's signal "already applied"
    ├── ConsumerError              the consumer itself cannot go on (queue missing, misuse)
    ├── RetryableError
    │   └── RetryLater             a handler asks for a retry, optionally after a given delay
    └── PermanentError
        ├── InvalidMessageError    (shared.errors) malformed JSON, unknown type, bad schema
        └── DeadLetter             a handler decides the message can never succeed

Handlers raise these (or any exception); the adapters in `shared.consumers` map them to an
`Outcome` by type: `DuplicateEvent` -> DUPLICATE, `retryable` -> RETRY, otherwise
DEAD_LETTER. Unknown exceptions are retryable (`shared.errors.is_retryable`): a bug and an
outage look alike from here, and the queue's redrive policy catches what keeps failing.
"""

from __future__ import annotations

from shared.errors import FleetlineError, PermanentError, RetryableError

__all__ = ["ConsumerError", "DeadLetter", "DuplicateEvent", "RetryLater"]


class ConsumerError(FleetlineError):
    """The consumer cannot continue: the queue does not exist, access is denied, or the
    consumer was used against its lifecycle. Raised out of `run()`; a worker exits on it."""


class DuplicateEvent(FleetlineError):
    """Raised by a handler (or an inbox) when the event was applied before.

    Not an error: the message is deleted and counted as a duplicate skip.
    """

    def __init__(self, event_id: str | None = None) -> None:
        super().__init__(f"event {event_id} was already applied" if event_id else "duplicate")
        self.event_id = event_id


class RetryLater(RetryableError):
    """A transient failure with an optional hint: retry no sooner than `delay` seconds.

    Without `delay` the consumer's backoff (exponential, full jitter) decides.
    Raises ValueError when `delay` is negative.
    """

    def __init__(self, reason: str, *, delay: float | None = None) -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"delay must be non-negative, got {delay!r}")
        super().__init__(reason)
        self.delay = delay
        self.retry_after = delay


class DeadLetter(PermanentError):
    """A handler decides this message can never succeed: it goes to the DLQ with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
