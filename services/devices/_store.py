"""Where device state lives: the seam between the telemetry worker and DynamoDB.

`DeviceStore` is the narrow interface (load many, commit many, scan the online ones for the
stored sweep); `DynamoDeviceStore` writes through the outbox unit of work's pieces
(`shared.outbox`): each device is one item whose write is conditional on its `version`,
carries the device's new events in its `outbox` attribute (the table's stream is the outbox;
the relay publishes them), and up to 100 devices go in one TransactWriteItems.
`MemoryDeviceStore` is the in-memory twin for unit tests of the worker.

Item layout (DevicesTable, partition key `device_id`): `tenant_id` and `status` as top-level
attributes (readable in the console, usable by indexes), and `doc`, the whole state as
compact JSON (every attribute costs serialisation time on each of thousands of writes a
second, so the rest stays inside `doc`); plus the unit of work's `version`, `event_seq`,
`outbox`.

Last-seen items. A device item is written when the device's state changes; the last-seen of
devices whose newer readings changed nothing is written packed, many devices to an item
(`put_last_seen`): key `~last-seen#<writer>#<epoch second>#<n>` (device ids never start
with `~`: `domain.parse_record` refuses them), `kind` = `last-seen`, `seen` = compact JSON
`{device_id: [last_seen, last_arrival, seq]}` of up to `LAST_SEEN_PER_ITEM` devices, and
`expires_at` (the table's TTL attribute). Each is written once and never updated, so two
workers never contend for one; readers take the newest arrival per device
(`scan_last_seen`). The stream's records of these items carry no `outbox`: the relay
publishes nothing for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import orjson

from services.devices.domain import DeviceState
from services.devices.events import DeviceEvent, Status
from shared import tracing
from shared.aws import AwsClients, aws_errors, call_decoded
from shared.dynamodb import wire_json
from shared.errors import ConditionFailedError, RetryableError, TransactionCanceledError
from shared.outbox import (
    Aggregate,
    EventDraft,
    ItemRef,
    ItemWrite,
    OutboxConfig,
    StagedWrite,
    UnitOfWork,
    cancellation_verdicts,
    item_put,
    plan_transaction,
    stage,
)

__all__ = [
    "CommitResult",
    "DeviceStore",
    "DeviceWrite",
    "DynamoDeviceStore",
    "LastSeen",
    "MemoryDeviceStore",
    "StoredDevice",
]

TRANSACTION_LIMIT = 100
# Devices per last-seen item: about 70 bytes each, so an item stays near 280 KB, under
# DynamoDB's 400 KB item limit with room for long device ids.
LAST_SEEN_PER_ITEM = 4000
LAST_SEEN_PREFIX = "~last-seen#"
_BATCH_WRITE_LIMIT = 25


@dataclass(frozen=True, slots=True)
class LastSeen:
    """A device's newest applied reading that its item does not carry yet."""

    device_id: str
    last_seen: float  # the device's own clock (`ts`)
    last_arrival: float  # the stream's arrival time: silence is measured from it
    seq: int


class TransientStoreError(RetryableError):
    """A write the store kept refusing for a transient reason (unprocessed items)."""


@dataclass(slots=True)
class StoredDevice:
    """A device as the store has it: its state and the store's bookkeeping."""

    state: DeviceState
    version: int  # 0: not stored yet


@dataclass(frozen=True, slots=True)
class DeviceWrite:
    """The device's current state and the events since its last write."""

    state: DeviceState
    version: int
    events: Sequence[DeviceEvent] = ()


@dataclass(frozen=True)
class CommitResult:
    """Per device id: committed (with the envelopes written), conflicting (someone else wrote
    it: reload), or failed transiently (retry)."""

    committed: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    conflicts: frozenset[str] = frozenset()
    transient: frozenset[str] = frozenset()


