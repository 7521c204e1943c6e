"""The unit of work: load aggregates, stage their new state and events, commit atomically.

    uow = UnitOfWork(aws)
    order = await uow.load(ItemRef(table=orders_table, key={"pk": order_id}))
    decision = domain.place(order.state, command)          # pure
    uow.save(order, decision.state, events=decision.events, processed_id=envelope_id)
    envelopes = await uow.commit()

One aggregate with the in-item inbox: ONE conditional PutItem (1 write unit per KB) carries
the state, the events and the processed id; the table's stream is the outbox. Several items
(or the inbox table): one TransactWriteItems (2 write units per KB), refused with
TransactionTooLargeError before anything is written when it would exceed 100 operations.

The batch committer (`shared.outbox._batch`) also writes independent aggregates, each with
its own condition, up to 25 in one BatchExecuteStatement (`commit_statements`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import anyio

from shared import tracing
from shared.aws import AwsClients, aws_errors, call_decoded
from shared.dynamodb import Statement, StatementResult, execute_statements, from_attr
from shared.errors import ConditionFailedError, TransactionCanceledError
from shared.events import ClaimCheck, Envelope
from shared.outbox._errors import (
    AlreadyProcessedError,
    ConcurrencyConflictError,
    OutboxError,
    TransactionTooLargeError,
)
from shared.outbox._item import (
    aggregate_from_item,
    build_write,
    key_of,
    write_operations,
)
from shared.outbox._model import (
    Aggregate,
    Emitted,
    EventDraft,
    ItemRef,
    OutboxConfig,
    StagedWrite,
)

__all__ = [
    "OpRef",
    "UnitOfWork",
    "WriteVerdict",
    "cancellation_verdicts",
    "commit_single",
    "commit_statements",
    "commit_transaction",
    "load_aggregates",
    "plan_transaction",
    "stage",
    "statement_verdicts",
]

_BATCH_GET_LIMIT: Final = 100


def stage(
    aggregate: Aggregate,
    state: Mapping[str, Any],
    *,
    events: Sequence[Emitted] = (),
    processed_ids: Sequence[str] = (),
    causation: Envelope | None = None,
    trace: Mapping[str, str] | None = None,
) -> StagedWrite:
    """A write of `aggregate` whose events become envelopes with the next per-aggregate
    sequence numbers, the trace context of now (or `trace`), and `causation` (the event being
    handled) as their cause unless a draft names its own.

    Raises TypeError when an event's model is not declared with `@event_type`."""
    carrier: dict[str, str] | None = dict(trace) if trace is not None else None
    envelopes: list[Envelope] = []
    for position, emitted in enumerate(events):
        draft = emitted if isinstance(emitted, EventDraft) else EventDraft(event=emitted)
        if draft.trace is None and carrier is None:
            carrier = tracing.current_carrier()  # only when a draft has no context of its own
        # An empty carrier (no span now) lets Envelope.new fall back to the cause's context.
        envelopes.append(Envelope.new(
            draft.event,
            aggregate_id=aggregate.ref.id,
            sequence=aggregate.last_sequence + position + 1,
            correlation_id=draft.correlation_id,
            causation=draft.causation or causation,
            causation_id=draft.causation_id,
            tenant_id=draft.tenant_id,
            trace=(dict(draft.trace) if draft.trace is not None else carrier) or None,
        ))
    return StagedWrite(
        aggregate=aggregate, state=dict(state), envelopes=tuple(envelopes),
        processed_ids=tuple(processed_ids),
    )


# ---------------------------------------------------------------- pure: transactions


@dataclass(frozen=True)
class OpRef:
    """Which staged write a transaction operation belongs to; `event_id` is set for an
    inbox-table record."""

    write: int
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class WriteVerdict:
    """What a cancelled transaction says about one staged write.

    - `duplicates`: event ids already processed (skip them; they are Outcome.DUPLICATE);
    - `current`: the item as it is now, when DynamoDB returned it (decide again on it);
    - `conflict`: the version moved (or the item appeared) and the ids were not duplicates;
    - `transient`: a code such as TransactionConflict or ThrottlingError: just retry;
    - none of these set: the write was fine and only cancelled because of another one.
    """

    duplicates: frozenset[str] = frozenset()
    current: Aggregate | None = None
    conflict: bool = False
    transient: str | None = None

    @property
    def clean(self) -> bool:
        return not (self.duplicates or self.conflict or self.transient)


