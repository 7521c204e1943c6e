"""One commit for a whole batch of messages: the consumer side of the outbox.

    committer = BatchCommitter(aws, locate=lambda event: ItemRef(...), decide=domain.apply)
    consumer = SqsConsumer(..., handler=committer)      # a BatchHandler

For a batch: decode each message's envelope (dead-letter what cannot be read); drop copies of
the same event id within the batch (they share the first copy's fate, SUCCEEDED becoming
DUPLICATE); read every aggregate the batch touches with one BatchGetItem; skip events the
aggregate's inbox holds (DUPLICATE); run the pure `decide` per event in batch order,
folding several events of one aggregate into ONE write; then write:

- `WriteMode.STATEMENTS` (default): every aggregate is one conditional write (its state,
  events and processed ids ride in the item), up to 25 of them in one BatchExecuteStatement:
  a request per 25 aggregates, 1 write unit per KB. Each write lands or fails alone: one
  whose condition failed is a duplicate when the item it returns lists the event id, and is
  otherwise decided again on that item (no extra read); the others are done. One aggregate
  alone is one conditional PutItem; writes with inbox-table records (`InboxMode.TABLE`)
  need a transaction with those records and go as in TRANSACTION.
- `WriteMode.TRANSACTION`: one TransactWriteItems per 100 operations (one PutItem when a
  single aggregate is touched), 2 write units per KB. A cancellation names the items that
  failed: those whose returned item already lists the event id are duplicates; the others
  are decided again on the returned item (no extra read); the rest is resent as is.
  Retries go item by item (conditional PutItems), so one hot item cannot cancel the others
  again and two batches on the same items cannot keep colliding.
- `WriteMode.ITEMS`: one conditional PutItem per aggregate, sent concurrently: 1 write unit
  per KB, at one request each.

Each event is applied at most once in every mode: every write is conditional on the version
that was read, and the version moves with every write.
"""

from __future__ import annotations

import enum
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import structlog

from shared import tracing
from shared.aws import AwsClients
from shared.consumers import (
    BatchResult,
    Message,
    Outcome,
    destination_name,
    message_span_attributes,
)
from shared.dynamodb import MAX_STATEMENTS, Statement
from shared.errors import is_retryable
from shared.events import Envelope, parse_envelope
from shared.outbox._item import write_operations, write_statement
from shared.outbox._model import (
    Aggregate,
    Decision,
    Emitted,
    EventDraft,
    ItemRef,
    OutboxConfig,
    StagedWrite,
)
from shared.outbox._unit_of_work import (
    WriteVerdict,
    commit_single,
    commit_statements,
    commit_transaction,
    load_aggregates,
    stage,
)

__all__ = [
    "BatchCommitter",
    "BatchConfig",
    "WriteMode",
    "decode_envelope",
    "follower_outcome",
    "pack_transactions",
]

_log = structlog.get_logger("shared.outbox.batch")

Locate = Callable[[Envelope], ItemRef]
Decide = Callable[[Envelope, Aggregate], Decision | None]
Decode = Callable[[Message], Envelope]
DuplicateObserver = Callable[[int], None]


class WriteMode(enum.StrEnum):
    """How a batch's writes are sent (see the module docstring)."""

    STATEMENTS = "statements"  # one conditional write per aggregate, 25 to a request
    TRANSACTION = "transaction"  # one TransactWriteItems per 100 operations
    ITEMS = "items"  # one conditional PutItem per aggregate


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    write_mode: WriteMode = WriteMode.STATEMENTS
    max_attempts: int = 4
    consistent_reads: bool = False  # the conditional write catches a stale read

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


def decode_envelope(message: Message) -> Envelope:
    """The validated envelope in a message body (raw, EventBridge, SNS, ... see
    `shared.events.parse_envelope`). Raises InvalidMessageError naming the field."""
    return parse_envelope(message.body)


def follower_outcome(primary: Outcome) -> Outcome:
    """The outcome of a second copy of an event in the same batch."""
    return Outcome.DUPLICATE if primary in (Outcome.SUCCEEDED, Outcome.DUPLICATE) else primary