class DeviceStore(Protocol):
    async def load(self, device_ids: Iterable[str]) -> dict[str, StoredDevice]:
        """Stored devices by id; ids not stored are absent."""
        ...

    async def commit(self, writes: Sequence[DeviceWrite]) -> CommitResult:
        """Write up to 100 devices; each is conditional on its version."""
        ...

    def scan_online(self, *, page_size: int | None = None) -> AsyncIterator[list[StoredDevice]]:
        """Every device stored ONLINE, a page at a time (the whole table is read: see
        docs/devices.md for what that costs). `page_size` caps the items read per request
        (None: the service's page, 1 MB in DynamoDB)."""
        ...

    async def put_last_seen(
        self, entries: Sequence[LastSeen], *, writer: str, now: float, expires_at: float
    ) -> int:
        """Write `entries` packed into last-seen items (module docstring); returns how many
        items were written."""
        ...

    async def scan_last_seen(self) -> dict[str, float]:
        """The newest last-seen arrival per device over every last-seen item."""
        ...


def state_attributes(state: DeviceState) -> dict[str, Any]:
    """`tenant_id`, `status` and `doc`: `DeviceState.to_doc()` without the store's
    bookkeeping (`version`, `event_seq`) as compact JSON. Built field by field without the
    copies `to_doc` makes (it runs once per device write; the enums are str subclasses, so
    they encode as their values); a unit test holds it equal to the `to_doc` form."""
    status = str(state.status)
    doc = {
        "device_id": state.device_id,
        "tenant_id": state.tenant_id,
        "zone": state.zone,
        "seq": state.seq,
        "last_seen": state.last_seen,
        "status": status,
        "firmware": state.firmware,
        "readings": state.readings,
        "reported": state.reported,
        "desired": state.desired,
        "desired_version": state.desired_version,
        "delta": state.delta,
        "alarms": state.alarms,
        "update_report": state.update_report,
        "received": state.received,
        "last_arrival": state.last_arrival,
    }
    return {
        "tenant_id": state.tenant_id,
        "status": status,
        "doc": orjson.dumps(doc).decode(),
    }


def state_from_attributes(
    values: Mapping[str, Any], *, version: int, event_seq: int
) -> DeviceState:
    doc = dict(json.loads(values["doc"]))
    doc["version"] = version
    doc["event_seq"] = event_seq
    return DeviceState.from_doc(doc)


def event_draft(event: DeviceEvent) -> EventDraft:
    return EventDraft(event=event, tenant_id=event.device.tenant_id)