def plan_transaction(
    writes: Sequence[StagedWrite], config: OutboxConfig, *, now: float
) -> tuple[list[dict[str, Any]], list[OpRef]]:
    """TransactItems for `writes` and, per item, the write it belongs to.

    Raises TransactionTooLargeError before anything is sent when the operations exceed
    `config.max_operations`; OutboxError when one item is written twice."""
    total = sum(write_operations(w, config) for w in writes)
    if total > config.max_operations:
        raise TransactionTooLargeError(total, config.max_operations)
    seen: set[str] = set()
    items: list[dict[str, Any]] = []
    refs: list[OpRef] = []
    for index, write in enumerate(writes):
        token = write.aggregate.ref.token
        if token in seen:
            raise OutboxError(f"item {token} is written twice in one commit; merge the changes")
        seen.add(token)
        entries = build_write(write, config, now=now)
        aggregate_put = dict(entries[0])
        aggregate_put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        items.append({"Put": aggregate_put})
        refs.append(OpRef(index))
        for event_id, inbox_put in zip(write.processed_ids, entries[1:], strict=False):
            items.append({"Put": inbox_put})
            refs.append(OpRef(index, event_id))
    return items, refs


def cancellation_verdicts(
    reasons: Sequence[Mapping[str, Any]],
    refs: Sequence[OpRef],
    writes: Sequence[StagedWrite],
    config: OutboxConfig,
) -> dict[int, WriteVerdict]:
    """Per staged write, what the CancellationReasons of a TransactionCanceledException say.

    A ConditionalCheckFailed on an inbox-table record, or on an aggregate whose returned item
    already lists the event id, marks that id a duplicate; on an aggregate whose returned item
    is this very write (the next version, holding its events: the SDK sent the request again
    after the first attempt's answer was lost), nothing (the write is done); on an aggregate
    otherwise, a conflict. Other codes than "None" are transient."""
    duplicates: dict[int, set[str]] = {}
    current: dict[int, Aggregate | None] = {}
    conflict: set[int] = set()
    transient: dict[int, str] = {}
    for reason, ref in zip(reasons, refs, strict=False):
        code = str(reason.get("Code") or "None")
        if code == "None":
            continue
        write = writes[ref.write]
        if code != "ConditionalCheckFailed":
            transient[ref.write] = code
            continue
        if ref.event_id is not None:
            duplicates.setdefault(ref.write, set()).add(ref.event_id)
            continue
        item = reason.get("Item")
        if item and _is_own_write(write, item, config):
            continue
        fresh = aggregate_from_item(write.aggregate.ref, item, config) if item else None
        current[ref.write] = fresh
        already = {i for i in write.processed_ids if fresh is not None and fresh.seen(i)}
        if already:
            duplicates.setdefault(ref.write, set()).update(already)
        else:
            conflict.add(ref.write)
    verdicts: dict[int, WriteVerdict] = {}
    for index in range(len(writes)):
        verdicts[index] = WriteVerdict(
            duplicates=frozenset(duplicates.get(index, ())),
            current=current.get(index),
            conflict=index in conflict,
            transient=transient.get(index),
        )
    return verdicts


def _is_own_write(write: StagedWrite, item: Mapping[str, Any], config: OutboxConfig) -> bool:
    """True when `item` (as a failed condition returned it) is what `write` itself wrote: the
    version after the one it read, with its events in the outbox attribute. Event ids are
    new per commit, so no other write can leave that item."""
    if not write.envelopes:
        return False
    version = item.get(config.version_attribute, {}).get("N")
    if version is None or int(version) != write.aggregate.version + 1:
        return False
    texts = item.get(config.outbox_attribute, {}).get("L") or ()
    stored: set[str] = set()
    for text in texts:
        try:
            stored.add(str(json.loads(text.get("S", "")).get("id")))
        except (ValueError, AttributeError):
            return False
    return {envelope.id for envelope in write.envelopes} <= stored


