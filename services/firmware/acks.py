"""Counting devices' answers: the firmware acknowledgement worker.

Devices answer on the device path: the devices context emits `FirmwareVersionReported`
(a device reported a new version in its telemetry) and `FirmwareUpdateFailed` (a device
reported a failed install, with a reason). A rule of the devices bus puts both on the
FirmwareAcksStream (Kinesis, partition key = device id), read by this worker with shard
leases: a page of up to 10,000 answers costs one GetRecords, where a queue would cost a
receive and a delete per 10.

Per page: one BatchGetItem per 100 devices, a pure decision per answer (`decide`), then one
TransactWriteItems per 98 changed devices carrying their new items and the counters of
their batches and waves (so a device is counted once: the version-conditioned write of its
item decides, the counters ride along). What changes a device:

    phase update,  in_progress, reports the target version      -> succeeded
    phase update,  in_progress, reports the install failed      -> failed (with the reason)
    phase rollback, not rolled back, reports its old version    -> rolled_back
                                                                   (+ DeviceRollbackCompleted event)

Anything else is counted as a duplicate and changes nothing: a repeated answer, an answer
after the device timed out (late), an answer for a rollout the device is no longer in, a
version nobody asked for. Answers are read as data (the envelope's `data`), not through the
devices context's models: the contract is the event's documented fields.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog

from services.firmware._store import DeviceRecord, FirmwareStore, counter_update
from services.firmware.domain import DeviceStatus
from services.firmware.events import DeviceRollbackCompleted
from shared.aws import AwsClients
from shared.consumers import BatchResult, Message, Outcome
from shared.events import parse_envelope

__all__ = ["AckApplier", "Answer", "answer_of", "decide"]

log = structlog.get_logger("services.firmware.acks")

REPORTED: Final = "FirmwareVersionReported"
FAILED: Final = "FirmwareUpdateFailed"
_TRANSACTION_MAX: Final = 100  # TransactWriteItems' limit: device writes + counters
_ATTEMPTS: Final = 5


@dataclass(frozen=True, slots=True)
class Answer:
    message_id: str
    device_id: str
    kind: str  # REPORTED or FAILED
    version: str
    reason: str | None = None


def answer_of(message: Message) -> Answer | None:
    """The answer a message carries, or None for another event (not an error: the rule
    may grow). Raises ValueError for a body that is not an event envelope.

    An EventBridge event (what the rule puts on the stream) is read with orjson and only the
    envelope's documented fields are looked at: this runs once per device of the fleet.
    Any other shape goes through `shared.events.parse_envelope`."""
    try:
        body = orjson.loads(message.body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("type"), str):
        kind, data = detail["type"], detail.get("data")
    else:
        envelope = parse_envelope(message.body)
        kind, data = envelope.type, envelope.data
    if kind not in (REPORTED, FAILED):
        return None
    data = data if isinstance(data, dict) else {}
    device = data.get("device") or {}
    device_id = device.get("device_id") or data.get("device_id")
    version = data.get("version")
    if not isinstance(device_id, str) or not isinstance(version, str):
        raise ValueError(f"{envelope.type} {envelope.id} has no device id or version")
    reason = data.get("reason")
    return Answer(message.id, device_id, kind, version,
                  reason if isinstance(reason, str) else None)


def decide(device: DeviceRecord | None, answer: Answer
           ) -> tuple[DeviceRecord | None, dict[str, int], str | None]:
    """The device's new record, the counter deltas, and the counters' item ("batch" or
    "rollback"); (None, {}, None) when the answer changes nothing. Pure."""
    if device is None:
        return None, {}, None
    if device.phase == "update" and device.outcome == DeviceStatus.IN_PROGRESS.value \
            and answer.version == device.target_version:
        if answer.kind == REPORTED:
            return (device.but(outcome=DeviceStatus.SUCCEEDED.value),
                    {DeviceStatus.IN_PROGRESS.value: -1, DeviceStatus.SUCCEEDED.value: 1},
                    "batch")
        return (device.but(outcome=DeviceStatus.FAILED.value, reason=answer.reason or "failed"),
                {DeviceStatus.IN_PROGRESS.value: -1, DeviceStatus.FAILED.value: 1}, "batch")
    if device.phase == "rollback" and device.outcome != DeviceStatus.ROLLED_BACK.value \
            and answer.kind == REPORTED and answer.version == device.from_version:
        return (device.but(outcome=DeviceStatus.ROLLED_BACK.value),
                {device.outcome: -1, DeviceStatus.ROLLED_BACK.value: 1}, "rollback")
    return None, {}, None


class AckApplier:
    """A BatchHandler over answer messages (see the module docstring)."""

    def __init__(self, aws: AwsClients, table: str) -> None:
        self._aws = aws
        self.store = FirmwareStore(aws, table)
        self.table = table
        self.applied = 0
        self.ignored = 0

    async def __call__(self, messages: Sequence[Message]) -> BatchResult:
        outcomes: dict[str, Outcome] = {}
        reasons: dict[str, str] = {}
        answers: list[Answer] = []
        for message in messages:
            try:
                answer = answer_of(message)
            except ValueError as exc:
                outcomes[message.id] = Outcome.DEAD_LETTER
                reasons[message.id] = f"not a device answer: {exc}"
                continue
            if answer is None:
                outcomes[message.id] = Outcome.SUCCEEDED
            else:
                answers.append(answer)
        by_device: dict[str, list[Answer]] = {}
        for answer in answers:
            by_device.setdefault(answer.device_id, []).append(answer)
        pending = list(by_device)
        for _attempt in range(_ATTEMPTS):
            if not pending:
                break
            pending = await self._apply(pending, by_device, outcomes)
        for device_id in pending:
            for answer in by_device[device_id]:
                outcomes[answer.message_id] = Outcome.RETRY
                reasons[answer.message_id] = "the device's item kept changing"
        return BatchResult(outcomes=outcomes, reasons=reasons)

    async def _apply(self, devices: Sequence[str], by_device: Mapping[str, Sequence[Answer]],
                     outcomes: dict[str, Outcome]) -> list[str]:
        """Decide and write the answers of `devices`; returns the devices whose transaction
        was cancelled (a device item changed since read), to decide again."""
        current = await self.store.device_records(devices)
        packs: list[_Pack] = []
        for device_id in devices:
            device = current.get(device_id)
            new: DeviceRecord | None = None
            events: list[Any] = []
            deltas_by_item: dict[tuple[str, str], dict[str, int]] = {}
            for answer in by_device[device_id]:  # in stream order: fold them
                after, deltas, scope = decide(new or device, answer)
                if after is None:
                    outcomes[answer.message_id] = Outcome.DUPLICATE
                    continue
                outcomes[answer.message_id] = Outcome.SUCCEEDED
                before = new or device
                new = after
                batch = after.batch
                if scope == "rollback" and after.rollback_batch:
                    batch = after.rollback_batch
                    events.append(DeviceRollbackCompleted(
                        rollout_id=after.rollout_id, device_id=device_id, tenant=after.tenant,
                        version=answer.version,
                        abandoned_version=(before or after).target_version))
                pk = f"ROLLOUT#{after.rollout_id}"
                for sk in (batch, f"WAVE#{after.wave:04d}"):
                    target = deltas_by_item.setdefault((pk, sk), {})
                    for name, n in deltas.items():
                        target[name] = target.get(name, 0) + n
            if new is None:
                continue
            entries = (self.store.device_write(new, events) if events
                       else [self.store.device_put(new)])
            if not packs or not packs[-1].fits(len(entries), deltas_by_item):
                packs.append(_Pack())
            packs[-1].add(device_id, entries, deltas_by_item)
        retry: list[str] = []
        for pack in packs:
            if await self.store.transact(pack.entries(self.table)):
                retry.extend(pack.devices)
                continue
            self.applied += len(pack.devices)
            log.info("answers counted", devices=len(pack.devices), at=round(time.time(), 3))
        self.ignored += sum(1 for d in devices if d not in retry
                            for a in by_device[d] if outcomes.get(a.message_id)
                            is Outcome.DUPLICATE)
        return retry


@dataclass
class _Pack:
    """Device writes and the counters they move, within one transaction (100 entries)."""

    devices: list[str] = field(default_factory=list)
    _writes: list[dict[str, Any]] = field(default_factory=list)
    _counters: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def fits(self, writes: int, counters: Mapping[tuple[str, str], Any]) -> bool:
        keys = set(self._counters) | set(counters)
        return len(self._writes) + writes + len(keys) <= _TRANSACTION_MAX

    def add(self, device_id: str, writes: Sequence[dict[str, Any]],
            counters: Mapping[tuple[str, str], Mapping[str, int]]) -> None:
        self.devices.append(device_id)
        self._writes.extend(writes)
        for key, deltas in counters.items():
            target = self._counters.setdefault(key, {})
            for name, n in deltas.items():
                target[name] = target.get(name, 0) + n

    def entries(self, table: str) -> list[dict[str, Any]]:
        counters = [counter_update(table, {"pk": pk, "sk": sk},
                                   {k: v for k, v in deltas.items() if v})
                    for (pk, sk), deltas in self._counters.items()
                    if any(deltas.values())]
        return [*self._writes, *counters]