class DynamoDeviceStore:
    """DevicesTable through the outbox unit of work (see the module docstring)."""

    def __init__(self, aws: AwsClients, table: str, *, config: OutboxConfig | None = None) -> None:
        if not table:
            raise ValueError("table must name the devices table")
        self._aws = aws
        self._table = table
        self._config = config or OutboxConfig()

    def _ref(self, device_id: str) -> ItemRef:
        return ItemRef(table=self._table, key={"device_id": device_id}, aggregate_id=device_id)

    async def load(self, device_ids: Iterable[str]) -> dict[str, StoredDevice]:
        refs = {device_id: self._ref(device_id) for device_id in device_ids}
        if not refs:
            return {}
        found = await UnitOfWork(self._aws, self._config).load_many(refs.values())
        out: dict[str, StoredDevice] = {}
        for device_id, ref in refs.items():
            aggregate = found.get(ref.token)
            if aggregate is None or not aggregate.exists:
                continue
            out[device_id] = StoredDevice(
                state=state_from_attributes(
                    aggregate.state, version=aggregate.version,
                    event_seq=aggregate.last_sequence,
                ),
                version=aggregate.version,
            )
        return out

    async def commit(self, writes: Sequence[DeviceWrite]) -> CommitResult:
        """Write the devices as ONE request: a conditional PutItem for one device, a
        TransactWriteItems for several (its cancellation reasons say which devices
        conflicted; the rest were only cancelled along with them).

        The hot path is built by hand, because at thousands of device writes a second the
        generic pieces cost more than the rest of the worker: the state's attributes are
        encoded directly in DynamoDB JSON and the item written by the outbox's one item
        writer (`device_put` -> `shared.outbox.item_put`, the request `build_write` makes
        from the same state; tested), only writes with events go through the unit of work's
        `stage` (envelope ids, sequences, trace context), and the transaction's JSON body is
        encoded once by orjson instead of botocore's shape-walking serializer (see
        `_send_transaction`). The unit of work's `save` is not used: the worker never
        stages a device twice."""
        if len(writes) > TRANSACTION_LIMIT:
            raise ValueError(f"at most {TRANSACTION_LIMIT} devices per commit, got {len(writes)}")
        if not writes:
            return CommitResult()
        config = self._config
        staged: dict[int, StagedWrite] = {}
        puts: list[dict[str, Any]] = []
        envelope_texts: list[list[str]] = []
        # The context of the batch that caused the events (its span), read once per commit.
        carrier = tracing.current_carrier() if any(w.events for w in writes) else {}
        for index, w in enumerate(writes):
            texts: list[str] = []
            if w.events:
                staged[index] = staged_write = stage(
                    self._aggregate(w), {}, events=[event_draft(e) for e in w.events],
                    trace=carrier)
                texts = [e.to_json() for e in staged_write.envelopes]
            envelope_texts.append(texts)
            puts.append(device_put(self._table, w.state, w.version, texts, config,
                                   return_old=len(writes) > 1))
        dynamodb = await self._aws.client("dynamodb")
        conflicts: set[str] = set()
        ids = [w.state.device_id for w in writes]
        try:
            if len(puts) == 1:
                with aws_errors():
                    await dynamodb.put_item(**puts[0])
            else:
                await self._send_transaction(puts)
        except ConditionFailedError:
            return CommitResult(conflicts=frozenset(ids))
        except TransactionCanceledError as exc:
            reasons = exc.reasons
            if not reasons or len(reasons) != len(writes):
                return CommitResult(transient=frozenset(ids))
            # Rare: build the unit of work's view of every write to read the reasons with
            # its own `cancellation_verdicts` (one operation per device, in order).
            all_staged = [staged.get(i) or stage(self._aggregate(w), {}, trace={})
                          for i, w in enumerate(writes)]
            _, refs = plan_transaction(all_staged, config, now=time.time())
            verdicts = cancellation_verdicts(reasons, refs, all_staged, config)
            for index, verdict in verdicts.items():
                if verdict.conflict or verdict.duplicates:
                    conflicts.add(ids[index])
            return CommitResult(conflicts=frozenset(conflicts),
                                transient=frozenset(ids) - conflicts)
        committed: dict[str, list[Mapping[str, Any]]] = {}
        for write, texts in zip(writes, envelope_texts, strict=True):
            committed[write.state.device_id] = [json.loads(t) for t in texts]
        return CommitResult(committed)

    async def put_last_seen(
        self, entries: Sequence[LastSeen], *, writer: str, now: float, expires_at: float
    ) -> int:
        """BatchWriteItem of the packed items (25 a call); unprocessed items are sent again.

        Raises:
            shared.errors types (`aws_errors`): throttling and other SDK errors; items
                already written stay (they are only newer last-seen values).
        """
        items = last_seen_items(entries, writer=writer, now=now, expires_at=expires_at)
        if not items:
            return 0
        dynamodb = await self._aws.client("dynamodb")
        for start in range(0, len(items), _BATCH_WRITE_LIMIT):
            requests = [{"PutRequest": {"Item": item}}
                        for item in items[start:start + _BATCH_WRITE_LIMIT]]
            for attempt in range(6):
                with aws_errors():
                    answer = await dynamodb.batch_write_item(
                        RequestItems={self._table: requests})
                requests = answer.get("UnprocessedItems", {}).get(self._table, [])
                if not requests:
                    break
                await anyio.sleep(min(0.05 * 2**attempt, 1.0))
            if requests:
                raise TransientStoreError(
                    f"{len(requests)} last-seen item(s) unprocessed after retries")
        return len(items)

    async def scan_last_seen(self) -> dict[str, float]:
        """A Scan filtered on `kind` = `last-seen` (it reads, and is billed for, the whole
        table like `scan_online`).

        Raises:
            shared.errors types (`aws_errors`): throttling and other SDK errors.
        """
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "#k = :kind",
            "ProjectionExpression": "#s",
            "ExpressionAttributeNames": {"#k": "kind", "#s": "seen"},
            "ExpressionAttributeValues": {":kind": {"S": "last-seen"}},
        }
        dynamodb = await self._aws.client("dynamodb")
        newest: dict[str, float] = {}
        while True:
            with aws_errors():
                page = await call_decoded(dynamodb, "Scan", **kwargs)
            for item in page.get("Items", []):
                merge_last_seen(newest, item["seen"]["S"])
            last = page.get("LastEvaluatedKey")
            if not last:
                return newest
            kwargs["ExclusiveStartKey"] = last

    def _aggregate(self, write: DeviceWrite) -> Aggregate:
        return Aggregate(ref=self._ref(write.state.device_id), state={}, version=write.version,
                         last_sequence=write.state.event_seq - len(write.events))

    async def _send_transaction(self, puts: Sequence[Mapping[str, Any]]) -> None:
        """TransactWriteItems of `puts`, its body encoded by orjson: the puts are already in
        DynamoDB JSON, and botocore's serializer would walk every attribute value again
        (about a third of the worker's CPU at 100 devices a call; see `shared._wire`)."""
        body = wire_json({"TransactItems": [{"Put": put} for put in puts]})
        await self._aws.send_encoded("dynamodb", "TransactWriteItems", body)

    async def scan_online(
        self, *, page_size: int | None = None
    ) -> AsyncIterator[list[StoredDevice]]:
        """A Scan filtered on the top-level `status` attribute, projected on what a device's
        state and its conditional write need (not `tenant_id`, which `doc` repeats, nor the
        `outbox` of the last write). The filter and projection cut the bytes sent, not the
        read units: DynamoDB bills every item the Scan reads. Pages without an online device
        are not yielded.

        Raises:
            shared.errors types (`aws_errors`): throttling and other SDK errors.
        """
        config = self._config
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "#s = :online",
            "ProjectionExpression": "#k, #s, #d, #v, #q",
            "ExpressionAttributeNames": {
                "#k": "device_id", "#s": "status", "#d": "doc",
                "#v": config.version_attribute, "#q": config.sequence_attribute,
            },
            "ExpressionAttributeValues": {":online": {"S": Status.ONLINE.value}},
        }
        if page_size is not None:
            if page_size < 1:
                raise ValueError(f"page_size must be >= 1, got {page_size}")
            kwargs["Limit"] = page_size
        dynamodb = await self._aws.client("dynamodb")
        while True:
            with aws_errors():  # the page as wire JSON: the same DynamoDB JSON, unwalked
                page = await call_decoded(dynamodb, "Scan", **kwargs)
            devices = []
            for item in page.get("Items", []):
                version = int(item[config.version_attribute]["N"])
                event_seq = int(item.get(config.sequence_attribute, {"N": "0"})["N"])
                devices.append(StoredDevice(
                    state=state_from_attributes({"doc": item["doc"]["S"]}, version=version,
                                                event_seq=event_seq),
                    version=version,
                ))
            if devices:
                yield devices
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last




