"""The stack's dead-letter queues: list, peek, redrive, purge (thin AWS calls over the
template's topology).

- `summaries()`: every DLQ the template declares, its depth, the age of its oldest message (from
  a sample of up to 10, whose SentTimestamp is when it was dead-lettered) and its sources.
- `peek(queue, n)`: up to `n` messages with what the runtime's `fleetline.dead-letter`
  attribute says (reason, error class, receive count, first failure, source queue) and the
  trace id; each is made visible again at once, so the messages stay in the DLQ.
- `redrive(queue, max_messages=None)`: back to the source. A DLQ with one source queue and
  no limit goes through `StartMessageMoveTask` (what AWS offers; the emulator's fix
  `message-moves` fills moto's gap); otherwise each message is received, sent to its own
  source (the queue the dead-letter note names, an EventBridge target queue, else the DLQ's
  one source queue) and deleted, up to `max_messages`. A message whose source cannot be told
  stays. The consumers deduplicate (inbox, idempotency), so a redriven message whose effect
  already happened changes nothing.
- `purge(queue)`: PurgeQueue.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.aws import AwsClients, aws_errors
from shared.errors import FleetlineError
from shared.operations._topology import DeadLetterSource

__all__ = [
    "DeadLetterQueues",
    "DlqSummary",
    "PeekedMessage",
    "RedriveResult",
    "UnknownQueueError",
    "error_class",
]

DEAD_LETTER_ATTRIBUTE = "fleetline.dead-letter"  # shared.consumers.sqs writes it
_GAVE_UP = re.compile(r"^gave up after \d+ receives: ")
_CLASS = re.compile(r"^([A-Z][A-Za-z0-9_]*)(?::|$)")
_ROOT = re.compile(r"Root=1-([0-9a-f]{8})-([0-9a-f]{24})")


class UnknownQueueError(FleetlineError):
    """The queue named is not one of the stack's DLQs (the message lists them)."""


def error_class(reason: str | None) -> str | None:
    """The error class a DLQ reason starts with (`InvalidMessageError: body: ...`, also after
    `gave up after N receives: `), or None when it names none (pure)."""
    if not reason:
        return None
    found = _CLASS.match(_GAVE_UP.sub("", reason))
    return found.group(1) if found else None


@dataclass(frozen=True, kw_only=True)
class DlqSummary:
    logical_id: str
    name: str
    depth: int
    in_flight: int
    oldest_age_s: float | None  # None when empty
    sources: tuple[str, ...]  # what dead-letters here: "<logical id> (<type>)"
    redrive_to: tuple[str, ...]  # the source queues (logical ids)


@dataclass(frozen=True, kw_only=True)
class PeekedMessage:
    message_id: str
    body: str
    reason: str | None
    error: str | None
    receive_count: int | None
    first_failure_at: float | None
    dead_lettered_at: float | None
    source_queue: str | None
    trace_id: str | None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RedriveResult:
    queue: str
    method: str  # "StartMessageMoveTask" or "receive-send-delete"
    moved: int
    by_destination: dict[str, int]
    left: int  # messages whose source could not be told (they stay)
    task_handle: str | None = None


def _queue_name(url_or_arn: str) -> str:
    return url_or_arn.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


