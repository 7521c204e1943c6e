"""Pure decisions of idempotency: the record, how to judge it, how to take a key.

    (none) --acquire--> INPROGRESS(owner, lease_until) --complete(owner)--> COMPLETED(result)
                            |  lease renewed by the holder's heartbeat
                            |  lease expired: another caller takes over (new owner);
                            |  the old holder's complete/renew is refused (fenced out)
                            '--effect failed--> deleted (release), so a retry may run
    any record past `expires_at` counts as absent (DynamoDB's TTL deletes it later)
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath  # type: ignore[import-untyped]

from shared.idempotency._errors import IdempotencyKeyError

__all__ = [
    "KeySource",
    "Record",
    "Status",
    "Verdict",
    "extract_key",
    "judge",
    "payload_hash",
]

KeySource = str | Callable[[Any], Any]


class Status(enum.StrEnum):
    IN_PROGRESS = "INPROGRESS"
    COMPLETED = "COMPLETED"


class Verdict(enum.StrEnum):
    ACQUIRE = "acquire"  # absent, expired, or an expired lease with the same payload
    RETURN_RESULT = "return-result"  # completed with the same payload
    IN_PROGRESS = "in-progress"  # someone holds a live lease
    KEY_REUSE = "key-reuse"  # same key, another payload


@dataclass(frozen=True, kw_only=True)
class Record:
    key: str
    status: Status
    owner: str
    payload_hash: str
    expires_at: float
    lease_until: float | None = None
    result: str | None = None  # JSON text

    @classmethod
    def from_item(cls, item: Mapping[str, Mapping[str, Any]], *, key_attribute: str,
                  ttl_attribute: str) -> Record:
        def text(name: str) -> str:
            return str(item.get(name, {}).get("S", ""))

        def number(name: str) -> float | None:
            raw = item.get(name, {}).get("N")
            return None if raw is None else float(raw)

        return cls(
            key=text(key_attribute), status=Status(text("status")), owner=text("owner"),
            payload_hash=text("payload_hash"), expires_at=number(ttl_attribute) or 0.0,
            lease_until=number("lease_until"), result=item.get("result", {}).get("S"),
        )


def judge(record: Record | None, payload_hash: str, *, now: float) -> Verdict:
    """What a caller with `payload_hash` may do about the stored `record` at `now`."""
    if record is None or record.expires_at <= now:
        return Verdict.ACQUIRE
    if record.payload_hash and payload_hash and record.payload_hash != payload_hash:
        return Verdict.KEY_REUSE
    if record.status is Status.COMPLETED:
        return Verdict.RETURN_RESULT
    if record.lease_until is not None and record.lease_until > now:
        return Verdict.IN_PROGRESS
    return Verdict.ACQUIRE


def extract_key(source: KeySource, payload: Any) -> str:
    """The idempotency key of `payload`: a JMESPath expression (`"order_id"`,
    `"body.payment.id"`, `"[customer, order]"`) or a function of the payload.

    Raises IdempotencyKeyError naming the expression when it finds nothing."""
    if callable(source):
        value = source(payload)
        label = getattr(source, "__name__", "key function")
    else:
        try:
            value = jmespath.search(source, payload)
        except jmespath.exceptions.JMESPathError as exc:
            raise IdempotencyKeyError(f"invalid expression ({exc})", field=source) from None
        label = source
    if value is None or value == "" or value == [] or value == {}:
        raise IdempotencyKeyError("no value for the idempotency key", field=label)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def payload_hash(payload: Any) -> str:
    """A stable hash of the request: SHA-256 of its canonical JSON."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