def last_seen_items(
    entries: Sequence[LastSeen], *, writer: str, now: float, expires_at: float
) -> list[dict[str, Any]]:
    """The packed last-seen items (DynamoDB JSON) of `entries`, `LAST_SEEN_PER_ITEM` devices
    each (module docstring). Pure."""
    items = []
    for index, start in enumerate(range(0, len(entries), LAST_SEEN_PER_ITEM)):
        seen = {e.device_id: [e.last_seen, e.last_arrival, e.seq]
                for e in entries[start:start + LAST_SEEN_PER_ITEM]}
        items.append({
            "device_id": {"S": f"{LAST_SEEN_PREFIX}{writer}#{int(now)}#{index}"},
            "kind": {"S": "last-seen"},
            "seen": {"S": orjson.dumps(seen).decode()},
            "expires_at": {"N": str(int(expires_at))},
        })
    return items


def merge_last_seen(newest: dict[str, float], seen_text: str) -> None:
    """Fold one item's `seen` into `newest` (device id -> newest arrival)."""
    for device_id, (_, arrival, _) in orjson.loads(seen_text).items():
        if arrival > newest.get(device_id, 0.0):
            newest[device_id] = arrival


def device_put(
    table: str, state: DeviceState, version: int, envelopes: Sequence[str],
    config: OutboxConfig, *, return_old: bool = False,
) -> dict[str, Any]:
    """The conditional PutItem of one device: the outbox's item write (`item_put`) of its
    key, its state attributes (`tenant_id`, `status`, `doc`, encoded here without the
    codec's generic per-value walk: three strings), the next `version` and `event_seq`, and
    the envelopes (JSON texts) in the outbox attribute; conditional on the version read, or
    on the item not existing for version 0. `return_old` asks for the item as it is when the
    condition fails (in a transaction: its cancellation reasons then carry it)."""
    attributes = state_attributes(state)
    write = ItemWrite(
        table=table, key={"device_id": {"S": state.device_id}},
        state={"tenant_id": {"S": attributes["tenant_id"]},
               "status": {"S": attributes["status"]}, "doc": {"S": attributes["doc"]}},
        version=version, event_seq=state.event_seq, envelopes=envelopes,
    )
    return item_put(write, config, return_old=return_old)


