"""Emails to customers about their orders: one per order event, even when the event is
delivered twice (SQS at-least-once, a relay restart, a replay).

Sending an email is an effect outside our database, so the inbox trick (dedupe record in the
same write as the effect) is impossible. Instead each email runs under `shared.idempotency`
in the idempotency table, keyed by the event id (namespace `orders.email`):

    no record                      INPROGRESS with a lease (renewed while sending) -> send
                                   -> COMPLETED
    COMPLETED                      duplicate: skip (counted)
    INPROGRESS, lease running      another worker is sending it: retry later
    INPROGRESS, lease expired      the sender died: taken over (its owner token is fenced
                                   out), sent again (the one case that can repeat an email:
                                   a crash after the mail server accepted it and before
                                   COMPLETED was written)

Records are kept as long as the inbox's (`shared.inbox.DEFAULT_RETENTION`, 45 days): longer
than any replay of the bus archive (30 days) followed by a DLQ redrive (14 days), so neither
can send again.

The mailer is a seam (`Mailer`); `LogMailer` logs the email (what `fleetline up` uses),
`MemoryMailer` keeps them for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import structlog

from services.orders._envelopes import OrderEnvelope, decode_order_event
from services.orders.domain import cancellation_reason
from services.orders.events import OrderCancelled, OrderConfirmed
from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import (
    BatchHandler,
    DuplicateEvent,
    HandlerContext,
    batch_handler,
)
from shared.hosts import SqsQueue, Worker
from shared.idempotency import Idempotency, IdempotencyConfig
from shared.inbox import DEFAULT_RETENTION
from shared.tracing import handler_span

__all__ = [
    "EMAIL_RECORD_RETENTION", "Email", "LogMailer", "Mailer", "MemoryMailer", "Notifier", "compose",
    "worker",
]

_log = structlog.get_logger("services.orders.notifications")
EMAIL_RECORD_RETENTION = DEFAULT_RETENTION


@dataclass(frozen=True, kw_only=True)
class Email:
    to: str
    subject: str
    body: str
    key: str  # the event id: what makes it "the same email"


class Mailer(Protocol):
    async def send(self, email: Email) -> None: ...


class LogMailer:
    """Simulated delivery: the email becomes a log line."""

    async def send(self, email: Email) -> None:
        _log.info("email sent", to=email.to, subject=email.subject, key=email.key)


@dataclass
class MemoryMailer:
    """Keeps every email sent (tests count them)."""

    sent: list[Email] = field(default_factory=list)

    async def send(self, email: Email) -> None:
        self.sent.append(email)


def compose(envelope: OrderEnvelope) -> Email | None:
    """The email for an order event (pure); None for events that send none."""
    data = envelope.data
    to = f"{data.customer_id}@customers.example"
    total = f"{data.total / 100:.2f} {data.currency}"
    if isinstance(data, OrderConfirmed):
        return Email(to=to, key=envelope.id, subject=f"Order {data.order_id} confirmed",
                     body=f"Your order of {total} is confirmed and on its way "
                          f"(shipment {data.shipment_id}).")
    if isinstance(data, OrderCancelled):
        reason, _ = cancellation_reason(data.reason, data.detail)
        return Email(to=to, key=envelope.id, subject=f"Order {data.order_id} cancelled",
                     body=f"Your order of {total} was cancelled ({reason}). "
                          "No money was taken.")
    return None


class Notifier:
    def __init__(self, aws: AwsClients, *, table: str, mailer: Mailer | None = None,
                 lease_seconds: float = 30.0) -> None:
        self.mailer: Mailer = mailer or LogMailer()
        self._once = Idempotency(aws, IdempotencyConfig(
            table=table, namespace="orders.email", lease=lease_seconds,
            expires_after=EMAIL_RECORD_RETENTION.total_seconds()))

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None,
                     mailer: Mailer | None = None) -> Notifier:
        res = resources or Resources.from_environ()
        return cls(aws, table=res.get("IdempotencyTable"), mailer=mailer)

    async def notify(self, envelope: OrderEnvelope) -> Email | None:
        """Send the event's email once.

        Raises:
            DuplicateEvent: it was sent before.
            IdempotencyInProgressError: another worker is sending it (retryable).
        """
        email = compose(envelope)
        if email is None:
            return None
        sent_now = False

        async def send() -> dict[str, str]:
            nonlocal sent_now
            await self.mailer.send(email)
            sent_now = True
            return {"to": email.to, "subject": email.subject}

        await self._once.run({"event_id": email.key, "to": email.to, "subject": email.subject},
                             send, key="event_id")
        if not sent_now:
            raise DuplicateEvent(email.key)
        return email

    async def handle(self, envelope: OrderEnvelope, ctx: HandlerContext) -> None:
        with handler_span(f"orders.notifications {envelope.type}", source=envelope.trace,
                          attributes={"order.id": envelope.data.order_id}):
            email = await self.notify(envelope)
        if email is not None:
            ctx.log.info("customer notified", order_id=envelope.data.order_id,
                         type=envelope.type)

    def batch_handler(self) -> BatchHandler:
        return batch_handler(self.handle, decode=decode_order_event)


worker = Worker(
    name="orders-notifications",
    source=SqsQueue("NotificationsQueue"),
    handler=lambda aws, resources: Notifier.from_environ(aws, resources).batch_handler(),
)
"""`python -m shared.hosts.worker services.orders.notifications:worker` (the ECS service)."""
