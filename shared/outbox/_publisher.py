"""Publishing envelopes to an EventBridge bus with PutEvents.

Decisions are pure and unit-tested: `plan_batches` packs entries within 10 entries and
256 KB a request; `failed_entries` picks exactly the entries a partial failure names, so only
they are sent again; `EventPublisher.publish` keeps order per aggregate by sending at most one
event of an aggregate per round: event n+1 goes out only after event n succeeded.
An event is always published under its envelope id (it is in `Detail`), so a republish after
a relay restart is a duplicate every consumer's inbox drops.

Claim check: an entry over `max_request_bytes` (EventBridge's 256 KB) is, when a claim-check
bucket is configured (`PublisherConfig.claim_check_bucket`, the stack output
`ClaimCheckBucket`) or a `ClaimCheck` is passed in, published with its `data` stored in S3 and
`data_ref` in the envelope: same envelope id, so inboxes still drop republished copies, and
the S3 key derives from the id, so a retry overwrites the same object. `plan_claim_checks`
is the pure decision. Without a claim check such an event is refused for good (dead-letter).
Consumers resolve `data_ref` with `batch_handler(..., claim_check=)`.

Size budget: the event also rides the outbox item (DynamoDB's 400 KB item limit, state
included), so an event of up to ~350 KB can be staged and offloaded here; larger payloads
must be offloaded by the producer before commit (`ClaimCheck.store`, then stage the envelope
with `data_ref`).
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import structlog

from shared.aws import AwsClients, aws_errors
from shared.errors import is_retryable
from shared.events import ClaimCheck, Envelope, EventTooLargeError, put_events_entry_size
from shared.tracing import XRAY_HEADER, reparent_envelopes

__all__ = [
    "MAX_ENTRIES",
    "MAX_REQUEST_BYTES",
    "EventPublisher",
    "PublishReport",
    "PublisherConfig",
    "SendEntries",
    "entry_for",
    "entry_size",
    "failed_entries",
    "plan_batches",
    "plan_claim_checks",
]

MAX_ENTRIES: Final = 10
MAX_REQUEST_BYTES: Final = 256 * 1024
# Entry error codes that no retry can fix.
_PERMANENT_CODES: Final = frozenset(
    {"ValidationException", "MalformedDetail", "InvalidArgument", "AccessDeniedException",
     "NotAuthorizedForSourceException", "InvalidEventPatternException"}
)

_log = structlog.get_logger("shared.outbox.publisher")


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """Where and how to publish. Backoff is exponential with full jitter."""

    bus_name: str
    max_entries: int = MAX_ENTRIES
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    claim_check_bucket: str | None = None
    """S3 bucket for payloads over the limit (stack output `ClaimCheckBucket`); None refuses
    such events (dead-letter with the reason)."""
    endpoint_id: str | None = None
    """An EventBridge global endpoint to publish through (PutEvents `EndpointId`, the stack
    output `DeviceEventsEndpointId`): it routes to the bus of the same name in the primary
    or, after a failover, the secondary Region of the zone. None publishes to the bus in the
    client's Region (locally: the emulator has no global endpoints)."""
    max_in_flight: int = 8
    """PutEvents calls of one round sent at once. A round holds at most one event per
    aggregate, so its calls may overlap without reordering any aggregate's events; one
    call at a time made a burst (a fleet's first contact: a round of 1,000 devices is 100
    calls) wait for 100 round trips."""

    def __post_init__(self) -> None:
        if not self.bus_name:
            raise ValueError("bus_name must not be empty")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not 1 <= self.max_entries <= MAX_ENTRIES:
            raise ValueError(f"max_entries must be between 1 and {MAX_ENTRIES}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


def entry_for(envelope: Mapping[str, Any], bus_name: str) -> dict[str, Any]:
    """The PutEvents entry of an envelope: Source = source, DetailType = type, Detail = the
    envelope itself, TraceHeader = the X-Ray header captured at commit (when there is one)."""
    entry: dict[str, Any] = {
        "EventBusName": bus_name,
        "Source": str(envelope["source"]),
        "DetailType": str(envelope["type"]),
        "Detail": json.dumps(envelope, separators=(",", ":"), default=str),
    }
    trace = envelope.get("trace")
    if isinstance(trace, Mapping):
        header = trace.get(XRAY_HEADER)
        if header:
            entry["TraceHeader"] = str(header)
    return entry


def entry_size(entry: Mapping[str, Any]) -> int:
    """PutEvents' size of one entry (`shared.events.put_events_entry_size`)."""
    return put_events_entry_size(entry)


def plan_batches(
    sizes: Sequence[int], *, max_entries: int = MAX_ENTRIES,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> tuple[list[list[int]], list[int]]:
    """Split entries (by index, in order) into requests of at most `max_entries` entries and
    `max_bytes` bytes. Returns (batches, oversized): entries bigger than `max_bytes` alone can
    never be sent and are returned apart."""
    batches: list[list[int]] = []
    oversized: list[int] = []
    current: list[int] = []
    current_bytes = 0
    for index, size in enumerate(sizes):
        if size > max_bytes:
            oversized.append(index)
            continue
        if current and (len(current) >= max_entries or current_bytes + size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
    if current:
        batches.append(current)
    return batches, oversized


def plan_claim_checks(
    sizes: Sequence[int], *, max_bytes: int = MAX_REQUEST_BYTES, enabled: bool = True
) -> tuple[list[int], list[int]]:
    """Which entries (by index) go out with their data claim-checked to S3, and which can
    never be sent: (offload, refused). An entry over `max_bytes` is offloaded when a claim
    check is `enabled`, refused otherwise; the others are sent as they are."""
    big = [index for index, size in enumerate(sizes) if size > max_bytes]
    return (big, []) if enabled else ([], big)


def failed_entries(
    sent: Sequence[int], results: Sequence[Mapping[str, Any]]
) -> list[tuple[int, str, str]]:
    """The entries of a PutEvents response that failed, as (index, code, message).
    `results` is the response's `Entries`, aligned with `sent`."""
    failed: list[tuple[int, str, str]] = []
    for index, result in zip(sent, results, strict=False):
        code = result.get("ErrorCode")
        if code:
            failed.append((index, str(code), str(result.get("ErrorMessage") or "")))
    if len(results) < len(sent):  # a short answer: count the missing ones as failed
        failed.extend((i, "MissingResult", "no result for entry") for i in sent[len(results):])
    return failed


def is_permanent_code(code: str) -> bool:
    return code in _PERMANENT_CODES


@dataclass
class PublishReport:
    """Which envelope ids were published, and why the others were not."""

    published: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason
    permanent: set[str] = field(default_factory=set)  # ids that can never be published
    requests: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


SendEntries = Callable[[list[dict[str, Any]]], Awaitable[Sequence[Mapping[str, Any]]]]
"""The seam to EventBridge: send PutEvents entries, return the response's `Entries`."""


class EventPublisher:
    """Publishes envelopes to one bus, in order per aggregate, retrying only failed entries.

    `send` replaces the PutEvents call (an in-memory bus for tests of the ordering and retry
    rules); by default it is `events.put_events` through `aws`."""

    def __init__(
        self,
        aws: AwsClients | None,
        config: PublisherConfig,
        *,
        send: SendEntries | None = None,
        claim_check: ClaimCheck | None = None,
    ) -> None:
        """`claim_check` overrides `config.claim_check_bucket` (which needs `aws`).

        Raises ValueError when neither `aws` nor `send` is given, or a claim-check bucket is
        configured without `aws`."""
        if aws is None and send is None:
            raise ValueError("give aws or send")
        if claim_check is None and config.claim_check_bucket:
            if aws is None:
                raise ValueError("claim_check_bucket needs aws (S3) or pass claim_check")
            claim_check = ClaimCheck(aws, bucket=config.claim_check_bucket)
        self._aws = aws
        self.config = config
        self.claim_check = claim_check
        self._send = send or self._put_events
        self._span_attributes = {
            "messaging.system": "aws_eventbridge",
            "messaging.destination.name": config.bus_name,
            "messaging.operation.type": "send",
            "messaging.operation.name": "PutEvents",
        }

    async def _put_events(self, entries: list[dict[str, Any]]) -> Sequence[Mapping[str, Any]]:
        assert self._aws is not None
        events = await self._aws.client("events")
        with aws_errors():
            if self.config.endpoint_id:
                response = await events.put_events(
                    Entries=entries, EndpointId=self.config.endpoint_id)
            else:
                response = await events.put_events(Entries=entries)
        return list(response.get("Entries") or [])

    async def publish(self, envelopes: Sequence[Mapping[str, Any]]) -> PublishReport:
        """Publish `envelopes` (in stream order). An aggregate whose event fails is blocked:
        its later events in this call are not sent (reason "blocked by <id>").
        Never raises for entry failures; they are in the report."""
        report = PublishReport()
        queues: OrderedDict[str, deque[Mapping[str, Any]]] = OrderedDict()
        for envelope in envelopes:
            key = str(envelope.get("aggregate_id") or envelope["id"])
            queues.setdefault(key, deque()).append(envelope)
        while queues:
            heads = [queue.popleft() for queue in queues.values()]
            # A PRODUCER span per commit context (usually one per event): the child of the
            # commit, and the parent of every consumer (each envelope leaves carrying it).
            sent, spans = reparent_envelopes(heads, f"publish {self.config.bus_name}",
                                             attributes=self._span_attributes)
            failures: set[str] = set()
            try:
                failures = await self._send_round(sent, report)
            finally:
                spans.end(failures)
            for key in list(queues):
                if not queues[key]:
                    del queues[key]
            for envelope in heads:
                event_id = str(envelope["id"])
                if event_id not in failures:
                    continue
                key = str(envelope.get("aggregate_id") or event_id)
                for blocked in queues.pop(key, deque()):
                    report.failed[str(blocked["id"])] = f"blocked by {event_id}"
        return report

    async def _send_round(
        self, envelopes: Sequence[Mapping[str, Any]], report: PublishReport
    ) -> set[str]:
        entries = [entry_for(e, self.config.bus_name) for e in envelopes]
        ids = [str(e["id"]) for e in envelopes]
        failed: set[str] = set()
        offload, refused = plan_claim_checks(
            [entry_size(e) for e in entries], max_bytes=self.config.max_request_bytes,
            enabled=self.claim_check is not None,
        )
        for index in refused:
            failed.add(ids[index])
            report.permanent.add(ids[index])
            report.failed[ids[index]] = (
                f"event larger than {self.config.max_request_bytes} bytes and no claim-check "
                "bucket configured (PublisherConfig.claim_check_bucket)"
            )
        for index in offload:
            try:
                entries[index] = await self._offloaded_entry(envelopes[index])
            except Exception as exc:  # S3 down: retry the record; anything else: for good
                failed.add(ids[index])
                report.failed[ids[index]] = f"claim check failed: {exc}"
                if not is_retryable(exc):
                    report.permanent.add(ids[index])
                _log.warning("claim_check_failed", event_id=ids[index], error=str(exc))
        batches, oversized = plan_batches(
            [entry_size(e) for e in entries], max_entries=self.config.max_entries,
            max_bytes=self.config.max_request_bytes,
        )
        for index in oversized:
            if ids[index] in failed:
                continue
            failed.add(ids[index])
            report.permanent.add(ids[index])
            report.failed[ids[index]] = "event larger than 256 KB even after the claim check"
        pending = [i for batch in batches for i in batch if ids[i] not in failed]
        attempt = 0
        while pending:
            attempt += 1
            retry: list[int] = []
            batches = plan_batches(
                [entry_size(entries[i]) for i in pending], max_entries=self.config.max_entries,
                max_bytes=self.config.max_request_bytes,
            )[0]
            for answer in await self._put_all(
                    entries, [[pending[i] for i in batch] for batch in batches], report):
                for index, code, message in answer:
                    if is_permanent_code(code):
                        failed.add(ids[index])
                        report.permanent.add(ids[index])
                        report.failed[ids[index]] = f"{code}: {message}"
                    else:
                        retry.append(index)
                        report.failed[ids[index]] = f"{code}: {message}"
            for index in sent_ok(pending, retry, failed, ids):
                report.published.append(ids[index])
                report.failed.pop(ids[index], None)
            if retry and attempt >= self.config.max_attempts:
                failed.update(ids[i] for i in retry)
                break
            pending = retry
            if pending:
                delay = min(self.config.max_delay, self.config.base_delay * 2**attempt)
                await anyio.sleep(random.uniform(0, delay))  # jitter, not security
        return failed

    async def _offloaded_entry(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """The entry of `envelope` with its data stored in S3 (same id, `data_ref` set).

        Raises:
            pydantic.ValidationError: the envelope is not a valid Envelope (permanent).
            EventTooLargeError: the envelope is too large even without its data.
            shared.errors.AwsUnavailableError / AwsRequestError: from S3.
        """
        assert self.claim_check is not None
        stored = await self.claim_check.store(Envelope.model_validate(dict(envelope)))
        entry = entry_for(json.loads(stored.to_json()), self.config.bus_name)
        size = entry_size(entry)
        if size > self.config.max_request_bytes:
            raise EventTooLargeError(size, self.config.max_request_bytes)
        _log.info("claim_checked", event_id=stored.id,
                  bytes=stored.data_ref.size if stored.data_ref else None)
        return entry

    async def _put_all(
        self, entries: Sequence[Mapping[str, Any]], batches: Sequence[Sequence[int]],
        report: PublishReport,
    ) -> list[list[tuple[int, str, str]]]:
        """`_put` each batch, at most `max_in_flight` at once; the answers of all."""
        answers: list[list[tuple[int, str, str]]] = []
        limiter = anyio.CapacityLimiter(self.config.max_in_flight)

        async def put(sent: Sequence[int]) -> None:
            async with limiter:  # `_put` never raises: its failures are answers
                answers.append(await self._put(entries, sent, report))

        async with anyio.create_task_group() as tg:
            for batch in batches:
                tg.start_soon(put, batch)
        return answers

    async def _put(
        self, entries: Sequence[Mapping[str, Any]], sent: Sequence[int], report: PublishReport
    ) -> list[tuple[int, str, str]]:
        report.requests += 1
        try:
            results = await self._send([dict(entries[i]) for i in sent])
        except Exception as exc:  # the whole call failed: every entry is retried or refused
            code = "RequestFailed" if is_retryable(exc) else "ValidationException"
            _log.warning("put_events_failed", error=str(exc), entries=len(sent))
            return [(i, code, str(exc)) for i in sent]
        return failed_entries(sent, results)


def sent_ok(
    pending: Sequence[int], retry: Sequence[int], failed: set[str], ids: Sequence[str]
) -> list[int]:
    """Entries of this attempt that went through."""
    again = set(retry)
    return [i for i in pending if i not in again and ids[i] not in failed]