class MemoryDeviceStore:
    """The store in a dict, with the same version conditions. For tests."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[dict[str, Any], int, int]] = {}
        self.envelopes: list[dict[str, Any]] = []
        self.commits = 0
        self.loads = 0
        self.last_seen: list[dict[str, Any]] = []  # the packed items, as written

    async def load(self, device_ids: Iterable[str]) -> dict[str, StoredDevice]:
        self.loads += 1
        out = {}
        for device_id in device_ids:
            if device_id in self.items:
                attrs, version, event_seq = self.items[device_id]
                out[device_id] = StoredDevice(
                    state=state_from_attributes(attrs, version=version, event_seq=event_seq),
                    version=version,
                )
        return out

    async def commit(self, writes: Sequence[DeviceWrite]) -> CommitResult:
        self.commits += 1
        conflicts = {
            w.state.device_id for w in writes
            if self.items.get(w.state.device_id, ({}, 0, 0))[1] != w.version
        }
        if conflicts:
            return CommitResult(conflicts=frozenset(conflicts),
                                transient=frozenset(w.state.device_id for w in writes) - conflicts)
        committed: dict[str, Sequence[Mapping[str, Any]]] = {}
        for w in writes:
            first = w.state.event_seq - len(w.events) + 1
            envelopes = [
                {"type": e.type_name, "aggregate_id": w.state.device_id, "sequence": first + i,
                 "tenant_id": w.state.tenant_id, "data": e.model_dump(mode="json")}
                for i, e in enumerate(w.events)
            ]
            self.items[w.state.device_id] = (state_attributes(w.state), w.version + 1,
                                             w.state.event_seq)
            self.envelopes.extend(envelopes)
            committed[w.state.device_id] = envelopes
        return CommitResult(committed)

    async def scan_online(
        self, *, page_size: int | None = None
    ) -> AsyncIterator[list[StoredDevice]]:
        """The devices stored ONLINE, in pages of `page_size` items read (default 1,000)."""
        size = 1000 if page_size is None else page_size
        if size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        ids = list(self.items)
        for start in range(0, len(ids), size):
            page = []
            for device_id in ids[start:start + size]:  # read as they are now, as a Scan does
                attrs, version, event_seq = self.items[device_id]
                if attrs["status"] == Status.ONLINE:
                    page.append(StoredDevice(
                        state=state_from_attributes(attrs, version=version, event_seq=event_seq),
                        version=version,
                    ))
            if page:
                yield page


    async def put_last_seen(
        self, entries: Sequence[LastSeen], *, writer: str, now: float, expires_at: float
    ) -> int:
        items = last_seen_items(entries, writer=writer, now=now, expires_at=expires_at)
        self.last_seen.extend(items)
        return len(items)

    async def scan_last_seen(self) -> dict[str, float]:
        newest: dict[str, float] = {}
        for item in self.last_seen:
            merge_last_seen(newest, item["seen"]["S"])
        return newest

