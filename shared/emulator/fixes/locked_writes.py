"""Gap: DynamoDB writes to an item one at a time.

moto's server runs requests on threads and its DynamoDB writes read, change and store an
item without a lock: 16 clients doing 400 `SET n = n + :one` left n at 355 and 373.
DynamoDB applies each write to an item atomically (leases, counters and idempotency records
rely on it), so writes here take one lock (`LOCK`), reentrant since a transaction calls the
others; another fix that reads and then writes an item takes it too (`partiql_writes`).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "LOCK", "MARKER", "WRITES", "apply"]

WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
MARKER = "_fleetline_locked"
LOCK = threading.RLock()


def apply() -> None:
    from moto.dynamodb.models import DynamoDBBackend

    for name in WRITES:
        # Around moto's method or the one fixed here (the transaction): either way, once.
        original = unpatched(DynamoDBBackend, name, marker=MARKER)
        if original is None:
            continue

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with LOCK:
                return _original(self, *args, **kwargs)

        replace(DynamoDBBackend, name, functools.wraps(original)(locked), marker=MARKER)


FIX = Fix(
    name="locked-writes",
    kind=FixKind.GAP,
    summary="DynamoDB writes to an item are atomic (moto loses concurrent updates)",
    checks=tuple(f"moto.dynamodb.models:DynamoDBBackend.{name}" for name in WRITES),
    verified={"5.2.5": "a1551a053ccc0a95", "5.2.6": "a1551a053ccc0a95"},
    apply=apply,
)
