"""Emails to customers about their orders: one per order event, even when the event is
delivered twice (SQS at-least-once, a relay restart, a replay).

Sending an email is an effect outside our database, so the inbox trick (dedupe record in the
same write as the effect) is impossible. Instead each email is claimed in the idempotency
table before it is sent (`email#<event id>`):

    absent                         claim (conditional put, status SENDING, owner, lease) -> send
                                   -> mark SENT
    SENT                           duplicate: skip (counted)
    SENDING, lease running         another worker is sending it: retry later
    SENDING, lease expired         the sender died: take over (conditional on the old owner),
                                   send again (the one case that can repeat an email: a crash
                                   after the provider accepted and before SENT was written)

The mailer is a seam (`Mailer`); `LogMailer` logs the email (what `fleetline up` uses),
`MemoryMailer` keeps them for tests.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from services.orders import _store
from services.orders._envelopes import OrderEnvelope, decode_order_event
from services.orders.domain import cancellation_reason
from services.orders.events import OrderCancelled, OrderConfirmed
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import (
    BatchHandler,
    DuplicateEvent,
    HandlerContext,
    RetryLater,
    batch_handler,
)
from shared.errors import AwsRequestError
from shared.hosts import SqsQueue, Worker
from shared.tracing import consumer_span

__all__ = ["Email", "LogMailer", "Mailer", "MemoryMailer", "Notifier", "compose", "worker"]

_log = structlog.get_logger("services.orders.notifications")


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
        self._aws = aws
        self.table = table
        self.mailer: Mailer = mailer or LogMailer()
        self.lease_seconds = lease_seconds
        self.owner = uuid.uuid4().hex

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None,
                     mailer: Mailer | None = None) -> Notifier:
        res = resources or Resources.from_environ()
        return cls(aws, table=res.get("IdempotencyTable"), mailer=mailer)

    async def _claim(self, key: str) -> bool:
        """True when this worker may send; raises DuplicateEvent / RetryLater otherwise."""
        ddb = await self._aws.client("dynamodb")
        now = time.time()
        try:
            with aws_errors():
                await ddb.put_item(
                    TableName=self.table,
                    Item=_store.to_item({
                        "id": f"email#{key}", "status": "SENDING", "owner": self.owner,
                        "lease_until": now + self.lease_seconds,
                        "expires_at": int(now + 7 * 86400),
                    }),
                    ConditionExpression="attribute_not_exists(id) OR "
                                        "(#s = :sending AND lease_until < :now)",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues=_store.to_item({":sending": "SENDING",
                                                              ":now": now}),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except AwsRequestError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            old = getattr(exc.__cause__, "response", {}).get("Item") or {}
            status = _store.plain(old).get("status") if old else None
            if status == "SENT":
                raise DuplicateEvent(key) from None
            raise RetryLater(f"email {key} is being sent by another worker",
                             delay=self.lease_seconds) from None
        return True

    async def _mark_sent(self, key: str) -> None:
        ddb = await self._aws.client("dynamodb")
        with aws_errors():
            await ddb.update_item(
                TableName=self.table,
                Key=_store.to_item({"id": f"email#{key}"}),
                UpdateExpression="SET #s = :sent, sent_at = :now",
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#s": "status", "#o": "owner"},
                ExpressionAttributeValues=_store.to_item({":sent": "SENT", ":me": self.owner,
                                                          ":now": time.time()}),
            )

    async def notify(self, envelope: OrderEnvelope) -> Email | None:
        """Send the event's email once.

        Raises:
            DuplicateEvent: it was sent before.
            RetryLater: another worker holds the claim.
        """
        email = compose(envelope)
        if email is None:
            return None
        await self._claim(email.key)
        await self.mailer.send(email)
        await self._mark_sent(email.key)
        return email

    async def handle(self, envelope: OrderEnvelope, ctx: HandlerContext) -> None:
        with consumer_span(dict(envelope.trace), f"orders.notifications {envelope.type}"):
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
