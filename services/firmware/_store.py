"""The firmware table: rollouts, waves, batches, devices, artifacts, client tokens.

One table (`FirmwareTable`, key `pk` / `sk`, stream NEW_AND_OLD_IMAGES: the outbox):

    pk                     sk                  what
    ROLLOUT#<id>           META                the rollout: spec, state, waves planned, parked
                                               gate token; outbox of its events (UnitOfWork)
    ROLLOUT#<id>           WAVE#<nnnn>         a wave: size, manifest, counters per status
    ROLLOUT#<id>           BATCH#<key>         a batch (one child execution): size, deadline,
                                               counters; `ROLLBACK#<key>` for rollback batches
    DEVICE#<device id>     ROLLOUT             the device's place in its latest rollout:
                                               rollout, wave, batch, versions, outcome, phase;
                                               outbox of DeviceRollbackCompleted (UnitOfWork format)
    ARTIFACT#<version>     ARTIFACT            an uploaded firmware: S3 location, SHA-256, size
    TOKEN#<client token>   TOKEN               the rollout a client token started

Counters are numeric attributes changed with `ADD` in the same transaction as the device
transitions they count, so a device is counted once however often its answer arrives: the
device item's conditional write (version) decides, the counters follow.

    ACTIVE#<zone>          ACTIVE              the zone's active rollouts and their specs: the
                                               start-time conflict check reads this one item

Listing: the META and ARTIFACT items carry `gsi1pk` ("ROLLOUT" / "ARTIFACT") and `gsi1sk`
(`<created>#<id>`), the index `ByCreated`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio

from services.firmware.domain import DeviceStatus, RolloutCounts, RolloutSpec, RolloutState
from services.firmware.errors import RolloutNotFound
from shared.aws import AwsClients, aws_errors
from shared.dynamodb import from_item, to_item, wire_json
from shared.errors import ConditionFailedError, TransactionCanceledError
from shared.outbox import (
    Aggregate,
    ItemRef,
    OutboxConfig,
    UnitOfWork,
    aggregate_from_item,
    build_write,
    stage,
)

__all__ = [
    "BatchRecord",
    "DeviceRecord",
    "FirmwareStore",
    "RolloutRecord",
    "WaveRecord",
    "batch_key",
    "device_ref",
    "rollout_ref",
]

META: Final = "META"
DEVICE_SK: Final = "ROLLOUT"
DEVICE_TTL_SECONDS: Final = 30 * 86_400  # device items expire a month after their last change
_COUNTERS: Final = tuple(s.value for s in DeviceStatus)
_OUTBOX: Final = OutboxConfig()
_TRANSACT_MAX: Final = 100


def rollout_ref(table: str, rollout_id: str) -> ItemRef:
    return ItemRef(table=table, key={"pk": f"ROLLOUT#{rollout_id}", "sk": META},
                   aggregate_id=rollout_id)


def device_ref(table: str, device_id: str, rollout_id: str | None = None) -> ItemRef:
    """A device's item. Its events (DeviceRollbackCompleted) are numbered per device and
    rollout (`aggregate_id` `<device>@<rollout>`): a rollout claims a device by replacing the
    item, so each rollout starts the count again."""
    return ItemRef(table=table, key={"pk": f"DEVICE#{device_id}", "sk": DEVICE_SK},
                   aggregate_id=f"{device_id}@{rollout_id}" if rollout_id else device_id)


def batch_key(wave: int, first_device: str, *, rollback: bool = False) -> str:
    """A batch's key: its wave and its first device (a device is in one batch of a wave)."""
    return f"{'ROLLBACK' if rollback else 'BATCH'}#{wave:04d}#{first_device}"


def _wave_sk(wave: int) -> str:
    return f"WAVE#{wave:04d}"


@dataclass(frozen=True)
class RolloutRecord:
    rollout_id: str
    spec: RolloutSpec
    state: RolloutState
    created_at: str
    reason: str | None = None
    waves: tuple[Mapping[str, Any], ...] = ()  # {"wave", "size", "bucket", "key"}
    gate_token: str | None = None
    execution_arn: str | None = None
    aggregate: Aggregate | None = None

    @property
    def devices_planned(self) -> int:
        return sum(int(w.get("size", 0)) for w in self.waves)


@dataclass(frozen=True)
class WaveRecord:
    wave: int
    size: int
    counts: RolloutCounts
    started: bool = False
    completed: bool = False