# ---------------------------------------------------------------- thin AWS calls


async def load_aggregates(
    aws: AwsClients, refs: Iterable[ItemRef], config: OutboxConfig, *, consistent: bool = False
) -> dict[str, Aggregate]:
    """Aggregates by `ItemRef.token`, with BatchGetItem (100 keys a request; unprocessed keys
    are asked again). Missing items come back with version 0.

    The response is decoded by orjson (`call_decoded`): this runs once per batch on the
    consumer's hot path, and botocore's shape walk over every returned attribute cost about a
    third of the call. (The request stays botocore's: its endpoint rules read the table names
    from it.)"""
    unique = {ref.token: ref for ref in refs}
    found: dict[str, Aggregate] = {t: Aggregate(ref=r, state={}) for t, r in unique.items()}
    if not unique:
        return found
    dynamodb = await aws.client("dynamodb")
    pending = list(unique.values())
    # Items come back unordered: match them to refs by table and key (compared decoded, so
    # botocore's and the wire form of a key are the same key).
    key_names: dict[str, tuple[str, ...]] = {r.table: tuple(r.key) for r in pending}
    keys = {r.token: key_of(r) for r in pending}
    by_key = {(r.table, _canonical(keys[r.token])): r for r in pending}
    for start in range(0, len(pending), _BATCH_GET_LIMIT):
        asked = pending[start:start + _BATCH_GET_LIMIT]
        attempt = 0
        while asked:
            request: dict[str, Any] = {}
            for ref in asked:
                entry = request.setdefault(ref.table, {"Keys": [], "ConsistentRead": consistent})
                entry["Keys"].append(keys[ref.token])
            response = await call_decoded(dynamodb, "BatchGetItem", RequestItems=request)
            for table, items in response.get("Responses", {}).items():
                names = key_names.get(table, ())
                for item in items:
                    matched = by_key.get((table, _canonical(item, names)))
                    if matched is not None:
                        found[matched.token] = aggregate_from_item(matched, item, config)
            asked = [
                again
                for table, entry in (response.get("UnprocessedKeys") or {}).items()
                for key in entry.get("Keys", ())
                if (again := by_key.get((table, _canonical(key)))) is not None
            ]
            if asked:
                attempt += 1
                await anyio.sleep(min(1.0, 0.05 * 2**attempt))
    return found


def _canonical(
    item: Mapping[str, Mapping[str, Any]], names: Iterable[str] | None = None
) -> tuple[tuple[str, Any], ...]:
    """The key of `item` (its attributes `names`, default all) as a hashable value: key
    attributes are strings, numbers or binary, each decoded by the codec."""
    chosen = sorted(item) if names is None else sorted(n for n in names if n in item)
    return tuple((name, from_attr(item[name])) for name in chosen)


async def commit_single(
    aws: AwsClients, write: StagedWrite, config: OutboxConfig, *, now: float
) -> WriteVerdict:
    """One conditional PutItem. Returns a clean verdict on success, else what failed."""
    entries = build_write(write, config, now=now)
    if len(entries) != 1:
        raise OutboxError("commit_single needs the in-item inbox; use commit_transaction")
    put = dict(entries[0])
    put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    dynamodb = await aws.client("dynamodb")
    try:
        with aws_errors():
            await dynamodb.put_item(**put)
    except ConditionFailedError as exc:
        return _condition_verdict(write, exc.item, config)
    return WriteVerdict()


def _condition_verdict(
    write: StagedWrite, item: Mapping[str, Any] | None, config: OutboxConfig
) -> WriteVerdict:
    """The verdict on a write whose condition failed, `item` being the item as it was."""
    return cancellation_verdicts(
        [{"Code": "ConditionalCheckFailed", "Item": item}], [OpRef(0)], [write], config
    )[0]