def pack_transactions(
    writes: Sequence[StagedWrite], config: OutboxConfig
) -> list[list[int]]:
    """Group writes (by index) into transactions of at most `config.max_operations`."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, write in enumerate(writes):
        ops = write_operations(write, config)
        if current and used + ops > config.max_operations:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += ops
    if current:
        groups.append(current)
    return groups


def _destination(message: Message) -> str:
    """The queue or stream a message came from, by its name (for span names)."""
    return destination_name(message.source_name) or str(message.source)


@dataclass
class _Entry:
    message: Message
    envelope: Envelope
    ref: ItemRef

    @property
    def event_id(self) -> str:
        return self.envelope.id


@dataclass
class _Batch:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    trace: tracing.BatchTrace | None = None

    def settle(self, message: Message, outcome: Outcome, reason: str | None = None) -> None:
        self.outcomes[message.id] = outcome
        if reason:
            self.reasons[message.id] = reason
        if outcome is Outcome.DUPLICATE:
            self.duplicates += 1


class BatchCommitter:
    """A BatchHandler that applies each message's event once, with one commit per batch.

    `locate(envelope)` names the aggregate an event changes; `decide(envelope, aggregate)` is
    the pure decision (new state and events, or None to ignore the event). An exception from
    either dead-letters the message when not retryable (InvalidMessageError, any
    PermanentError) and retries it otherwise; after a retried event, the later events of the
    same aggregate in the batch are retried too (unapplied), so order per aggregate holds."""

    def __init__(
        self,
        aws: AwsClients,
        *,
        locate: Locate,
        decide: Decide,
        config: BatchConfig | None = None,
        decode: Decode = decode_envelope,
        on_duplicates: DuplicateObserver | None = None,
    ) -> None:
        self._aws = aws
        self._locate = locate
        self._decide = decide
        self.config = config or BatchConfig()
        self._decode = decode
        self._on_duplicates = on_duplicates

    async def __call__(self, messages: Sequence[Message]) -> BatchResult:
        batch = _Batch()
        # Single-message batches cannot mix traces: no BatchTrace, nothing noted.
        batch.trace = tracing.BatchTrace() if len(messages) > 1 else None
        primaries: dict[str, _Entry] = {}
        followers: list[tuple[Message, str]] = []
        for message in messages:
            try:
                envelope = self._decode(message)
            except Exception as exc:
                self._fail(batch, message, exc)
                continue
            event_id = envelope.id
            if event_id in primaries:
                followers.append((message, event_id))
                continue
            try:
                ref = self._locate(envelope)
            except Exception as exc:
                self._fail(batch, message, exc)
                continue
            primaries[event_id] = _Entry(message, envelope, ref)
        if primaries:
            await self._apply(list(primaries.values()), batch)
        for message, event_id in followers:
            primary = primaries[event_id].message.id
            outcome = follower_outcome(batch.outcomes.get(primary, Outcome.RETRY))
            batch.settle(message, outcome, batch.reasons.get(primary))
        if batch.trace is not None and messages:
            batch.trace.finish(f"process {_destination(messages[0])} batch",
                               message_count=len(messages))
        if batch.duplicates:
            _log.info("duplicates_skipped", count=batch.duplicates)
            if self._on_duplicates is not None:
                self._on_duplicates(batch.duplicates)
        return BatchResult(batch.outcomes, batch.reasons)

    def _fail(self, batch: _Batch, message: Message, exc: BaseException) -> None:
        outcome = Outcome.RETRY if is_retryable(exc) else Outcome.DEAD_LETTER
        batch.settle(message, outcome, f"{type(exc).__name__}: {exc}")

    async def _apply(self, entries: list[_Entry], batch: _Batch) -> None:
        config = self.config
        aggregates = await load_aggregates(
            self._aws, (e.ref for e in entries), config.outbox, consistent=config.consistent_reads
        )
        pending: OrderedDict[str, list[_Entry]] = OrderedDict()
        for entry in entries:
            pending.setdefault(entry.ref.token, []).append(entry)
        for attempt in range(config.max_attempts):
            writes, written = self._decide_all(pending, aggregates, batch, first=attempt == 0)
            if not writes:
                return
            # A retry goes item by item: in one transaction, one conflicting item would cancel
            # the others again, and two batches on the same hot items could keep colliding.
            # (Statements are item by item already.)
            mode = config.write_mode
            if attempt > 0 and mode is WriteMode.TRANSACTION:
                mode = WriteMode.ITEMS
            verdicts, committed = await self._commit(writes, mode)
            reload: list[ItemRef] = []
            for index, verdict in verdicts.items():
                token = writes[index].aggregate.ref.token
                if index in committed:
                    for entry in written[index]:
                        batch.settle(entry.message, Outcome.SUCCEEDED)
                    pending.pop(token, None)
                    continue
                if verdict.current is not None:
                    aggregates[token] = verdict.current
                elif verdict.conflict:
                    reload.append(writes[index].aggregate.ref)
                if verdict.duplicates:
                    group = pending.get(token, [])
                    for entry in group:
                        if entry.event_id in verdict.duplicates:
                            batch.settle(entry.message, Outcome.DUPLICATE)
                    pending[token] = [e for e in group if e.event_id not in verdict.duplicates]
            if reload:
                aggregates.update(await load_aggregates(
                    self._aws, reload, config.outbox, consistent=True))
            for token in [t for t, group in pending.items() if not group]:
                del pending[token]
            if not pending:
                return
        for group in pending.values():
            for entry in group:
                batch.settle(entry.message, Outcome.RETRY,
                             f"write conflict after {config.max_attempts} attempts")

    def _decide_all(
        self,
        pending: Mapping[str, list[_Entry]],
        aggregates: Mapping[str, Aggregate],
        batch: _Batch,
        *,
        first: bool,
    ) -> tuple[list[StagedWrite], list[list[_Entry]]]:
        writes: list[StagedWrite] = []
        written: list[list[_Entry]] = []
        for token, group in pending.items():
            original = aggregates[token]
            view = original
            drafts: list[Emitted] = []
            applied: list[_Entry] = []
            halted: str | None = None
            for entry in list(group):
                if halted is not None:
                    # Order per aggregate: nothing after an event that must be retried.
                    batch.settle(entry.message, Outcome.RETRY,
                                 f"waits for event {halted} of the same aggregate")
                    group.remove(entry)
                    continue
                if view.seen(entry.event_id):
                    batch.settle(entry.message, Outcome.DUPLICATE)
                    group.remove(entry)
                    continue
                try:
                    # One consumer span per message, continuing its producer's trace; the
                    # events it causes carry this span's context. Producers are noted for
                    # the batch span only on the first attempt (retries see the same ones).
                    with tracing.consumer_span(
                        entry.envelope, f"process {_destination(entry.message)}",
                        attributes=message_span_attributes(entry.message),
                        batch=batch.trace if first else None, fallback=entry.message,
                    ):
                        decision = self._decide(entry.envelope, view)
                        caused_trace = tracing.current_carrier()
                except Exception as exc:
                    self._fail(batch, entry.message, exc)
                    group.remove(entry)
                    if is_retryable(exc):
                        halted = entry.event_id
                    continue
                if decision is None:
                    batch.settle(entry.message, Outcome.SUCCEEDED)
                    group.remove(entry)
                    continue
                cause = entry.envelope
                drafts.extend(
                    (e if e.trace is not None else replace(e, trace=caused_trace))
                    if isinstance(e, EventDraft)
                    else EventDraft(event=e, causation=cause, trace=caused_trace)
                    for e in decision.events
                )
                applied.append(entry)
                view = replace(
                    view, state=dict(decision.state),
                    last_sequence=view.last_sequence + len(decision.events),
                    processed=(*view.processed, entry.event_id),
                )
            if applied:
                writes.append(stage(
                    original, view.state, events=drafts,
                    processed_ids=[e.event_id for e in applied],
                ))
                written.append(applied)
        return writes, written

    async def _commit(
        self, writes: Sequence[StagedWrite], mode: WriteMode
    ) -> tuple[dict[int, WriteVerdict], set[int]]:
        """Send the writes; returns the verdict per write and the writes that landed (in a
        transaction a write lands only when its whole transaction committed; a statement or a
        PutItem lands alone)."""
        outbox = self.config.outbox
        now = time.time()
        verdicts: dict[int, WriteVerdict] = {}
        committed: set[int] = set()

        def settle(indexes: Sequence[int], result: Mapping[int, WriteVerdict], *,
                   atomic: bool) -> None:
            for position, index in enumerate(indexes):
                verdicts[index] = result[position]
            if atomic and not all(v.clean for v in result.values()):
                return
            committed.update(i for p, i in enumerate(indexes) if result[p].clean)

        async def single(index: int) -> None:
            settle([index], {0: await commit_single(self._aws, writes[index], outbox, now=now)},
                   atomic=False)

        async def transaction(indexes: list[int]) -> None:
            if len(indexes) == 1 and write_operations(writes[indexes[0]], outbox) == 1:
                await single(indexes[0])
                return
            chosen = [writes[i] for i in indexes]
            settle(indexes, await commit_transaction(self._aws, chosen, outbox, now=now),
                   atomic=True)

        async def statements(chunk: list[tuple[int, Statement]]) -> None:
            result = await commit_statements(
                self._aws, [(writes[i], statement) for i, statement in chunk], outbox)
            settle([i for i, _ in chunk], result, atomic=False)

        jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if mode is WriteMode.STATEMENTS:
            batched: list[tuple[int, Statement]] = []
            needs_transaction: list[int] = []
            for index, write in enumerate(writes):
                if write_operations(write, outbox) != 1:
                    needs_transaction.append(index)  # inbox-table records: atomic with it
                    continue
                statement = write_statement(write, outbox) if len(writes) > 1 else None
                if statement is None:
                    jobs.append(functools.partial(single, index))
                else:
                    batched.append((index, statement))
            if len(batched) == 1:  # a PutItem is the same write, and every emulator has it
                jobs.append(functools.partial(single, batched[0][0]))
            elif batched:
                jobs.extend(functools.partial(statements, batched[start:start + MAX_STATEMENTS])
                            for start in range(0, len(batched), MAX_STATEMENTS))
            chosen = [writes[i] for i in needs_transaction]
            jobs.extend(functools.partial(transaction, [needs_transaction[i] for i in group])
                        for group in pack_transactions(chosen, outbox))
        elif mode is WriteMode.ITEMS:
            jobs.extend(functools.partial(transaction, [i]) for i in range(len(writes)))
        else:
            jobs.extend(functools.partial(transaction, group)
                        for group in pack_transactions(writes, outbox))
        if len(jobs) == 1:
            await jobs[0]()
        else:
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(job)
        return verdicts, committed
