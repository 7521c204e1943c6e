"""The payment provider simulator: what the payments service calls to move money.

It behaves like a card processor's API, with the failure modes that make payments hard:

* **Idempotency keys** (as real providers have): `authorize(key=...)` with a key seen before
  returns the first answer (same charge id, same approve/decline) and charges nothing new.
  Capture, void and refund are state transitions of the charge, so repeating one is a no-op.
* **Declines**: customers whose id starts with `decline` are always declined (like a test
  card number); otherwise a charge is declined when a hash of its key falls under
  `decline_rate`, so a retry of the same key gets the same answer even without the ledger.
* **Latency**: every call takes `latency_seconds`, half before the effect and half after.
* **Outages**: a call fails with `PaymentProviderUnavailable` before doing anything with
  probability `outage_rate`; with probability `lost_response_rate` the effect happens and the
  answer is lost (the caller sees the same error). Only idempotency makes the second safe.

The ledger lives in the payments table under `PSP#<charge id>` keys, so it survives worker
restarts and tests can audit it ("captured once", "no charge remains"). A real provider keeps
its ledger on its side; nothing else in the service reads these items.

Settings come from `ProviderSettings.from_environ()` (`FLEETLINE_PSP_DECLINE_RATE`,
`FLEETLINE_PSP_LATENCY_MS`, `FLEETLINE_PSP_OUTAGE_RATE`, `FLEETLINE_PSP_LOST_RESPONSE_RATE`).
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from services.orders import _store
from services.orders.errors import PaymentDeclined, PaymentProviderUnavailable
from shared.aws import AwsClients, aws_errors
from shared.dynamodb import from_item, to_item
from shared.errors import ConditionFailedError, PermanentError

__all__ = ["Charge", "ChargeStatus", "PaymentProvider", "ProviderError", "ProviderSettings"]


class ProviderError(PermanentError):
    """The provider refused an operation for the state of the charge (capture of a voided
    charge, refund of an uncaptured one)."""


class ChargeStatus(enum.StrEnum):
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    decline_rate: float = 0.0
    latency_seconds: float = 0.0
    outage_rate: float = 0.0
    lost_response_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("decline_rate", "outage_rate", "lost_response_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.latency_seconds < 0:
            raise ValueError(f"latency_seconds must be non-negative, got {self.latency_seconds!r}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ProviderSettings:
        env = os.environ if environ is None else environ

        def number(name: str) -> float:
            text = env.get(name, "0") or "0"
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {text!r}") from None

        return cls(
            decline_rate=number("FLEETLINE_PSP_DECLINE_RATE"),
            latency_seconds=number("FLEETLINE_PSP_LATENCY_MS") / 1000.0,
            outage_rate=number("FLEETLINE_PSP_OUTAGE_RATE"),
            lost_response_rate=number("FLEETLINE_PSP_LOST_RESPONSE_RATE"),
        )


@dataclass(frozen=True, kw_only=True)
class Charge:
    charge_id: str
    status: ChargeStatus
    amount: int
    currency: str


def _fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class PaymentProvider:
    """The simulated provider API over its ledger table."""

    def __init__(self, aws: AwsClients, *, table: str, settings: ProviderSettings) -> None:
        self._aws = aws
        self._table = table
        self.settings = settings
        self._random = random.Random(settings.seed)

    async def _call(self) -> None:
        # Half the latency is the request's way there (before the effect), half the answer's
        # way back (after it), so a worker can die after the provider acted.
        if self.settings.latency_seconds:
            await anyio.sleep(self.settings.latency_seconds / 2)
        if self._random.random() < self.settings.outage_rate:
            raise PaymentProviderUnavailable("payment provider unavailable (simulated outage)")

    async def _answer(self) -> None:
        if self.settings.latency_seconds:
            await anyio.sleep(self.settings.latency_seconds / 2)
        if self._random.random() < self.settings.lost_response_rate:
            raise PaymentProviderUnavailable("payment provider timed out (simulated lost answer)")

    def _declines(self, key: str, customer_id: str) -> bool:
        return customer_id.startswith("decline") or _fraction(key) < self.settings.decline_rate

    async def authorize(
        self, *, key: str, customer_id: str, amount: int, currency: str
    ) -> Charge:
        """Authorize (hold) `amount`. The same `key` returns the first answer.

        Raises:
            PaymentDeclined: the card was declined (also on a repeat of a declined key).
            PaymentProviderUnavailable: outage or lost answer; retry with the same key.
        """
        await self._call()
        charge_id = "ch_" + hashlib.sha256(key.encode()).hexdigest()[:20]
        status = ChargeStatus.DECLINED if self._declines(key, customer_id) else (
            ChargeStatus.AUTHORIZED)
        ddb = await self._aws.client("dynamodb")
        try:
            await _store.put_if_absent(ddb, self._table, {
                "pk": f"PSP#{charge_id}", "sk": "CHARGE", "status": status.value,
                "amount": amount, "currency": currency, "idempotency_key": key,
                "captures": 0, "refunds": 0,
            })
        except ConditionFailedError as exc:
            existing = _store.old_item(exc)
            if existing is not None:  # a repeat of the key: the first answer
                status = ChargeStatus(existing["status"])
        await self._answer()
        if status is ChargeStatus.DECLINED:
            raise PaymentDeclined(f"card declined (charge {charge_id})")
        return Charge(charge_id=charge_id, status=status, amount=amount, currency=currency)

    async def _transition(
        self, charge_id: str, *, frm: ChargeStatus, to: ChargeStatus, counter: str | None
    ) -> Charge:
        await self._call()
        ddb = await self._aws.client("dynamodb")
        update = "SET #s = :to" + (f" ADD {counter} :one" if counter else "")
        values: dict[str, Any] = {":to": to.value, ":from": frm.value}
        if counter:
            values[":one"] = 1
        try:
            with aws_errors():
                answer = await ddb.update_item(
                    TableName=self._table,
                    Key=to_item({"pk": f"PSP#{charge_id}", "sk": "CHARGE"}),
                    UpdateExpression=update,
                    ConditionExpression="#s = :from",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues=to_item(values),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            item = from_item(answer["Attributes"])
        except ConditionFailedError as exc:
            item = _store.old_item(exc) or {}
            if item.get("status") != to.value:  # a repeat finds `to`: already done
                raise ProviderError(
                    f"charge {charge_id} is {item.get('status', 'unknown')}, cannot become "
                    f"{to.value}"
                ) from exc
        await self._answer()
        return Charge(charge_id=charge_id, status=ChargeStatus(item["status"]),
                      amount=int(item["amount"]), currency=str(item["currency"]))

    async def capture(self, charge_id: str) -> Charge:
        """Capture an authorized charge; capturing a captured charge is a no-op.

        Raises:
            ProviderError: the charge is not authorized (declined, voided, refunded).
            PaymentProviderUnavailable: outage or lost answer; retry.
        """
        return await self._transition(charge_id, frm=ChargeStatus.AUTHORIZED,
                                      to=ChargeStatus.CAPTURED, counter="captures")

    async def void(self, charge_id: str) -> Charge:
        """Release an authorization; voiding a voided charge is a no-op.

        Raises:
            ProviderError: the charge is captured (refund it) or declined.
            PaymentProviderUnavailable: outage or lost answer; retry.
        """
        return await self._transition(charge_id, frm=ChargeStatus.AUTHORIZED,
                                      to=ChargeStatus.VOIDED, counter=None)

    async def refund(self, charge_id: str) -> Charge:
        """Refund a captured charge; refunding a refunded charge is a no-op.

        Raises:
            ProviderError: the charge was never captured.
            PaymentProviderUnavailable: outage or lost answer; retry.
        """
        return await self._transition(charge_id, frm=ChargeStatus.CAPTURED,
                                      to=ChargeStatus.REFUNDED, counter="refunds")

    async def ledger(self) -> list[dict[str, Any]]:
        """Every charge (for audits and tests; a scan)."""
        ddb = await self._aws.client("dynamodb")
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self._table}
        while True:
            with aws_errors():
                page = await ddb.scan(**kwargs)
            items.extend(from_item(i) for i in page.get("Items", ())
                         if i["pk"]["S"].startswith("PSP#"))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
