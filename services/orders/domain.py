"""Pure decisions of the orders context: no I/O, unit-tested on their own.

The services (api, inventory, payments, shipping, notifications, projection) read state,
ask a function here what to do, and perform the answer with one thin AWS call. Every effect
is idempotent because each decision looks at the stored state first:

* a reservation, payment or shipment is keyed by the order id, never by the task token, so a
  retried task (new token) or a redelivered message (same token) finds the earlier effect;
* compensations write a *tombstone* when there is nothing to undo, so a task that was still
  running when its step timed out cannot apply its effect after the saga compensated.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.orders.events import OrderLine

__all__ = [
    "CATALOG",
    "AuthorizeDecision",
    "CaptureDecision",
    "CommitDecision",
    "OrderStatus",
    "PaymentStatus",
    "RefundDecision",
    "ReleaseDecision",
    "Replay",
    "ReservationStatus",
    "ReserveDecision",
    "StockRow",
    "UndoKind",
    "cancellation_reason",
    "decide_authorize",
    "decide_capture",
    "decide_commit",
    "decide_refund",
    "decide_release",
    "decide_replay",
    "decide_reserve",
    "fingerprint",
    "new_order_id",
    "order_id_for_key",
    "price_lines",
    "sales_day",
    "sales_deltas",
    "should_apply_sequence",
    "stock_invariant_violations",
    "undo_kind",
]

# The price list (minor units). A real shop reads a catalogue service; a fixed table keeps the
# saga the subject here. Unknown skus are refused at the edge with a 400 naming the field.
CATALOG: Final[Mapping[str, int]] = {
    "KETTLE-1": 2999,
    "TOASTER-2": 4599,
    "MUG-BLUE": 899,
    "MUG-RED": 899,
    "TEAPOT-3": 3450,
    "SPOON-SET": 1250,
    "GRINDER-X": 6900,
    "SCALE-KIT": 2199,
}


class OrderStatus(enum.StrEnum):
    PLACED = "PLACED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


# --- edge ----------------------------------------------------------------------------------


def fingerprint(body: Mapping[str, Any]) -> str:
    """A stable hash of a request body (key order and whitespace do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_id_for_key(customer_id: str, idempotency_key: str) -> str:
    """The order id an Idempotency-Key maps to. Keys are scoped per customer (two customers
    may use the same key), and the mapping is deterministic, so the order item itself is the
    idempotency record: one conditional write both creates the order and claims the key."""
    digest = hashlib.sha256(f"{customer_id}\x00{idempotency_key}".encode()).hexdigest()
    return f"o-{digest[:24]}"


def new_order_id() -> str:
    """An order id for a request without an Idempotency-Key."""
    return f"o-{uuid.uuid4().hex[:24]}"


class Replay(enum.StrEnum):
    SAME = "same"  # same key, same body: answer as the first time
    CONFLICT = "conflict"  # same key, different body: 422


def decide_replay(stored_fingerprint: str | None, request_fingerprint: str) -> Replay:
    """A POST whose order already exists: a replay of the first request, or a key reused for
    a different body. A stored order without a fingerprint counts as a conflict."""
    return Replay.SAME if stored_fingerprint == request_fingerprint else Replay.CONFLICT


def price_lines(
    items: Iterable[tuple[str, int]], catalog: Mapping[str, int] = CATALOG
) -> tuple[tuple[OrderLine, ...], int]:
    """Lines priced from the catalogue, the same sku merged, and the total (minor units).

    Raises:
        KeyError: a sku is not in the catalogue (the request model refuses these first).
    """
    quantities: dict[str, int] = {}
    for sku, quantity in items:
        quantities[sku] = quantities.get(sku, 0) + quantity
    lines = tuple(
        OrderLine(sku=sku, quantity=qty, unit_price=catalog[sku])
        for sku, qty in sorted(quantities.items())
    )
    return lines, sum(line.amount for line in lines)


# --- inventory -----------------------------------------------------------------------------


class ReservationStatus(enum.StrEnum):
    RESERVING = "RESERVING"  # claimed; per-sku holds being placed
    RESERVED = "RESERVED"  # every sku holds the order's quantity
    COMMITTED = "COMMITTED"  # stock left the warehouse: holds -> shipped
    RELEASED = "RELEASED"  # compensation: holds (or shipped) -> available, or a tombstone


class ReserveDecision(enum.StrEnum):
    CLAIM = "claim"  # write the reservation RESERVING, then place the holds
    PLACE_HOLDS = "place-holds"  # a RESERVING claim from an earlier attempt: place the rest
    ALREADY_DONE = "already-done"  # a retry of a reservation that happened
    CLOSED = "closed"  # compensation already ran for this order: never reserve again


def decide_reserve(status: ReservationStatus | None) -> ReserveDecision:
    if status is None:
        return ReserveDecision.CLAIM
    if status is ReservationStatus.RESERVING:
        return ReserveDecision.PLACE_HOLDS
    if status is ReservationStatus.RELEASED:
        return ReserveDecision.CLOSED
    return ReserveDecision.ALREADY_DONE


class ReleaseDecision(enum.StrEnum):
    FLIP = "flip"  # mark RELEASED (remembering the status released from), then undo per sku
    UNDO = "undo"  # RELEASED before: make sure every sku is undone (idempotent)
    TOMBSTONE = "tombstone"  # nothing reserved: record RELEASED so a late reserve is refused


def decide_release(status: ReservationStatus | None) -> ReleaseDecision:
    if status is None:
        return ReleaseDecision.TOMBSTONE
    if status is ReservationStatus.RELEASED:
        return ReleaseDecision.UNDO
    return ReleaseDecision.FLIP


class UndoKind(enum.StrEnum):
    UNHOLD = "unhold"  # held -> available
    RETURN = "return"  # shipped -> available (released after commit)


def undo_kind(released_from: ReservationStatus | None) -> UndoKind:
    """How a release undoes a reservation that was in `released_from`."""
    return UndoKind.RETURN if released_from is ReservationStatus.COMMITTED else UndoKind.UNHOLD


class CommitDecision(enum.StrEnum):
    FLIP = "flip"  # mark COMMITTED, then move each sku's hold to shipped
    MOVE = "move"  # COMMITTED before: make sure every hold moved (idempotent)
    MISSING = "missing"  # nothing (fully) reserved, or released: a permanent error


def decide_commit(status: ReservationStatus | None) -> CommitDecision:
    if status is ReservationStatus.RESERVED:
        return CommitDecision.FLIP
    if status is ReservationStatus.COMMITTED:
        return CommitDecision.MOVE
    return CommitDecision.MISSING


@dataclass(frozen=True, kw_only=True)
class StockRow:
    sku: str
    initial: int
    available: int
    reserved: int
    shipped: int


def stock_invariant_violations(rows: Iterable[StockRow]) -> list[str]:
    """Skus where initial stock != available + reserved + shipped, or a count is negative."""
    problems: list[str] = []
    for row in rows:
        if row.initial != row.available + row.reserved + row.shipped:
            problems.append(
                f"{row.sku}: initial {row.initial} != available {row.available} + reserved "
                f"{row.reserved} + shipped {row.shipped}"
            )
        if min(row.available, row.reserved, row.shipped) < 0:
            problems.append(f"{row.sku}: negative count {row}")
    return problems


# --- payments ------------------------------------------------------------------------------


class PaymentStatus(enum.StrEnum):
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"  # authorization released, or a tombstone when nothing was authorized
    REFUNDED = "REFUNDED"


class AuthorizeDecision(enum.StrEnum):
    CALL_PROVIDER = "call-provider"
    ALREADY_AUTHORIZED = "already-authorized"
    ALREADY_DECLINED = "already-declined"
    CLOSED = "closed"  # compensated before the authorization ran: never charge


def decide_authorize(status: PaymentStatus | None) -> AuthorizeDecision:
    if status is None:
        return AuthorizeDecision.CALL_PROVIDER
    if status in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED):
        return AuthorizeDecision.ALREADY_AUTHORIZED
    if status is PaymentStatus.DECLINED:
        return AuthorizeDecision.ALREADY_DECLINED
    return AuthorizeDecision.CLOSED


