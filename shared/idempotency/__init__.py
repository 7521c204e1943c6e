"""Idempotency for effects outside our database (payments, emails): run once per key, with an
INPROGRESS lease renewed by a heartbeat, an owner token that fences an expired holder out,
stored results for repeats, payload hashing against key reuse, and TTL expiry.

    Idempotency(aws, config).run(request, effect, key="order_id")
    @idempotent(config, key="order_id", aws=clients)
    @idempotent_handler(config, key="body.order_id")   # async Lambda handler

Errors (tree in `shared.idempotency._errors`): IdempotencyInProgressError and
IdempotencyLeaseLostError are retryable; IdempotencyKeyReuseError, IdempotencyKeyError,
ResultNotStorableError are not.
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
from shared.idempotency._state import Record, Status, Verdict, extract_key, judge, payload_hash
from shared.idempotency._store import IdempotencyStore

__all__ = [
    "Idempotency",
    "IdempotencyConfig",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyKeyReuseError",
    "IdempotencyLeaseLostError",
    "IdempotencyStore",
    "Record",
    "ResultNotStorableError",
    "Status",
    "Verdict",
    "extract_key",
    "idempotent",
    "idempotent_handler",
    "judge",
    "payload_hash",
]