async def commit_statements(
    aws: AwsClients, writes: Sequence[tuple[StagedWrite, Statement]], config: OutboxConfig
) -> dict[int, WriteVerdict]:
    """Staged writes, each with its statement (`write_statement`), in one
    BatchExecuteStatement: one conditional write per aggregate at 1 write unit per KB, one
    request. The writes are independent: each verdict is clean when that write landed,
    whatever happened to the others.

    Raises ValueError over 25 writes (nothing sent); AwsUnavailableError / AwsRequestError
    when the request as a whole failed (then none of them was written)."""
    results = await execute_statements(aws, [statement for _, statement in writes])
    return statement_verdicts([write for write, _ in writes], results, config)


def statement_verdicts(
    writes: Sequence[StagedWrite], results: Sequence[StatementResult], config: OutboxConfig
) -> dict[int, WriteVerdict]:
    """Per staged write, what its statement's result says: applied -> clean; its condition
    failed -> as a cancelled transaction's ConditionalCheckFailed on it (a duplicate when the
    returned item lists the event id, else a conflict, with the item when returned); any
    other error -> transient (sent again)."""
    verdicts: dict[int, WriteVerdict] = {}
    for index, (write, result) in enumerate(zip(writes, results, strict=True)):
        if result.applied:
            verdicts[index] = WriteVerdict()
        elif result.condition_failed:
            verdicts[index] = _condition_verdict(write, result.item, config)
        else:
            verdicts[index] = WriteVerdict(transient=result.error)
    return verdicts


async def commit_transaction(
    aws: AwsClients, writes: Sequence[StagedWrite], config: OutboxConfig, *, now: float
) -> dict[int, WriteVerdict]:
    """One TransactWriteItems for `writes`. All verdicts clean when it committed; otherwise
    nothing was written and the verdicts say why.

    Raises TransactionTooLargeError (nothing sent) over the operation limit."""
    items, refs = plan_transaction(writes, config, now=now)
    dynamodb = await aws.client("dynamodb")
    try:
        with aws_errors():
            await dynamodb.transact_write_items(TransactItems=items)
    except TransactionCanceledError as exc:
        reasons = exc.reasons
        if not reasons:  # some emulators omit them: treat every write as conflicting
            return {i: WriteVerdict(conflict=True) for i in range(len(writes))}
        return cancellation_verdicts(reasons, refs, writes, config)
    return {i: WriteVerdict() for i in range(len(writes))}


# ---------------------------------------------------------------- the unit of work


