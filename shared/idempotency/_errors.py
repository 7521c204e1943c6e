"""Errors of `shared.idempotency`.

    FleetlineError (shared.errors)
    ├── RetryableError
    │   ├── IdempotencyInProgressError   another holder runs the effect now; try later
    │   └── IdempotencyLeaseLostError    our lease expired and another holder took the key;
    │                                    our result was not stored (we were fenced out)
    └── PermanentError
        ├── IdempotencyKeyReuseError     same key, different payload: a client bug
        ├── IdempotencyKeyError          the key expression found nothing in the request
        └── ResultNotStorableError       the result is not JSON or too large to store
"""

from __future__ import annotations

from shared.errors import InvalidMessageError, PermanentError, RetryableError

__all__ = [
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyKeyReuseError",
    "IdempotencyLeaseLostError",
    "ResultNotStorableError",
]


class IdempotencyInProgressError(RetryableError):
    """The key is held by another caller whose lease has not expired."""

    def __init__(self, key: str, *, retry_after: float) -> None:
        super().__init__(
            f"idempotency key {key!r} is in progress elsewhere; retry in {retry_after:.1f} s"
        )
        self.key = key
        self.retry_after = retry_after


class IdempotencyLeaseLostError(RetryableError):
    """Our in-progress lease was taken over (it expired); the completion write was refused."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"lost the lease on idempotency key {key!r}: another holder took it over after "
            "it expired; this result was discarded"
        )
        self.key = key


class IdempotencyKeyReuseError(PermanentError):
    """The key was used before with a different payload."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with a different payload; "
            "use a new key for a new request"
        )
        self.key = key


class IdempotencyKeyError(InvalidMessageError):
    """No key could be taken from the request."""


class ResultNotStorableError(PermanentError):
    """The effect's result cannot be stored for repeats (not JSON, or too large)."""
