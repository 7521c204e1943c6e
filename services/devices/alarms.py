"""The alarm publisher: device alarms from the device-events bus to the alarms topic.

    DevicesTable (state + outbox) --> Pipe --> device-events bus
      --> rule AlarmPublishRule (ThresholdBreached, ThresholdCleared)
      --> AlarmPublishQueue --> AlarmPublisherFunction (`services.devices.alarms.handler`)
      --> SNS AlarmsTopic, message attributes tenant, severity, type, event_id
      --> AlarmNotificationsQueue (severity critical / major), AlarmAuditQueue (any tenant)

Alarms leave through the outbox like every other device event, so an alarm the telemetry
worker committed reaches SNS even if the worker dies right after the commit, and the
worker's hot path makes no SNS call. An EventBridge rule cannot target SNS with message
attributes, which the subscriptions filter on: hence this small hop.

Per SQS batch (up to 10 messages, the mapping's BatchSize):

1. Each message is decoded into a typed ThresholdBreached / ThresholdCleared
   (`decode_alarm`); anything else is DEAD_LETTER with the reason (a wiring or data error
   that no retry fixes).
2. One PublishBatch carries them all (`alarm_entry`: the envelope as the message, the
   attributes from `alarm_attributes`, the trace context as `traceparent`).
3. Entries SNS did not take are sent again in the same invocation (`AlarmPublisher`,
   `attempts`, short backoff). An entry SNS refuses as the sender's fault (SenderFault: too
   large, a bad attribute) is DEAD_LETTER at once with SNS's reason. What still failed after
   the last attempt, and every alarm of a request SNS refused as a whole (throttled, topic
   missing, not authorised, KMS key disabled: not the alarms' fault), is RETRY: back to the
   queue with the runtime's backoff, and to AlarmPublishDlq with the reason after the
   queue's maxReceiveCount. Nothing is dropped silently.

Delivery is at least once: a retried batch, an SQS redelivery or a relay restart can
publish an alarm twice. Subscribers deduplicate on the envelope id: the `id` field of the
message (the envelope) and the `event_id` message attribute carry it. Order is not kept
(a standard queue, invocations side by side): subscribers that keep alarm state order a
device's alarms by the envelope's `sequence`.

The IoT ingest Lambda (`services.devices.ingest`) publishes the alarms devices raise
themselves with the same attributes (`alarm_attributes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio
import structlog

from services.devices.events import ThresholdBreached, ThresholdCleared
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import BatchHandler, BatchResult, Message, Outcome
from shared.errors import AwsUnavailableError, InvalidMessageError, PermanentError, RetryableError
from shared.events import (
    ClaimCheckNotConfiguredError,
    TypedEvent,
    load_registered_events,
    registry,
)
from shared.hosts.lambda_ import sqs_handler
from shared.tracing import consumer_span, sns_trace_attributes

__all__ = [
    "ALARM_TYPES",
    "PUBLISH_BATCH_MAX",
    "AlarmPublisher",
    "AlarmTopic",
    "EntryFailure",
    "MemoryAlarmTopic",
    "NotPublished",
    "SnsAlarmTopic",
    "alarm_attributes",
    "alarm_entry",
    "alarm_publisher_handler",
    "build_handler",
    "decode_alarm",
    "handler",
    "settle_failures",
]

log = structlog.get_logger("services.devices.alarms")

ALARM_TYPES: Final = frozenset({"ThresholdBreached", "ThresholdCleared"})
PUBLISH_BATCH_MAX: Final = 10  # SNS PublishBatch takes at most 10 entries

Alarm = ThresholdBreached | ThresholdCleared


# --------------------------------------------------------------------------- messages (pure)


def alarm_attributes(
    *, tenant: str, severity: str, event_type: str, event_id: str
) -> dict[str, Any]:
    """The SNS message attributes of every alarm, whoever publishes it: `tenant` and
    `severity` (the subscriptions filter on them), `type`, and `event_id` (the envelope id,
    for subscribers to deduplicate: delivery is at least once)."""

    def text(value: str) -> dict[str, str]:
        return {"DataType": "String", "StringValue": value}

    return {"tenant": text(tenant), "severity": text(severity), "type": text(event_type),
            "event_id": text(event_id)}


def decode_alarm(message: Message) -> TypedEvent[Alarm]:
    """The ThresholdBreached / ThresholdCleared in `message` (any transport's body).

    Raises:
        InvalidMessageError: not an envelope, another event type, invalid data, no tenant
            (SNS refuses an empty attribute value, and the subscriptions filter on it), or a
            claim-checked payload (over 256 KB: more than SNS takes).
    """
    try:
        event = registry.decode(message.body)
    except ClaimCheckNotConfiguredError as exc:
        raise InvalidMessageError(f"claim-checked, too large for SNS ({exc})",
                                  field="data_ref") from exc
    data = event.data
    if not isinstance(data, ThresholdBreached | ThresholdCleared):
        raise InvalidMessageError(
            f"expected one of {sorted(ALARM_TYPES)}, got {event.type}", field="type")
    if not data.device.tenant_id:
        raise InvalidMessageError("must not be empty", field="data.device.tenant_id")
    return TypedEvent(event.envelope, data, event.spec)


def alarm_entry(entry_id: str, alarm: TypedEvent[Alarm]) -> dict[str, Any]:
    """A PublishBatch entry: the envelope as the message, `alarm_attributes`, and the
    current trace context (`traceparent`) so subscribers continue the trace."""
    envelope = alarm.envelope
    attributes = alarm_attributes(
        tenant=alarm.data.device.tenant_id, severity=str(alarm.data.severity),
        event_type=envelope.type, event_id=envelope.id,
    )
    return {"Id": entry_id, "Message": envelope.to_json(),
            "MessageAttributes": sns_trace_attributes(attributes)}


@dataclass(frozen=True, kw_only=True)
class EntryFailure:
    """One entry of a PublishBatch that SNS did not take (the response's `Failed`)."""

    id: str
    code: str
    message: str = ""
    sender_fault: bool = False

    @property
    def reason(self) -> str:
        """`<error class>: <what SNS said>`, as every consumer's DLQ reason reads."""
        said = f"SNS refused the entry: {self.message}" if self.message else "SNS refused it"
        return f"{self.code}: {said}"


@dataclass(frozen=True)
class NotPublished:
    """Why an entry is not on the topic, and what its message's delivery does about it."""

    outcome: Outcome  # RETRY or DEAD_LETTER
    reason: str


def settle_failures(
    failures: Sequence[EntryFailure], *, last_attempt: bool
) -> tuple[list[str], dict[str, NotPublished]]:
    """The entries to send again in this invocation, and those settled for good.

    A sender fault is DEAD_LETTER (the entry itself is refused; resending cannot help).
    Anything else is sent again, or, after the last attempt, RETRY (back to the queue).
    """
    again: list[str] = []
    settled: dict[str, NotPublished] = {}
    for failure in failures:
        if failure.sender_fault:
            settled[failure.id] = NotPublished(Outcome.DEAD_LETTER, failure.reason)
        elif last_attempt:
            settled[failure.id] = NotPublished(Outcome.RETRY, failure.reason)
        else:
            again.append(failure.id)
    return again, settled


# --------------------------------------------------------------------------- the topic seam


class AlarmTopic(Protocol):
    """Where alarms are published: `SnsAlarmTopic`, or `MemoryAlarmTopic` in tests."""

    async def publish_batch(self, entries: Sequence[Mapping[str, Any]]) -> list[EntryFailure]:
        """Publish up to 10 entries; returns the ones that failed.

        Raises:
            RetryableError: the request failed as a whole and may succeed later.
            PermanentError: the topic refused the request as a whole.
        """
        ...


class SnsAlarmTopic:
    """The alarms topic on SNS (thin)."""

    def __init__(self, aws: AwsClients, topic_arn: str) -> None:
        if not topic_arn:
            raise ValueError("topic_arn must name the alarms topic")
        self._aws = aws
        self.topic_arn = topic_arn

    async def publish_batch(self, entries: Sequence[Mapping[str, Any]]) -> list[EntryFailure]:
        """See `AlarmTopic.publish_batch` (SDK errors translated by `aws_errors`)."""
        sns = await self._aws.client("sns")
        with aws_errors():
            response = await sns.publish_batch(
                TopicArn=self.topic_arn, PublishBatchRequestEntries=list(entries))
        return [
            EntryFailure(id=str(f["Id"]), code=str(f.get("Code", "")),
                         message=str(f.get("Message", "")),
                         sender_fault=bool(f.get("SenderFault")))
            for f in response.get("Failed", [])
        ]


@dataclass
class MemoryAlarmTopic:
    """An in-memory `AlarmTopic` for tests. `published` keeps every accepted entry.
    `unavailable`: that many next requests fail as a whole (AwsUnavailableError).
    `refusals`: per event id (the entry's `event_id` attribute), the failures its next
    attempts meet, first one first."""

    published: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    unavailable: int = 0
    refusals: dict[str, list[EntryFailure]] = field(default_factory=dict)

    async def publish_batch(self, entries: Sequence[Mapping[str, Any]]) -> list[EntryFailure]:
        if len(entries) > PUBLISH_BATCH_MAX:
            raise ValueError(f"at most {PUBLISH_BATCH_MAX} entries, got {len(entries)}")
        self.requests += 1
        if self.unavailable > 0:
            self.unavailable -= 1
            raise AwsUnavailableError("alarms topic unavailable (test)", code="Throttled")
        failed: list[EntryFailure] = []
        for entry in entries:
            event_id = entry["MessageAttributes"]["event_id"]["StringValue"]
            queued = self.refusals.get(event_id)
            if queued:
                refusal = queued.pop(0)
                failed.append(EntryFailure(id=entry["Id"], code=refusal.code,
                                           message=refusal.message,
                                           sender_fault=refusal.sender_fault))
            else:
                self.published.append(dict(entry))
        return failed


# --------------------------------------------------------------------------- publishing


class AlarmPublisher:
    """Publishes entries in PublishBatch calls of 10, sending failed entries again up to
    `attempts` times per call of `publish` (waits `retry_delay`, doubled each time).

    Raises ValueError when `attempts` < 1 or `retry_delay` < 0.
    """

    def __init__(self, topic: AlarmTopic, *, attempts: int = 3, retry_delay: float = 0.05
                 ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        if retry_delay < 0:
            raise ValueError(f"retry_delay must be non-negative, got {retry_delay!r}")
        self._topic = topic
        self.attempts = attempts
        self.retry_delay = retry_delay

    async def publish(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, NotPublished]:
        """Publish every entry (distinct `Id`s); returns the ones not published, by `Id`.
        Never raises for a failed publish: the result says what to do with each."""
        not_published: dict[str, NotPublished] = {}
        for start in range(0, len(entries), PUBLISH_BATCH_MAX):
            chunk = entries[start:start + PUBLISH_BATCH_MAX]
            not_published.update(await self._publish_chunk({e["Id"]: e for e in chunk}))
        return not_published

    async def _publish_chunk(
        self, pending: dict[str, Mapping[str, Any]]
    ) -> dict[str, NotPublished]:
        settled: dict[str, NotPublished] = {}
        for attempt in range(1, self.attempts + 1):
            try:
                failures = await self._topic.publish_batch(list(pending.values()))
            except RetryableError as exc:  # throttled, 5xx, connection: all of them again
                failures = [EntryFailure(id=i, code=type(exc).__name__, message=str(exc))
                            for i in pending]
            except PermanentError as exc:
                # The request was refused as a whole (topic missing, not authorised, KMS):
                # not the alarms' fault, and not fixed within milliseconds. Back to the queue.
                log.error("alarms topic refused the request", error=str(exc),
                          alarms=len(pending))
                reason = f"{type(exc).__name__}: alarms topic refused the request: {exc}"
                settled.update({i: NotPublished(Outcome.RETRY, reason) for i in pending})
                return settled
            again, done = settle_failures(
                [f for f in failures if f.id in pending], last_attempt=attempt == self.attempts)
            settled.update(done)
            pending = {i: pending[i] for i in again}
            if not pending:
                break
            await anyio.sleep(self.retry_delay * 2 ** (attempt - 1))
        return settled


def alarm_publisher_handler(publisher: AlarmPublisher) -> BatchHandler:
    """The BatchHandler of AlarmPublishQueue (see the module docstring): one publish for
    the whole batch; each message's outcome is its alarm's."""

    async def handle(messages: Sequence[Message]) -> BatchResult:
        outcomes: dict[str, Outcome] = {}
        reasons: dict[str, str] = {}
        entries: list[dict[str, Any]] = []
        carried_by: dict[str, Message] = {}  # entry Id -> its message (Ids: 80 chars max)
        for message in messages:
            try:
                alarm = decode_alarm(message)
            except InvalidMessageError as exc:
                outcomes[message.id] = Outcome.DEAD_LETTER
                reasons[message.id] = f"{type(exc).__name__}: {exc}"
                log.warning("not an alarm", message_id=message.id, error=str(exc))
                continue
            with consumer_span(alarm, f"{alarm.type} publish", fallback=message, attributes={
                    "messaging.system": "aws_sqs", "messaging.message.id": message.id,
                    "messaging.destination.name": message.source_name}):
                # The entry's traceparent is this span: subscribers continue from here.
                entry_id = str(len(entries))
                entries.append(alarm_entry(entry_id, alarm))
            carried_by[entry_id] = message
        not_published = await publisher.publish(entries)
        for entry_id, message in carried_by.items():
            failure = not_published.get(entry_id)
            outcomes[message.id] = Outcome.SUCCEEDED if failure is None else failure.outcome
            if failure is not None:
                reasons[message.id] = failure.reason
        return BatchResult(outcomes, reasons)

    return handle


def build_handler(aws: AwsClients, resources: Resources) -> BatchHandler:
    """The BatchHandler over the stack's AlarmsTopic (FLEETLINE_ALARMS_TOPIC)."""
    load_registered_events()
    topic = SnsAlarmTopic(aws, resources.get("AlarmsTopic"))
    return alarm_publisher_handler(AlarmPublisher(topic))


handler = sqs_handler(setup=build_handler)
"""The Lambda on AlarmPublishQueue (`services.devices.alarms.handler`)."""