@dataclass
class UnitOfWork:
    """Collects writes of aggregates and commits them atomically, once.

    Misuse is refused loudly: saving one aggregate twice, committing twice, saving after
    commit (OutboxError).

    With `claim_check`, an event whose PutEvents entry would exceed 256 KB has its `data`
    stored in S3 at commit, BEFORE the write, and is staged with `data_ref` (same id): the
    outbox item stays small (DynamoDB's 400 KB item limit would refuse payloads over
    ~350 KB), and the relay needs no bucket for it. A commit that then fails leaves the
    object behind; the key derives from the event id and the bucket's lifecycle expires it.
    The returned envelopes of such events carry `data_ref`, not `data`."""

    aws: AwsClients
    config: OutboxConfig = field(default_factory=OutboxConfig)
    claim_check: ClaimCheck | None = None
    _writes: list[StagedWrite] = field(default_factory=list, init=False)
    _tokens: set[str] = field(default_factory=set, init=False)  # staged items: O(1) check
    _committed: bool = field(default=False, init=False)

    async def load(self, ref: ItemRef, *, consistent: bool = True) -> Aggregate:
        """The aggregate at `ref` (version 0 and empty state when it does not exist)."""
        dynamodb = await self.aws.client("dynamodb")
        with aws_errors():
            response = await dynamodb.get_item(
                TableName=ref.table, Key=key_of(ref), ConsistentRead=consistent
            )
        return aggregate_from_item(ref, response.get("Item"), self.config)

    async def load_many(
        self, refs: Iterable[ItemRef], *, consistent: bool = False
    ) -> dict[str, Aggregate]:
        """Several aggregates by `ItemRef.token` with BatchGetItem."""
        return await load_aggregates(self.aws, refs, self.config, consistent=consistent)

    def save(
        self,
        aggregate: Aggregate,
        state: Mapping[str, Any],
        *,
        events: Sequence[Emitted] = (),
        processed_id: str | None = None,
        causation: Envelope | None = None,
    ) -> None:
        """Stage the new domain `state` of `aggregate` (all its domain attributes), the events
        to publish and the id of the event being handled (inbox). `causation` (the event
        being handled) becomes the cause and correlation of the new events.

        Raises OutboxError when the unit of work was committed or the aggregate is staged
        already; AlreadyProcessedError when its inbox already holds `processed_id`."""
        if self._committed:
            raise OutboxError("this unit of work was committed; start a new one")
        token = aggregate.ref.token
        if token in self._tokens:
            raise OutboxError(f"{token} is staged already; save it once")
        if processed_id is not None and aggregate.seen(processed_id):
            raise AlreadyProcessedError(processed_id)
        self._writes.append(
            stage(aggregate, state, events=events, causation=causation,
                  processed_ids=() if processed_id is None else (processed_id,))
        )
        self._tokens.add(token)

    @property
    def staged(self) -> tuple[StagedWrite, ...]:
        return tuple(self._writes)

    async def commit(self) -> tuple[Envelope, ...]:
        """Write everything staged atomically; returns the committed envelopes.

        Raises TransactionTooLargeError (nothing written) over 100 operations;
        AlreadyProcessedError when an inbox holds a processed id already;
        ConcurrencyConflictError (retryable, with the current items) when a version moved;
        AwsUnavailableError / AwsRequestError for other SDK failures (S3 included, with a
        claim check: then nothing is written)."""
        if self._committed:
            raise OutboxError("commit() was called already")
        self._committed = True
        writes = list(self._writes)
        if not writes:
            return ()
        if self.claim_check is not None:
            writes = [await self._offload(w, self.claim_check) for w in writes]
        now = time.time()
        single = len(writes) == 1 and write_operations(writes[0], self.config) == 1
        events = sum(len(w.envelopes) for w in writes)
        # The commit is a hop of its own in the trace (a CLIENT span: one DynamoDB write);
        # the relay's PRODUCER span follows it from the stream.
        with tracing.client_span(f"commit {writes[0].aggregate.ref.table}", attributes={
                "db.system": "aws.dynamodb",
                "db.operation.name": "PutItem" if single else "TransactWriteItems",
                "fleetline.outbox.writes": len(writes), "fleetline.outbox.events": events}):
            if single:
                verdicts = {0: await commit_single(self.aws, writes[0], self.config, now=now)}
            else:
                verdicts = await commit_transaction(self.aws, writes, self.config, now=now)
            _raise_for(verdicts, writes)
        return tuple(e for w in writes for e in w.envelopes)

    @staticmethod
    async def _offload(write: StagedWrite, claim_check: ClaimCheck) -> StagedWrite:
        envelopes = tuple([await claim_check.offload(e) for e in write.envelopes])
        return replace(write, envelopes=envelopes)


def _raise_for(verdicts: Mapping[int, WriteVerdict], writes: Sequence[StagedWrite]) -> None:
    for verdict in verdicts.values():
        if verdict.duplicates:
            raise AlreadyProcessedError(sorted(verdict.duplicates)[0])
    current = {
        writes[i].aggregate.ref.token: (None if v.current is None else dict(v.current.state))
        for i, v in verdicts.items() if v.conflict or v.transient
    }
    if current:
        transient = sorted({v.transient for v in verdicts.values() if v.transient})
        detail = f" ({', '.join(transient)})" if transient else ""
        raise ConcurrencyConflictError(
            f"commit cancelled{detail}: {', '.join(sorted(current))} changed since loaded",
            current=current,
        )