class CaptureDecision(enum.StrEnum):
    CALL_PROVIDER = "call-provider"
    ALREADY_CAPTURED = "already-captured"
    NOT_AUTHORIZED = "not-authorized"


def decide_capture(status: PaymentStatus | None) -> CaptureDecision:
    if status is PaymentStatus.AUTHORIZED:
        return CaptureDecision.CALL_PROVIDER
    if status is PaymentStatus.CAPTURED:
        return CaptureDecision.ALREADY_CAPTURED
    return CaptureDecision.NOT_AUTHORIZED


class RefundDecision(enum.StrEnum):
    VOID = "void"  # authorized, not captured: release the hold
    REFUND = "refund"  # captured: give the money back
    TOMBSTONE = "tombstone"  # nothing yet: record VOIDED so a late authorization is voided
    NOOP = "noop"  # declined, voided or refunded before


def decide_refund(status: PaymentStatus | None) -> RefundDecision:
    if status is None:
        return RefundDecision.TOMBSTONE
    if status is PaymentStatus.AUTHORIZED:
        return RefundDecision.VOID
    if status is PaymentStatus.CAPTURED:
        return RefundDecision.REFUND
    return RefundDecision.NOOP


# --- saga ----------------------------------------------------------------------------------

_TIMEOUT_ERRORS: Final = frozenset({"States.Timeout", "States.HeartbeatTimeout"})


def cancellation_reason(error: str | None, cause: str | None) -> tuple[str, str | None]:
    """(reason, detail) for display, from the error a saga step failed with.

    The reason is the typed error name (`PaymentDeclined`, `OutOfStock`, ...); a step that
    timed out is `StepTimedOut`. `cause` may be the worker's JSON cause (`{"message": ...}`),
    the state machine's failure object (`{"Error": ..., "Cause": <that JSON or null>}`) or
    plain text; the detail is the innermost message, cut to 500 characters (None when there
    is none).
    """
    reason = error or "Unknown"
    if reason in _TIMEOUT_ERRORS:
        reason = "StepTimedOut"
    detail: str | None = cause
    for _ in range(2):  # the failure object wraps the worker's cause
        if not detail:
            break
        try:
            parsed = json.loads(detail)
        except ValueError:
            break
        if not isinstance(parsed, dict):
            break
        if isinstance(parsed.get("message"), str):
            detail = parsed["message"]
            break
        inner = parsed.get("Cause")
        detail = inner if isinstance(inner, str) and inner else None
    return reason, (detail[:500] if detail else None)


# --- read models ---------------------------------------------------------------------------


def should_apply_sequence(stored: int | None, incoming: int) -> bool:
    """A read model applies an event only when it is newer than what it holds."""
    return stored is None or incoming > stored


def sales_day(timestamp: str) -> str:
    """The UTC day (YYYY-MM-DD) of an ISO 8601 timestamp."""
    return timestamp[:10]


def sales_deltas(lines: Iterable[OrderLine]) -> dict[str, tuple[int, int]]:
    """Per sku: (units, revenue in minor units) one confirmed order adds."""
    deltas: dict[str, tuple[int, int]] = {}
    for line in lines:
        units, revenue = deltas.get(line.sku, (0, 0))
        deltas[line.sku] = (units + line.quantity, revenue + line.amount)
    return deltas