@dataclass(frozen=True)
class BatchRecord:
    key: str
    size: int
    deadline: float
    counts: RolloutCounts
    commanded: bool = False
    held: int = 0  # devices this rollout commanded in the batch (set with `commanded`)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device's place in its latest rollout. `outcome` is a DeviceStatus value; `phase` is
    "update" or "rollback" (commanded back to `from_version`)."""

    device_id: str
    rollout_id: str
    wave: int
    batch: str
    tenant: str
    from_version: str | None
    target_version: str
    outcome: str
    phase: str = "update"
    reason: str | None = None
    rollback_batch: str | None = None
    version: int = 0  # the item's optimistic-concurrency counter as read (0: not stored)
    event_seq: int = 0

    def but(self, **changes: Any) -> DeviceRecord:
        """A copy with `changes` (twice per device of a rollout: the constructor, not the
        slower `dataclasses.replace`)."""
        get = changes.get
        return DeviceRecord(
            device_id=self.device_id, rollout_id=self.rollout_id, wave=self.wave,
            batch=self.batch, tenant=self.tenant,
            from_version=get("from_version", self.from_version),
            target_version=self.target_version, outcome=get("outcome", self.outcome),
            phase=get("phase", self.phase), reason=get("reason", self.reason),
            rollback_batch=get("rollback_batch", self.rollback_batch),
            version=self.version, event_seq=self.event_seq)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "rollout_id": self.rollout_id, "wave": self.wave, "batch": self.batch,
            "tenant": self.tenant, "target_version": self.target_version,
            "outcome": self.outcome, "phase": self.phase,
            "expires_at": int(time.time()) + DEVICE_TTL_SECONDS,
        }
        if self.from_version is not None:
            state["from_version"] = self.from_version
        if self.reason is not None:
            state["reason"] = self.reason[:300]
        if self.rollback_batch is not None:
            state["rollback_batch"] = self.rollback_batch
        return state


_OPTIONAL: Final = ("from_version", "reason", "rollback_batch")


_EXPIRY: list[Any] = [0, ""]  # (second, its expiry as text): one str() a second, not a device


def _expiry() -> str:
    now = int(time.time())
    if _EXPIRY[0] != now:
        _EXPIRY[0], _EXPIRY[1] = now, str(now + DEVICE_TTL_SECONDS)
    return str(_EXPIRY[1])


def device_item(record: DeviceRecord, *, table_version: int) -> dict[str, Any]:
    """The device's item in the wire form, its version `table_version` (the state a write
    stores; events ride only on `FirmwareStore.device_write`). Built by hand: this runs twice
    per device of a rollout (claimed, answered)."""
    item: dict[str, Any] = {
        "pk": {"S": "DEVICE#" + record.device_id}, "sk": {"S": DEVICE_SK},
        "rollout_id": {"S": record.rollout_id}, "wave": {"N": str(record.wave)},
        "batch": {"S": record.batch}, "tenant": {"S": record.tenant},
        "target_version": {"S": record.target_version}, "outcome": {"S": record.outcome},
        "phase": {"S": record.phase},
        "expires_at": {"N": _expiry()},
        "version": {"N": str(table_version)}, "event_seq": {"N": str(record.event_seq)},
    }
    for name in _OPTIONAL:
        value = getattr(record, name)
        if value is not None:
            item[name] = {"S": value[:300] if name == "reason" else value}
    return item


def device_from_wire(item: Mapping[str, Any]) -> DeviceRecord:
    """A device record from its item in the wire form (a BatchGetItem answer decoded by
    orjson): the inverse of `device_item`."""
    def text(name: str) -> str | None:
        value = item.get(name)
        return None if value is None else str(value["S"])

    return DeviceRecord(
        device_id=str(item["pk"]["S"]).removeprefix("DEVICE#"),
        rollout_id=str(item["rollout_id"]["S"]), wave=int(item["wave"]["N"]),
        batch=str(item["batch"]["S"]), tenant=str(item["tenant"]["S"]),
        from_version=text("from_version"), target_version=str(item["target_version"]["S"]),
        outcome=str(item["outcome"]["S"]), phase=str(item.get("phase", {"S": "update"})["S"]),
        reason=text("reason"), rollback_batch=text("rollback_batch"),
        version=int(item.get("version", {"N": "0"})["N"]),
        event_seq=int(item.get("event_seq", {"N": "0"})["N"]))


def _counts(values: Mapping[str, Any]) -> RolloutCounts:
    return RolloutCounts.from_mapping({k: values.get(f"n_{k}", 0) for k in _COUNTERS})


def counter_update(table: str, key: Mapping[str, str], deltas: Mapping[str, int]) -> dict[str, Any]:
    """An `Update` (transaction entry) adding `deltas` (status -> +/- n) to an item's
    counters."""
    names = {f"#{k}": f"n_{k}" for k in deltas}
    values = {f":{k}": {"N": str(v)} for k, v in deltas.items()}
    return {"Update": {
        "TableName": table, "Key": to_item(dict(key)),
        "UpdateExpression": "ADD " + ", ".join(f"#{k} :{k}" for k in deltas),
        "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
    }}


@dataclass
class FirmwareStore:
    """Reads and writes of the firmware table (and nothing else)."""

    aws: AwsClients
    table: str

    # -- rollouts -------------------------------------------------------------------------

    def rollout_from(self, aggregate: Aggregate) -> RolloutRecord:
        state = aggregate.state
        return RolloutRecord(
            rollout_id=str(aggregate.ref.id),
            spec=RolloutSpec.from_mapping(state["spec"]),
            state=RolloutState(state["state"]),
            created_at=str(state.get("created_at", "")),
            reason=state.get("reason"),
            waves=tuple(state.get("waves") or ()),
            gate_token=state.get("gate_token"),
            execution_arn=state.get("execution_arn"),
            aggregate=aggregate,
        )

    async def rollout(self, uow: UnitOfWork, rollout_id: str) -> RolloutRecord:
        """Raises RolloutNotFound."""
        aggregate = await uow.load(rollout_ref(self.table, rollout_id))
        if not aggregate.exists:
            raise RolloutNotFound(rollout_id)
        return self.rollout_from(aggregate)

    async def current_state(self, rollout_id: str) -> RolloutState:
        """Only the rollout's state (a GetItem of one attribute, decoded with orjson): what a
        batch holder checks while it waits. Raises RolloutNotFound."""
        from shared.aws import call_decoded

        dynamodb = await self.aws.client("dynamodb")
        response = await call_decoded(
            dynamodb, "GetItem", TableName=self.table, ConsistentRead=True,
            Key={"pk": {"S": f"ROLLOUT#{rollout_id}"}, "sk": {"S": META}},
            ProjectionExpression="#s", ExpressionAttributeNames={"#s": "state"})
        item = response.get("Item")
        if not item:
            raise RolloutNotFound(rollout_id)
        return RolloutState(item["state"]["S"])

    @staticmethod
    def rollout_state(record: RolloutRecord, **changes: Any) -> dict[str, Any]:
        """The META item's state after `changes` (state, reason, waves, gate_token, ...)."""
        assert record.aggregate is not None
        state = dict(record.aggregate.state)
        for name, value in changes.items():
            if value is None:
                state.pop(name, None)
            else:
                state[name] = value.value if isinstance(value, RolloutState) else value
        state["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return state

    def registry_ref(self, zone: str) -> ItemRef:
        """The item listing a zone's active rollouts (`{"rollouts": {id: spec}}`): every
        start and every end changes it in the same transaction as the rollout, so two
        starts that would share devices cannot both pass the check."""
        return ItemRef(table=self.table, key={"pk": f"ACTIVE#{zone}", "sk": "ACTIVE"},
                       aggregate_id=f"active-{zone}")

    def _record_from_item(self, item: Mapping[str, Any]) -> RolloutRecord:
        rollout_id = str(from_item({"pk": item["pk"]})["pk"]).removeprefix("ROLLOUT#")
        return self.rollout_from(aggregate_from_item(
            rollout_ref(self.table, rollout_id), item, _OUTBOX))

    async def list_rollouts(self, limit: int = 50) -> list[RolloutRecord]:
        dynamodb = await self.aws.client("dynamodb")
        with aws_errors():
            page = await dynamodb.query(
                TableName=self.table, IndexName="ByCreated",
                KeyConditionExpression="gsi1pk = :p",
                ExpressionAttributeValues={":p": {"S": "ROLLOUT"}},
                ScanIndexForward=False, Limit=limit)
        return [self._record_from_item(item) for item in page.get("Items", [])]

    async def waves(self, rollout_id: str) -> list[WaveRecord]:
        dynamodb = await self.aws.client("dynamodb")
        waves: list[WaveRecord] = []
        params: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :w)",
            "ExpressionAttributeValues": {":pk": {"S": f"ROLLOUT#{rollout_id}"},
                                          ":w": {"S": "WAVE#"}},
        }
        while True:
            with aws_errors():
                page = await dynamodb.query(**params)
            for item in page.get("Items", []):
                values = from_item(item)
                waves.append(WaveRecord(
                    wave=int(values["wave"]), size=int(values.get("size", 0)),
                    counts=_counts(values), started=bool(values.get("started")),
                    completed=bool(values.get("completed"))))
            if "LastEvaluatedKey" not in page:
                return sorted(waves, key=lambda w: w.wave)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def wave_put(self, rollout_id: str, wave: int, size: int) -> dict[str, Any]:
        """A transaction entry creating a wave's item (with zero counters), once."""
        return {"Put": {
            "TableName": self.table,
            "Item": to_item({"pk": f"ROLLOUT#{rollout_id}", "sk": _wave_sk(wave),
                             "wave": wave, "size": size}),
            "ConditionExpression": "attribute_not_exists(pk)",
        }}

    async def mark_wave(self, rollout_id: str, wave: int, flag: str) -> bool:
        """Set `flag` ("started" / "completed") on a wave once; True when this call set it."""
        dynamodb = await self.aws.client("dynamodb")
        try:
            with aws_errors():
                await dynamodb.update_item(
                    TableName=self.table,
                    Key=to_item({"pk": f"ROLLOUT#{rollout_id}", "sk": _wave_sk(wave)}),
                    UpdateExpression="SET #f = :t",
                    ConditionExpression="attribute_exists(pk) AND attribute_not_exists(#f)",
                    ExpressionAttributeNames={"#f": flag},
                    ExpressionAttributeValues={":t": {"BOOL": True}})
        except ConditionFailedError:
            return False
        return True

    # -- batches ----------------------------------------------------------------------------

    async def batch(self, rollout_id: str, key: str) -> BatchRecord | None:
        dynamodb = await self.aws.client("dynamodb")
        with aws_errors():
            response = await dynamodb.get_item(
                TableName=self.table, ConsistentRead=True,
                Key=to_item({"pk": f"ROLLOUT#{rollout_id}", "sk": key}))
        item = response.get("Item")
        if not item:
            return None
        values = from_item(item)
        return BatchRecord(key=key, size=int(values["size"]),
                           deadline=float(values["deadline"]), counts=_counts(values),
                           commanded=bool(values.get("commanded")),
                           held=int(values.get("held", 0) or 0))

    async def open_batch(self, rollout_id: str, key: str, *, size: int,
                         deadline: float) -> BatchRecord:
        """The batch's item, created by the first holder (its deadline fixed then); a later
        holder (after a crash) gets the stored one."""
        dynamodb = await self.aws.client("dynamodb")
        try:
            with aws_errors():
                await dynamodb.put_item(
                    TableName=self.table,
                    Item=to_item({"pk": f"ROLLOUT#{rollout_id}", "sk": key, "size": size,
                                  "deadline": deadline}),
                    ConditionExpression="attribute_not_exists(pk)")
        except ConditionFailedError:
            pass  # opened by an earlier holder: its deadline stands
        found = await self.batch(rollout_id, key)
        assert found is not None
        return found

    async def mark_commanded(self, rollout_id: str, key: str, *, held: int) -> None:
        """The batch's devices are commanded; `held` of them by this rollout."""
        dynamodb = await self.aws.client("dynamodb")
        with aws_errors():
            await dynamodb.update_item(
                TableName=self.table, Key=to_item({"pk": f"ROLLOUT#{rollout_id}", "sk": key}),
                UpdateExpression="SET commanded = :t, held = :h",
                ExpressionAttributeValues={":t": {"BOOL": True}, ":h": {"N": str(held)}})

    # -- devices ----------------------------------------------------------------------------

    async def device_records(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        """The stored devices among `device_ids` (absent ones are left out), read with
        BatchGetItem (100 a request, eventually consistent: a write conditional on the
        version catches a stale read) and decoded by hand (`device_from_wire`)."""
        from shared.aws import call_decoded

        dynamodb = await self.aws.client("dynamodb")
        found: dict[str, DeviceRecord] = {}
        for start in range(0, len(device_ids), 100):
            keys = [{"pk": {"S": f"DEVICE#{d}"}, "sk": {"S": DEVICE_SK}}
                    for d in device_ids[start:start + 100]]
            for attempt in range(8):
                response = await call_decoded(dynamodb, "BatchGetItem",
                                              RequestItems={self.table: {"Keys": keys}})
                for item in response.get("Responses", {}).get(self.table, ()):
                    record = device_from_wire(item)
                    found[record.device_id] = record
                keys = list((response.get("UnprocessedKeys") or {}).get(
                    self.table, {}).get("Keys", ()))
                if not keys:
                    break
                await anyio.sleep(min(1.0, 0.05 * 2**attempt))
        return found

    def device_put(self, record: DeviceRecord, *, claim_for: str | None = None
                   ) -> dict[str, Any]:
        """A transaction `Put` of `record` (no events): conditional on the version read, or,
        with `claim_for` (a rollout id), a claim without a read: the device has no item, or
        its item belongs to another rollout that is not updating it now."""
        put: dict[str, Any] = {"TableName": self.table, "Item": device_item(
            record, table_version=1 if claim_for else record.version + 1)}
        if claim_for is not None:
            put["ConditionExpression"] = ("attribute_not_exists(pk) OR "
                                          "(rollout_id <> :me AND outcome <> :busy)")
            put["ExpressionAttributeValues"] = {":me": {"S": claim_for},
                                                ":busy": {"S": "in_progress"}}
        elif record.version:
            put["ConditionExpression"] = "version = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(record.version)}}
        else:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        return {"Put": put}

    def device_write(self, record: DeviceRecord, events: Sequence[Any]) -> list[dict[str, Any]]:
        """Transaction entries writing `record` with `events` in its outbox (the outbox item
        format, `shared.outbox.build_write`), conditional on the version read. Only a device
        rolled back carries an event; every other write is `device_put`."""
        aggregate = Aggregate(ref=device_ref(self.table, record.device_id, record.rollout_id),
                              state={}, version=record.version,
                              last_sequence=record.event_seq)
        return [{"Put": put} for put in build_write(
            stage(aggregate, record.state(), events=events), _OUTBOX, now=time.time())]

    async def transact(self, entries: Sequence[Mapping[str, Any]]) -> set[int]:
        """Write `entries` in transactions of 100, each body encoded here in the wire form
        (`AwsClients.send_encoded`: no second walk of every attribute by botocore). Returns
        the indexes of the entries of a transaction cancelled by a failed condition (none of
        it was written): the caller reads and decides again. Other failures raise."""
        failed: set[int] = set()
        for start in range(0, len(entries), _TRANSACT_MAX):
            chunk = list(entries[start:start + _TRANSACT_MAX])
            try:
                await self.aws.send_encoded("dynamodb", "TransactWriteItems",
                                            wire_json({"TransactItems": chunk}))
            except TransactionCanceledError as exc:
                if not any(r.get("Code") == "ConditionalCheckFailed" for r in exc.reasons):
                    raise
                failed |= {start + i for i in range(len(chunk))}  # the whole chunk
        return failed

    # -- artifacts and tokens ---------------------------------------------------------------

    async def known_versions(self) -> list[str]:
        dynamodb = await self.aws.client("dynamodb")
        versions: list[str] = []
        params: dict[str, Any] = {
            "TableName": self.table, "IndexName": "ByCreated",
            "KeyConditionExpression": "gsi1pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "ARTIFACT"}},
        }
        while True:
            with aws_errors():
                page = await dynamodb.query(**params)
            versions.extend(str(from_item(i)["version"]) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return versions
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def artifact(self, version: str) -> dict[str, Any] | None:
        dynamodb = await self.aws.client("dynamodb")
        with aws_errors():
            response = await dynamodb.get_item(
                TableName=self.table, Key=to_item({"pk": f"ARTIFACT#{version}", "sk": "ARTIFACT"}))
        item = response.get("Item")
        return from_item(item) if item else None

    async def put_artifact(self, artifact: Mapping[str, Any]) -> bool:
        """Record an uploaded artifact once. False when the version exists already."""
        dynamodb = await self.aws.client("dynamodb")
        version = str(artifact["version"])
        try:
            with aws_errors():
                await dynamodb.put_item(
                    TableName=self.table,
                    Item=to_item({"pk": f"ARTIFACT#{version}", "sk": "ARTIFACT",
                                  "gsi1pk": "ARTIFACT",
                                  "gsi1sk": f"{artifact['uploaded_at']}#{version}",
                                  **artifact}),
                    ConditionExpression="attribute_not_exists(pk)")
        except ConditionFailedError:
            return False
        return True

    async def token_owner(self, token: str) -> tuple[str, str] | None:
        """(rollout id, request fingerprint) a client token started, or None."""
        dynamodb = await self.aws.client("dynamodb")
        with aws_errors():
            response = await dynamodb.get_item(
                TableName=self.table, ConsistentRead=True,
                Key=to_item({"pk": f"TOKEN#{token}", "sk": "TOKEN"}))
        item = response.get("Item")
        if not item:
            return None
        values = from_item(item)
        return str(values["rollout_id"]), str(values.get("fingerprint", ""))

    def token_ref(self, token: str) -> ItemRef:
        return ItemRef(table=self.table, key={"pk": f"TOKEN#{token}", "sk": "TOKEN"})