class DeadLetterQueues:
    """The DLQs of one stack. `queues` maps every queue's logical id to its URL at this
    endpoint; `sources` is `dead_letter_sources(template)`."""

    def __init__(self, aws: AwsClients, queues: Mapping[str, str],
                 sources: Mapping[str, Sequence[DeadLetterSource]]) -> None:
        self._aws = aws
        self.queues = dict(queues)
        self.sources = {k: tuple(v) for k, v in sources.items() if k in queues}
        self._by_name = {_queue_name(url): lid for lid, url in self.queues.items()}

    def resolve(self, queue: str) -> str:
        """The logical id of the DLQ `queue` names (logical id, queue name or URL).

        Raises:
            UnknownQueueError: not a DLQ of the stack.
        """
        lid = queue if queue in self.queues else self._by_name.get(_queue_name(queue))
        if lid is None or lid not in self.sources:
            known = ", ".join(_queue_name(self.queues[d]) for d in self.sources)
            raise UnknownQueueError(f"{queue!r} is not a DLQ of the stack; its DLQs: {known}")
        return lid

    async def summaries(self) -> list[DlqSummary]:
        """Every DLQ, depth and oldest message first."""
        sqs = await self._aws.client("sqs")
        rows = []
        for lid, sources in self.sources.items():
            url = self.queues[lid]
            with aws_errors():
                attributes = (await sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
            depth = int(attributes.get("ApproximateNumberOfMessages", 0))
            oldest = None
            if depth:
                sample = await self._receive(url, 10, visibility=0)
                sent = [int(m["Attributes"]["SentTimestamp"]) / 1000 for m in sample
                        if "SentTimestamp" in m.get("Attributes", {})]
                oldest = round(time.time() - min(sent), 1) if sent else None
            rows.append(DlqSummary(
                logical_id=lid, name=_queue_name(url), depth=depth,
                in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                oldest_age_s=oldest,
                sources=tuple(f"{s.owner} ({s.kind})" for s in sources),
                redrive_to=tuple(sorted({s.queue for s in sources if s.queue}))))
        return sorted(rows, key=lambda r: (-r.depth, -(r.oldest_age_s or 0.0), r.name))

    async def _receive(self, url: str, count: int, *, visibility: int) -> list[dict[str, Any]]:
        sqs = await self._aws.client("sqs")
        with aws_errors():
            answer = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=max(1, min(10, count)),
                VisibilityTimeout=visibility, WaitTimeSeconds=0,
                MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
        return list(answer.get("Messages", ()))

    async def _release(self, url: str, messages: Sequence[Mapping[str, Any]]) -> None:
        sqs = await self._aws.client("sqs")
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            with aws_errors():
                await sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)])

    async def _take(self, url: str, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` messages, each once, held invisible for a minute."""
        taken: dict[str, dict[str, Any]] = {}
        while len(taken) < limit:
            batch = await self._receive(url, limit - len(taken), visibility=60)
            fresh = [m for m in batch if m["MessageId"] not in taken]
            if not fresh:
                break
            taken.update((m["MessageId"], m) for m in fresh)
        return list(taken.values())[:limit]

    async def peek(self, queue: str, n: int = 10) -> list[PeekedMessage]:
        """Up to `n` messages of the DLQ; they stay in it (visible again at once).

        Raises:
            UnknownQueueError: `queue` is not a DLQ of the stack.
            ValueError: `n` is not positive.
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n!r}")
        url = self.queues[self.resolve(queue)]
        raw = await self._take(url, n)
        try:
            return [_peeked(m) for m in raw]
        finally:
            await self._release(url, raw)

    async def purge(self, queue: str) -> int:
        """Delete every message of the DLQ; returns how many there were (approximately).

        Raises:
            UnknownQueueError: `queue` is not a DLQ of the stack.
        """
        url = self.queues[self.resolve(queue)]
        sqs = await self._aws.client("sqs")
        with aws_errors():
            depth = int((await sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            ))["Attributes"].get("ApproximateNumberOfMessages", 0))
            await sqs.purge_queue(QueueUrl=url)
        return depth

    async def redrive(self, queue: str, *, max_messages: int | None = None) -> RedriveResult:
        """Move the DLQ's messages (at most `max_messages`) back to their sources.

        Raises:
            UnknownQueueError: `queue` is not a DLQ of the stack.
            ValueError: `max_messages` is not positive.
        """
        if max_messages is not None and max_messages < 1:
            raise ValueError(f"max_messages must be positive, got {max_messages!r}")
        lid = self.resolve(queue)
        url = self.queues[lid]
        targets = sorted({s.queue for s in self.sources[lid] if s.queue})
        only_queues = all(s.kind == "AWS::SQS::Queue" for s in self.sources[lid])
        if max_messages is None and only_queues and len(targets) == 1:
            return await self._move_task(lid, url, self.queues[targets[0]])
        return await self._move_each(lid, url, targets, max_messages)

    async def _move_task(self, lid: str, url: str, destination: str) -> RedriveResult:
        sqs = await self._aws.client("sqs")
        with aws_errors():
            arns = [(await sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])
                     )["Attributes"]["QueueArn"] for u in (url, destination)]
            depth = int((await sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            ))["Attributes"].get("ApproximateNumberOfMessages", 0))
            handle = (await sqs.start_message_move_task(
                SourceArn=arns[0], DestinationArn=arns[1]))["TaskHandle"]
            tasks = (await sqs.list_message_move_tasks(SourceArn=arns[0], MaxResults=1)
                     ).get("Results", [])
        moved = int(tasks[0].get("ApproximateNumberOfMessagesMoved", depth)) if tasks else depth
        return RedriveResult(queue=_queue_name(url), method="StartMessageMoveTask", moved=moved,
                             by_destination={_queue_name(destination): moved}, left=0,
                             task_handle=handle)

    async def _move_each(self, lid: str, url: str, targets: Sequence[str],
                         max_messages: int | None) -> RedriveResult:
        sqs = await self._aws.client("sqs")
        by_destination: dict[str, int] = {}
        kept: list[dict[str, Any]] = []
        moved = 0
        limit = max_messages if max_messages is not None else 1_000_000
        while moved + len(kept) < limit:
            batch = await self._take(url, min(10, limit - moved - len(kept)))
            if not batch:
                break
            for message in batch:
                destination = self._destination(message, targets)
                if destination is None:
                    kept.append(message)
                    continue
                entry: dict[str, Any] = {"QueueUrl": destination, "MessageBody": message["Body"]}
                attributes = {k: v for k, v in (message.get("MessageAttributes") or {}).items()
                              if k != DEAD_LETTER_ATTRIBUTE}
                if attributes:
                    entry["MessageAttributes"] = attributes
                trace = (message.get("Attributes") or {}).get("AWSTraceHeader")
                if trace:
                    entry["MessageSystemAttributes"] = {
                        "AWSTraceHeader": {"DataType": "String", "StringValue": trace}}
                with aws_errors():
                    await sqs.send_message(**entry)
                    await sqs.delete_message(QueueUrl=url,
                                             ReceiptHandle=message["ReceiptHandle"])
                name = _queue_name(destination)
                by_destination[name] = by_destination.get(name, 0) + 1
                moved += 1
        await self._release(url, kept)
        return RedriveResult(queue=_queue_name(url), method="receive-send-delete", moved=moved,
                             by_destination=by_destination, left=len(kept))

    def _destination(self, message: Mapping[str, Any], targets: Sequence[str]) -> str | None:
        """The source queue URL of one dead-lettered message (None: cannot be told)."""
        attributes = message.get("MessageAttributes") or {}
        note = _note(attributes)
        for named in (note.get("queue"), (attributes.get("TARGET_ARN") or {}).get(
                "StringValue")):
            if isinstance(named, str) and named:
                lid = self._by_name.get(_queue_name(named))
                if lid is not None:
                    return self.queues[lid]
        if len(targets) == 1:
            return self.queues[targets[0]]
        return None


def _note(attributes: Mapping[str, Any]) -> dict[str, Any]:
    text = (attributes.get(DEAD_LETTER_ATTRIBUTE) or {}).get("StringValue")
    try:
        note = json.loads(text) if text else {}
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def _peeked(message: Mapping[str, Any]) -> PeekedMessage:
    attributes = message.get("MessageAttributes") or {}
    system = message.get("Attributes") or {}
    note = _note(attributes)
    reason = note.get("reason") or (attributes.get("ERROR_MESSAGE") or {}).get("StringValue")
    error = error_class(note.get("reason")) or (
        attributes.get("ERROR_CODE") or {}).get("StringValue")
    sent = system.get("SentTimestamp")
    return PeekedMessage(
        message_id=str(note.get("message_id") or message["MessageId"]),
        body=str(message.get("Body", "")),
        reason=reason,
        error=error,
        receive_count=note.get("receive_count"),
        first_failure_at=note.get("first_received_at") or note.get("at"),
        dead_lettered_at=note.get("at") or (int(sent) / 1000 if sent else None),
        source_queue=_queue_name(note["queue"]) if note.get("queue") else None,
        trace_id=_trace_id(system.get("AWSTraceHeader"), str(message.get("Body", ""))),
        attributes={k: str(v.get("StringValue")) for k, v in attributes.items()
                    if v.get("StringValue") is not None and k != DEAD_LETTER_ATTRIBUTE},
    )


def _trace_id(header: str | None, body: str) -> str | None:
    """The W3C trace id (32 hex) from the X-Ray header, else from the envelope's trace."""
    if header:
        found = _ROOT.search(header)
        if found:
            return found.group(1) + found.group(2)
    found_parent = re.search(r"\"traceparent\"\s*:\s*\"00-([0-9a-f]{32})-", body)
    return found_parent.group(1) if found_parent else None
