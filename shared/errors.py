"""The exception tree of `shared`. Every error a service sees from the framework is one of these.

    FleetlineError
    ├── ConfigurationError          missing setting or stack output; fix the deployment
    ├── RetryableError              transient: try again later (backoff, visibility change)
    │   └── AwsUnavailableError     throttled, 5xx, connection reset (translated SDK errors)
    └── PermanentError              retrying cannot help: dead-letter with the reason
        ├── InvalidMessageError     malformed JSON, unknown event type, schema-invalid payload
        ├── AwsRequestError         a 4xx the SDK returned that is not a throttle
        └── (package trees: outbox, idempotency, consumers, leases ... derive from these)

Retry semantics live on the type (`retryable`), never in string matching: a consumer asks
`is_retryable(exc)` and either backs off or dead-letters.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AwsRequestError",
    "AwsUnavailableError",
    "ConfigurationError",
    "FleetlineError",
    "InvalidMessageError",
    "PermanentError",
    "RetryableError",
    "is_retryable",
]


class FleetlineError(Exception):
    """Base of every error raised by `shared`."""

    retryable: ClassVar[bool] = False


class ConfigurationError(FleetlineError):
    """A setting, environment variable or stack output is missing or invalid."""


class RetryableError(FleetlineError):
    """A transient failure: the same work may succeed later."""

    retryable = True


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


def is_retryable(exc: BaseException) -> bool:
    """True when `exc` says retrying may help. Unknown exceptions count as retryable:
    a bug or an outage looks the same from here, and the DLQ catches what keeps failing."""
    if isinstance(exc, FleetlineError):
        return exc.retryable
    return True
