"""Idempotency for effects outside our database (payments, emails): run once per key, with an
INPROGRESS lease renewed by a heartbeat, an owner token that fences an expired holder out,
stored results for repeats, payload hashing against key reuse, and TTL expiry.

    Idempotency(aws, config).run(request, effect, key="order_id")
    @idempotent(config, key="order_id", aws=clients)
    @idempotent_handler(config, key="body.order_id")   # async Lambda handler

Errors (tree in `shared.idempotency._errors`): IdempotencyInProgressError and
IdempotencyLeaseLostError are retryable; IdempotencyKeyReuseError, IdempotencyKeyError,
ResultNotStorableError are not. The record's states and the pure decisions on them
(`_state.judge`) and the store (`_store`) are private: their tests import them there.
"""

from shared.idempotency._config import IdempotencyConfig
from shared.idempotency._errors import (
    IdempotencyInProgressError,
    IdempotencyKeyError,
    IdempotencyKeyReuseError,
    IdempotencyLeaseLostError,
    ResultNotStorableError,
)
from shared.idempotency._idempotent import Idempotency, idempotent, idempotent_handler

__all__ = [
    "Idempotency",
    "IdempotencyConfig",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyKeyReuseError",
    "IdempotencyLeaseLostError",
    "ResultNotStorableError",
    "idempotent",
    "idempotent_handler",
]
