"""The exception tree of `shared`. Every error a service sees from the framework is one of these.

    FleetlineError
    ├── ConfigurationError          missing setting or stack output; fix the deployment
    ├── RetryableError              transient: try again later (backoff, visibility change)
    │   └── AwsUnavailableError     throttled, 5xx, connection reset (translated SDK errors)
    └── PermanentError              retrying cannot help: dead-letter with the reason
        ├── InvalidMessageError     malformed JSON, unknown event type, schema-invalid payload
        ├── AwsRequestError         a 4xx the SDK returned that is not a throttle
        │   ├── ConditionFailedError        a conditional write's condition was false
        │   └── TransactionCanceledError    a DynamoDB transaction was cancelled (reasons)
        └── (package trees: outbox, idempotency, consumers, leases ... derive from these)

Retry semantics live on the type (`retryable`, and `RetryableError.retry_after` when the
error knows when a retry can succeed), never in string matching: a consumer asks
`is_retryable(exc)` and either backs off (for `retry_after` seconds when given) or
dead-letters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

__all__ = [
    "EX_CONFIG",
    "AwsRequestError",
    "AwsUnavailableError",
    "ConditionFailedError",
    "ConfigurationError",
    "FleetlineError",
    "InvalidMessageError",
    "PermanentError",
    "RetryableError",
    "TransactionCanceledError",
    "is_retryable",
]

EX_CONFIG: Final = 78
"""The exit status of a process that stopped on a configuration error (sysexits.h): a worker
host, the emulator's server. A supervisor does not restart a child that exits with it."""


class FleetlineError(Exception):
    """Base of every error raised by `shared`."""

    retryable: ClassVar[bool] = False


class ConfigurationError(FleetlineError):
    """A setting, environment variable or stack output is missing or invalid."""


class RetryableError(FleetlineError):
    """A transient failure: the same work may succeed later.

    `retry_after`, when an error knows it (a lease that ends in 7 s), is the seconds after
    which a retry can succeed: a consumer makes the message visible again then instead of
    drawing a backoff, so the receive count is not used up while the retry cannot succeed.
    None leaves the delay to the consumer's backoff."""

    retryable = True
    retry_after: float | None = None


class PermanentError(FleetlineError):
    """Retrying the same input cannot succeed."""


class InvalidMessageError(PermanentError):
    """A message that can never be handled: it goes to the DLQ with this reason."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason if field is None else f"{field}: {reason}")
        self.reason = reason
        self.field = field


class AwsUnavailableError(RetryableError):
    """Throttling, a 5xx, or a broken connection from an AWS API."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class AwsRequestError(PermanentError):
    """An AWS API refused the request (4xx other than throttling)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ConditionFailedError(AwsRequestError):
    """A conditional DynamoDB write found its condition false; nothing was written.

    `item` is the item as it was (attribute values, as the client returned them) when the
    request asked for it (`ReturnValuesOnConditionCheckFailure="ALL_OLD"`) and it exists;
    otherwise None. Decode it with `shared.dynamodb.from_item`."""

    def __init__(
        self, message: str, *, code: str | None = None,
        item: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.item = item


class TransactionCanceledError(AwsRequestError):
    """A DynamoDB transaction was cancelled; none of its operations was written.

    `reasons` holds one entry per operation, in request order, as DynamoDB returned them
    (`{"Code": "None" | "ConditionalCheckFailed" | "TransactionConflict" | ..., "Message":
    ..., "Item": <the item, with ReturnValuesOnConditionCheckFailure>}`); empty when the
    service sent none."""

    def __init__(
        self, message: str, *, code: str | None = None,
        reasons: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.reasons = tuple(reasons)


def is_retryable(exc: BaseException) -> bool:
    """True when `exc` says retrying may help. Unknown exceptions count as retryable:
    a bug or an outage looks the same from here, and the DLQ catches what keeps failing."""
    if isinstance(exc, FleetlineError):
        return exc.retryable
    return True
