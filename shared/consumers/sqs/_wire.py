"""The wire forms of SQS, in one place for the poller and the Lambda adapter (pure, no I/O).

- A `Message` is built by one builder, `message_from_sqs`, from one entry of
  ReceiveMessage's `Messages` (`MessageId`, `ReceiptHandle`, `Body`, `Attributes`,
  `MessageAttributes` with `StringValue`). A record of a Lambda SQS event (`messageId`,
  `receiptHandle`, `body`, `attributes`, `messageAttributes` with `stringValue`,
  `eventSourceARN`) is first put in that shape (`entry_from_record`), so both hosts make the
  same `Message` and a DLQ copy keeps the attributes and the trace header either way. The
  one difference is `source_name`: the queue URL from the poller, the queue ARN from Lambda
  (an event names its queue by ARN only).
- `parse_queue_arn`, `parse_redrive_policy`: a queue ARN's account and name, and the
  `RedrivePolicy` attribute (DLQ ARN, maxReceiveCount).
- `dead_letter_entry`: a SendMessageBatch entry moving a message to the DLQ with its reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from shared.consumers._message import Message, SourceKind

if TYPE_CHECKING:
    from shared.consumers.sqs._settle import Disposition

__all__ = [
    "DEAD_LETTER_ATTRIBUTE",
    "RedrivePolicy",
    "dead_letter_entry",
    "entry_from_record",
    "message_from_sqs",
    "message_from_sqs_record",
    "parse_queue_arn",
    "parse_redrive_policy",
]

DEAD_LETTER_ATTRIBUTE: Final = "fleetline.dead-letter"
"""Message attribute the consumer adds to what it sends to a DLQ: JSON with reason, source
queue, original message id, receive count and time."""

_SQS_MAX_ATTRIBUTES: Final = 10


def _string_attributes(raw: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (raw.get("MessageAttributes") or {}).items():
        text = value.get("StringValue")
        if text is not None:  # String and Number types; binary values stay in `raw`
            out[name] = str(text)
    trace = (raw.get("Attributes") or {}).get("AWSTraceHeader")
    if trace is not None:
        out.setdefault("AWSTraceHeader", str(trace))
    return out


def message_from_sqs(raw: Mapping[str, Any], queue_url: str) -> Message:
    """A `Message` from one entry of ReceiveMessage's `Messages`; `queue_url` becomes its
    `source_name`. `raw` is kept as the Message's `raw`."""
    system = raw.get("Attributes") or {}
    sent = system.get("SentTimestamp")
    receipt = raw.get("ReceiptHandle")
    return Message(
        id=str(raw["MessageId"]),
        body=str(raw.get("Body", "")),
        source=SourceKind.SQS,
        source_name=queue_url,
        attributes=_string_attributes(raw),
        receive_count=int(system.get("ApproximateReceiveCount", 1)),
        group_id=system.get("MessageGroupId"),
        sequence=system.get("SequenceNumber"),
        receipt=None if receipt is None else str(receipt),
        approximate_arrival=int(sent) / 1000.0 if sent is not None else None,
        raw=raw,
    )


def entry_from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A Lambda SQS record in ReceiveMessage's shape: the record's own keys plus `MessageId`,
    `ReceiptHandle`, `Body`, `Attributes` and the string-valued `MessageAttributes`."""
    system = record.get("attributes") or {}
    return {
        **record,
        "MessageId": record["messageId"],
        "ReceiptHandle": record.get("receiptHandle"),
        "Body": record.get("body", ""),
        "MessageAttributes": {
            name: {"DataType": v.get("dataType", "String"), "StringValue": v["stringValue"]}
            for name, v in (record.get("messageAttributes") or {}).items()
            if v.get("stringValue") is not None
        },
        "Attributes": dict(system),
    }


def message_from_sqs_record(record: Mapping[str, Any]) -> Message:
    """A `Message` from one record of an SQS event source mapping event; `source_name` is
    the queue's ARN (`eventSourceARN`)."""
    return message_from_sqs(entry_from_record(record), str(record.get("eventSourceARN", "")))


def parse_queue_arn(arn: str) -> tuple[str, str]:
    """`arn:aws:sqs:<region>:<account>:<name>` -> (account, name).

    Raises ValueError when `arn` has no account and name.
    """
    parts = arn.split(":")
    if len(parts) < 6 or not parts[4] or not parts[5]:
        raise ValueError(f"not an SQS queue ARN: {arn!r}")
    return parts[4], parts[5]


@dataclass(frozen=True, kw_only=True)
class RedrivePolicy:
    """A queue's `RedrivePolicy`: after `max_receive_count` receives SQS moves a message to
    the queue `dead_letter_target_arn`. Either may be None when the policy leaves it out."""

    dead_letter_target_arn: str | None
    max_receive_count: int | None


def parse_redrive_policy(text: str | None) -> RedrivePolicy | None:
    """The `RedrivePolicy` attribute (JSON text); None when the queue has none.

    Raises ValueError when the text is not JSON.
    """
    if not text:
        return None
    parsed = json.loads(text)
    target = parsed.get("deadLetterTargetArn")
    return RedrivePolicy(
        dead_letter_target_arn=str(target) if target else None,
        max_receive_count=int(parsed.get("maxReceiveCount", 0)) or None,
    )


def dead_letter_entry(
    index: int, d: Disposition, *, queue_url: str, dead_letter_queue_url: str
) -> dict[str, Any]:
    """A SendMessageBatch entry that moves `d.message` to the DLQ: same body, attributes and
    trace header, plus the `fleetline.dead-letter` attribute (reason, queue, id, receive count,
    time, time of the first receive) when the message leaves room for it (SQS allows 10
    attributes); `fleetline dlq peek` reads it."""
    m = d.message
    raw = m.raw
    attributes = dict(raw.get("MessageAttributes") or {})
    first = (raw.get("Attributes") or {}).get("ApproximateFirstReceiveTimestamp")
    note = json.dumps(
        {
            "reason": d.reason,
            "queue": queue_url,
            "message_id": m.id,
            "receive_count": m.receive_count,
            "at": round(time.time(), 3),
            "first_received_at": round(int(first) / 1000, 3) if first else None,
        }
    )
    if len(attributes) < _SQS_MAX_ATTRIBUTES:
        attributes[DEAD_LETTER_ATTRIBUTE] = {"DataType": "String", "StringValue": note}
    # else: the message already carries the maximum of 10 attributes; its own attributes
    # win, and the reason stays in the log line written for it.
    entry: dict[str, Any] = {"Id": str(index), "MessageBody": m.body}
    if attributes:
        entry["MessageAttributes"] = attributes
    trace = (raw.get("Attributes") or {}).get("AWSTraceHeader")
    if trace:
        entry["MessageSystemAttributes"] = {
            "AWSTraceHeader": {"DataType": "String", "StringValue": trace}
        }
    if dead_letter_queue_url.endswith(".fifo"):
        entry["MessageGroupId"] = m.group_id or "dead-letter"
        entry["MessageDeduplicationId"] = m.id
    return entry
