"""The telemetry worker: device state from the Kinesis stream, written when it changes;
every reading to the lake.

    handler = TelemetryProcessor(store, config)       # a shared.consumers BatchHandler
    consumer = KinesisConsumer(aws, handler, stream=..., config=...)

How a batch (the records of one shard, in order, from one GetRecords) is handled:

Records are telemetry (the IoT rule writes them), desired updates, and edge facts: the bus's
edge rules put `fleetline.iot` events here (DevicePresence from the simulator or IoT
connection events, DeviceStateReported from the ingest function), each applied in order with
the device's readings (`domain.apply_presence`, `domain.apply_report`).

1. Decode each record (`domain.parse_record`); a malformed one is DEAD_LETTER with its reason
   (the consumer sends it to TelemetryFailureQueue with shard id and sequence number, and the
   shard moves on). A record for another residency zone, or claiming another tenant or zone
   than its device, is DEAD_LETTER too, with the residency reason: it is never written.
2. Devices not in memory are read with one BatchGetItem per 100 (after a restart, or when a
   shard moves here); the worker then keeps every device of its shards in memory.
3. Records are applied in order (`domain.apply_telemetry`); duplicates and stale records are
   dropped (outcome DUPLICATE) and counted.
4. The lake: the rows of every applied reading go to the readings delivery stream
   (`services.devices.lake`; Firehose -> Parquet in S3). If they cannot, every device of the
   batch is dropped from memory and the batch is retried: the replay reloads the devices and
   applies (and sends) the readings again.
5. Flush: every device whose STATE the batch changed (a transition with its events:
   connected, firmware, shadow reported / desired / delta, a threshold crossed or cleared;
   a desired update) is written ONCE, whatever the number of its records in the batch,
   through the outbox unit of work: its state and the events of its transitions in one
   item, conditional on the version read; up to 100 devices per TransactWriteItems
   (`WriteMode.TRANSACTION`, fewest requests) or one conditional PutItem per device
   (`WriteMode.ITEMS`, half the write units). The table's stream is the outbox. A reading
   that changes nothing but the readings and last-seen is not written with its device: its
   device waits in `_unwritten` for the last-seen write (below).
6. Only then does the handler return, so the consumer checkpoints the shard only after its
   transitions are stored and its readings are in the lake. A device whose write failed is
   dropped from memory and the batch is retried: the replay reloads it from the table and
   applies the records again, so nothing is lost and no event is emitted twice (records the
   table already has are duplicates).

Last-seen: every `last_seen_interval` (default 300 s; `FLEETLINE_LAST_SEEN_INTERVAL`) the
silence sweeper writes the last-seen (device clock, arrival, seq) of the devices read since
their item was last written, packed thousands to an item (`DeviceStore.put_last_seen`): one
last-seen write per device per interval at most, and a few items for all of them, so the
table's last-seen of a device is at most one interval (plus a sweep) behind its last
reading. A graceful stop writes them too. With `last_seen_interval` 0 every applied record
writes its device, as before the lake (the benchmark's "write per reading" path).
7. Alarms (ThresholdBreached / ThresholdCleared) are events like the others: they leave
   through the outbox, and the alarm publisher (`services.devices.alarms`) takes them from
   the bus to SNS. The worker makes no SNS call, and a crash after the commit loses nothing.

Silence: a sweep (every `sweep_interval`) walks devices in order of their last record's
arrival and marks those silent longer than `silence_after` OFFLINE (DeviceDisconnected once),
writing them the same way. Arrival time is the stream's ApproximateArrivalTimestamp.

Stored sweep: the silence sweep only knows devices this process has held. A device stored
ONLINE that never reports again after a restart, or after its shard moved to a worker that
never loaded it, would stay ONLINE for ever. So `stored_sweep_after` (default:
`silence_after`) after start, then every `stored_sweep_interval` (default 1 hour), the worker
scans DevicesTable for ONLINE devices (`DeviceStore.scan_online`) and writes those silent
longer than `silence_after + sweep_interval` that it does not hold OFFLINE with
DeviceDisconnected (`stored_disconnects` decides; the write is the flush's, conditional on
the version scanned; a device's arrival is the newer of its item's and of the packed
last-seen items', read first with `DeviceStore.scan_last_seen`, and the threshold grows by
`last_seen_interval`, how far behind the table's last-seen may be). The extra
`sweep_interval` leaves devices a live owner holds to the owner's own sweep. Several
workers may run it at once: of the writes at one version only one succeeds, the others
conflict and are dropped, so each device is reported once. Swept devices are not kept in
memory (they belong to their shard's owner). A Scan reads the whole
table, hence the long interval (cost in docs/devices.md).
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

import anyio
import structlog
from opentelemetry.trace import Link, SpanContext, SpanKind

from services.devices._store import (
    TRANSACTION_LIMIT,
    DeviceStore,
    DeviceWrite,
    DynamoDeviceStore,
    LastSeen,
    StoredDevice,
)
from services.devices.domain import (
    DEFAULT_THRESHOLDS,
    ApplyOutcome,
    DesiredUpdate,
    DeviceState,
    InvalidTelemetry,
    Presence,
    Record,
    ResidencyRefused,
    StateReport,
    Telemetry,
    Thresholds,
    apply_desired,
    apply_presence,
    apply_report,
    apply_telemetry,
    check_residency,
    check_silence,
    parse_record,
)
from services.devices.events import DeviceEvent, Status
from services.devices.lake import FirehoseLake, LakeError, LakeSink, reading_rows
from shared import tracing
from shared.aws import AwsClients
from shared.config import Resources, resource_env_name
from shared.consumers import BatchHandler, BatchResult, Message, Outcome
from shared.errors import RetryableError
from shared.hosts import KinesisStream, Worker
from shared.outbox import WriteMode

# The store is `services.devices._store`'s; what a caller of `TelemetryProcessor` hands it
# is re-exported here.
__all__ = [
    "DeviceStore",
    "DynamoDeviceStore",
    "TelemetryConfig",
    "TelemetryProcessor",
    "TelemetryStatistics",
    "worker",
]

log = structlog.get_logger("services.devices.telemetry")

WRITE_CONCURRENCY: Final = 32  # commits in flight at once (ITEMS mode: one per device)
# Devices read per Scan request by the stored sweep. Decoding a scanned device costs about
# 80 us of worker CPU (docs/devices.md), done between two awaits: 250 a page keeps each
# stretch near 20 ms, so the shards' batches are not held up; read units do not change.
STORED_SWEEP_PAGE: Final = 250


class FlushError(RetryableError):
    """Some devices could not be written; they were dropped from memory and the batch is
    retried (the replay reloads them)."""


# How a flush sends its device writes: the outbox's `WriteMode`, of which the device store
# implements two (no STATEMENTS: a device write is its item put, see `_store.device_put`).
WRITE_MODES: Final = (WriteMode.TRANSACTION, WriteMode.ITEMS)


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """Settings of the telemetry worker. `zone` is the residency zone this deployment serves."""

    zone: str = "eu"
    silence_after: float = 60.0
    sweep_interval: float = 5.0
    thresholds: Thresholds = DEFAULT_THRESHOLDS
    write_mode: WriteMode = WriteMode.TRANSACTION
    flush_attempts: int = 4
    # The stored sweep (module docstring): first run this long after start (None:
    # `silence_after`, so live devices this worker owns have reported and been loaded), then
    # every `stored_sweep_interval`.
    stored_sweep_interval: float = 3600.0
    stored_sweep_after: float | None = None
    # Devices whose readings changed nothing get their last-seen written at most once per
    # this many seconds, packed (module docstring); 0 writes the device on every reading.
    last_seen_interval: float = 300.0
    # One CONSUMER span per batch (not per record: docs/benchmarks.md has the cost), linking
    # the records that carry a trace context (at most MAX_BATCH_LINKS); the device events the
    # batch causes carry it, so a reading and the events it caused share one trace.
    tracing: bool = True
    stream_name: str = "telemetry"  # the stream's name on the batch span

    def __post_init__(self) -> None:
        if self.zone not in ("eu", "us"):
            raise ValueError(f"zone must be 'eu' or 'us', got {self.zone!r}")
        if self.silence_after <= 0 or self.sweep_interval <= 0:
            raise ValueError("silence_after and sweep_interval must be positive")
        if self.write_mode not in WRITE_MODES:
            raise ValueError(
                f"write_mode must be 'transaction' or 'items', got {self.write_mode!r}"
            )
        # A name from the environment or a caller's string becomes the enum member.
        object.__setattr__(self, "write_mode", WriteMode(self.write_mode))
        if self.flush_attempts < 1:
            raise ValueError("flush_attempts must be >= 1")
        if self.stored_sweep_interval <= 0:
            raise ValueError(
                f"stored_sweep_interval must be positive, got {self.stored_sweep_interval}"
            )
        if self.stored_sweep_after is not None and self.stored_sweep_after < 0:
            raise ValueError(
                f"stored_sweep_after must be >= 0, got {self.stored_sweep_after}"
            )
        if self.last_seen_interval < 0:
            raise ValueError(
                f"last_seen_interval must be >= 0, got {self.last_seen_interval}"
            )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TelemetryConfig:
        """FLEETLINE_RESIDENCY_ZONE, FLEETLINE_SILENCE_AFTER, FLEETLINE_SWEEP_INTERVAL,
        FLEETLINE_THRESHOLDS (JSON, see `Thresholds.from_json`), FLEETLINE_WRITE_MODE,
        FLEETLINE_STORED_SWEEP_INTERVAL (seconds, default 3600), FLEETLINE_LAST_SEEN_INTERVAL
        (seconds, default 300; 0: write the device on every reading)."""
        env = os.environ if environ is None else environ
        thresholds = DEFAULT_THRESHOLDS
        if env.get("FLEETLINE_THRESHOLDS"):
            thresholds = Thresholds.from_json(env["FLEETLINE_THRESHOLDS"])
        # TRANSACTION everywhere, the emulator included (moto deep-copied a table and its
        # stream per TransactWriteItems; shared.emulator backs up items).
        write_mode = env.get("FLEETLINE_WRITE_MODE") or WriteMode.TRANSACTION
        if write_mode not in WRITE_MODES:
            raise ValueError(
                f"FLEETLINE_WRITE_MODE must be 'transaction' or 'items', got {write_mode!r}"
            )
        return cls(
            zone=env.get("FLEETLINE_RESIDENCY_ZONE", "eu"),
            silence_after=float(env.get("FLEETLINE_SILENCE_AFTER", "60")),
            sweep_interval=float(env.get("FLEETLINE_SWEEP_INTERVAL", "5")),
            thresholds=thresholds,
            write_mode=WriteMode(write_mode),
            stored_sweep_interval=float(env.get("FLEETLINE_STORED_SWEEP_INTERVAL") or "3600"),
            last_seen_interval=float(env.get("FLEETLINE_LAST_SEEN_INTERVAL") or "300"),
        )


@dataclass(frozen=True, kw_only=True)
class TelemetryStatistics:
    """Counters since the processor was made: an immutable snapshot
    (`TelemetryProcessor.statistics()`)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    malformed: int = 0
    refused: int = 0
    device_writes: int = 0
    commits: int = 0
    loads: int = 0
    events: int = 0
    evicted: int = 0
    lake_rows: int = 0
    last_seen_items: int = 0
    last_seen_devices: int = 0
    events_by_type: Mapping[str, int] = field(default_factory=dict)


# The counters a processor keeps (by name, as `TelemetryStatistics` calls them).
_COUNTED: Final = tuple(f.name for f in fields(TelemetryStatistics) if f.name != "events_by_type")


@dataclass(slots=True)
class _Device:
    state: DeviceState
    version: int
    pending: list[DeviceEvent] = field(default_factory=list)
    dirty: bool = False


def stored_disconnects(
    scanned: Iterable[StoredDevice], *, now: float, silence_after: float,
    held: Mapping[str, object], seen: Mapping[str, float] | None = None,
) -> list[DeviceWrite]:
    """The stored sweep's decision, without I/O: of devices read from the table, the writes
    that report them disconnected. A device is due when it is stored ONLINE, its last record
    arrived more than `silence_after` seconds before `now` (`domain.check_silence`; the
    arrival is the newer of the item's and of `seen`, the packed last-seen items' newest
    arrival per device), and it is not in `held` (the devices this worker holds: its own
    sweep reports those). Each write carries the state OFFLINE with its DeviceDisconnected,
    at the version read, so it is conditional on nobody having written the device since.
    `scanned` is not changed."""
    writes: list[DeviceWrite] = []
    seen = seen or {}
    for stored in scanned:
        device_id = stored.state.device_id
        if device_id in held:
            continue
        state = replace(stored.state)  # check_silence changes the state it decides on
        arrival = seen.get(device_id, 0.0)
        if arrival > state.last_arrival:
            state.last_arrival = arrival
        applied = check_silence(state, now=now, silence_after=silence_after)
        if applied is not None:
            writes.append(DeviceWrite(state, stored.version, tuple(applied.events)))
    return writes


MAX_BATCH_LINKS: Final = 32


def _record_contexts(messages: Sequence[Message]) -> list[SpanContext]:
    """The distinct trace contexts records carry (a `traceparent` / X-Ray attribute), at most
    MAX_BATCH_LINKS: a batch span's links. Records from IoT rules carry none: nothing is
    parsed for them."""
    carriers = [m.attributes for m in messages if m.attributes]
    if not carriers:
        return []
    return tracing.distinct_producer_contexts(carriers)[:MAX_BATCH_LINKS]


class TelemetryProcessor:
    """The BatchHandler of the telemetry worker (see the module docstring).

    Devices live in memory for as long as the process runs. Safe for concurrent batches of
    different shards: a device belongs to one shard (partition key = device id), and writes
    are serialised by one lock so the silence sweep never races a shard's flush."""

    def __init__(
        self,
        store: DeviceStore,
        config: TelemetryConfig | None = None,
        *,
        lake: LakeSink | None = None,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.lake = lake
        self.config = config or TelemetryConfig()
        self._counts: collections.Counter[str] = collections.Counter()
        self._events_by_type: collections.Counter[str] = collections.Counter()
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        # Devices ONLINE, oldest arrival first: the sweep stops at the first recent one.
        self._by_arrival: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._write_lock = anyio.Lock()
        # Devices whose newest applied reading their item does not carry (last-seen pending).
        self._unwritten: dict[str, _Device] = {}
        self._writer = uuid.uuid4().hex[:12]
        self._last_seen_at = clock()

    def statistics(self) -> TelemetryStatistics:
        """An immutable snapshot of the counters."""
        counts = {name: self._counts[name] for name in _COUNTED}
        return TelemetryStatistics(events_by_type=dict(self._events_by_type), **counts)

    # -- the BatchHandler ------------------------------------------------------------------

    async def __call__(self, messages: Sequence[Message]) -> BatchResult:
        if not self.config.tracing or not messages:
            return await self._process(messages)
        attributes: dict[str, str | int] = {
            "messaging.system": "aws_kinesis",
            "messaging.destination.name": self.config.stream_name,
            "messaging.destination.partition.id": messages[0].source_name,  # the shard
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.batch.message_count": len(messages),
        }
        with tracing.tracer("services.devices.telemetry").start_as_current_span(
                f"process {attributes['messaging.destination.name']}", kind=SpanKind.CONSUMER,
                attributes=attributes, links=[Link(c) for c in _record_contexts(messages)]):
            return await self._process(messages)

    async def _process(self, messages: Sequence[Message]) -> BatchResult:
        outcomes: dict[str, Outcome] = {}
        reasons: dict[str, str] = {}
        parsed: list[tuple[Message, Record]] = []
        counts = self._counts
        for message in messages:
            counts["records"] += 1
            try:
                if message.attributes.get("content-transfer-encoding") == "base64":
                    raise InvalidTelemetry("record data is not UTF-8 text")
                record = parse_record(message.body)
                if isinstance(record, StateReport) and not record.zone:
                    # the ingest function refused other zones: it reports from this one
                    record = replace(record, zone=self.config.zone)
                parsed.append((message, record))
            except InvalidTelemetry as exc:
                counts["malformed"] += 1
                outcomes[message.id] = Outcome.DEAD_LETTER
                reasons[message.id] = f"malformed: {exc}"
        missing = {rec.device_id for _, rec in parsed if rec.device_id not in self._devices}
        if missing:
            counts["loads"] += 1
            for device_id, stored in (await self.store.load(missing)).items():
                if device_id not in self._devices:
                    self._devices[device_id] = _Device(stored.state, stored.version)
                    if stored.state.status is Status.ONLINE:
                        self._track(device_id)

        touched: dict[str, _Device] = {}
        unwritten = self._unwritten
        rows: list[bytes] = []
        lake = self.lake
        write_every_record = not self.config.last_seen_interval
        now = self._clock()
        devices = self._devices
        thresholds = self.config.thresholds
        zone = self.config.zone
        for message, rec in parsed:
            device = devices.get(rec.device_id)
            try:
                check_residency(rec, deployment_zone=zone,
                                state=device.state if device is not None else None)
            except ResidencyRefused as exc:
                counts["refused"] += 1
                outcomes[message.id] = Outcome.DEAD_LETTER
                reasons[message.id] = exc.reason
                continue
            if device is None:
                device = devices[rec.device_id] = _Device(DeviceState.new(rec), 0)
            if isinstance(rec, Telemetry):
                is_reading = True
                arrival = message.approximate_arrival or now
                applied = apply_telemetry(device.state, rec, thresholds=thresholds,
                                          arrival=arrival)
            else:
                is_reading = False
                if isinstance(rec, DesiredUpdate):
                    applied = apply_desired(device.state, rec)
                elif isinstance(rec, Presence):
                    applied = apply_presence(device.state, rec,
                                             arrival=message.approximate_arrival or now)
                    if rec.online and device.state.status is Status.ONLINE:
                        self._track(rec.device_id)  # alive: the silence sweep waits again
                else:
                    applied = apply_report(device.state, rec)
            if applied.outcome is ApplyOutcome.APPLIED:
                counts["applied"] += 1
                outcomes[message.id] = Outcome.SUCCEEDED
                if applied.events or not is_reading or write_every_record:
                    # A state change (or a desired update): written with this batch.
                    device.dirty = True
                    touched[rec.device_id] = device
                    if applied.events:
                        device.pending.extend(applied.events)
                elif not device.dirty:
                    unwritten[rec.device_id] = device  # last-seen only: written packed
                if isinstance(rec, Telemetry):
                    self._track(rec.device_id)
                    if lake is not None:
                        rows.extend(reading_rows(rec, arrival=arrival))
            else:
                if applied.outcome is ApplyOutcome.DUPLICATE:
                    counts["duplicates"] += 1
                else:
                    counts["stale"] += 1
                outcomes[message.id] = Outcome.DUPLICATE
        if rows and lake is not None:
            try:
                await lake.put(rows)
            except LakeError:
                # The readings are applied in memory but not in the lake: forget every
                # device of the batch, so the retried batch reloads them and sends again.
                for _, rec in parsed:
                    self._evict(rec.device_id)
                raise
            counts["lake_rows"] += len(rows)
        if touched:
            await self.flush(touched.values())
        return BatchResult(outcomes, reasons)

    def _track(self, device_id: str) -> None:
        by_arrival = self._by_arrival
        if device_id in by_arrival:
            by_arrival.move_to_end(device_id)
        else:
            by_arrival[device_id] = None

    # -- writing behind --------------------------------------------------------------------

    async def flush(self, devices: Iterable[_Device]) -> None:
        """Write each dirty device once (state + its pending events).

        Raises:
            FlushError: some devices could not be written after `flush_attempts`; they were
                dropped from memory (the retried batch reloads them).
        """
        async with self._write_lock:
            pending = [d for d in devices if d.dirty]
            if not pending:
                return
            if self.config.write_mode is WriteMode.TRANSACTION:
                groups = [pending[i:i + TRANSACTION_LIMIT]
                          for i in range(0, len(pending), TRANSACTION_LIMIT)]
            else:
                groups = [[d] for d in pending]
            failed: list[str] = []

            limiter = anyio.CapacityLimiter(WRITE_CONCURRENCY)

            async def write_group(group: list[_Device]) -> None:
                async with limiter:
                    lost = await self._commit_group(group)
                failed.extend(lost)

            if len(groups) == 1:
                await write_group(groups[0])
            else:
                async with anyio.create_task_group() as tg:
                    for group in groups:
                        tg.start_soon(write_group, group)
        if failed:
            raise FlushError(f"{len(failed)} device(s) not written: {sorted(failed)[:5]}")

    async def _commit_group(self, group: list[_Device]) -> list[str]:
        """Commit `group`, retrying transient failures; returns the ids of devices not
        written (dropped from memory)."""
        remaining = {d.state.device_id: d for d in group}
        lost: set[str] = set()
        for attempt in range(self.config.flush_attempts):
            writes = [DeviceWrite(d.state, d.version, tuple(d.pending))
                      for d in remaining.values()]
            try:
                result = await self.store.commit(writes)
            except RetryableError as exc:
                log.warning("device flush failed; retrying", error=str(exc), attempt=attempt)
                await anyio.sleep(min(0.05 * 2**attempt, 1.0))
                continue
            self._counts["commits"] += 1
            for device_id, written in result.committed.items():
                device = remaining.pop(device_id)
                self._unwritten.pop(device_id, None)  # its item now carries its last-seen
                device.version += 1
                device.dirty = False
                device.pending.clear()
                self._counts["device_writes"] += 1
                self._counts["events"] += len(written)
                for envelope in written:
                    self._events_by_type[str(envelope.get("type"))] += 1
            for device_id in result.conflicts:
                # Someone else wrote it (its shard moved): our view is stale. Forget it.
                remaining.pop(device_id, None)
                self._evict(device_id)
                lost.add(device_id)
            if not remaining:
                break
            if not result.committed:
                await anyio.sleep(min(0.02 * 2**attempt, 0.5))
        for device_id in remaining:
            self._evict(device_id)
            lost.add(device_id)
        return sorted(lost)

    def _evict(self, device_id: str) -> None:
        if self._devices.pop(device_id, None) is not None:
            self._counts["evicted"] += 1
        self._by_arrival.pop(device_id, None)

    # -- last-seen -------------------------------------------------------------------------

    async def flush_last_seen(self, now: float | None = None) -> int:
        """Write the last-seen of every device whose item does not carry its newest applied
        reading, packed (`DeviceStore.put_last_seen`). Returns how many devices were
        written. On failure the devices stay pending for the next call.

        Raises:
            shared.errors types: the write failed (retryable ones: try again later).
        """
        at = self._clock() if now is None else now
        pending, self._unwritten = self._unwritten, {}
        self._last_seen_at = at
        if not pending:
            return 0
        entries = [LastSeen(device_id, d.state.last_seen, d.state.last_arrival, d.state.seq)
                   for device_id, d in pending.items()]
        config = self.config
        # Kept until two stored sweeps have read it (they take the newest arrival).
        expires_at = at + 2 * config.stored_sweep_interval + config.last_seen_interval
        try:
            items = await self.store.put_last_seen(entries, writer=self._writer, now=at,
                                                   expires_at=expires_at)
        except BaseException:
            for device_id, device in pending.items():
                self._unwritten.setdefault(device_id, device)
            raise
        self._counts["last_seen_items"] += items
        self._counts["last_seen_devices"] += len(entries)
        return len(entries)

    async def _last_seen_if_due(self) -> None:
        interval = self.config.last_seen_interval
        if interval and self._clock() - self._last_seen_at >= interval:
            await self.flush_last_seen()

    # -- silence ---------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Report devices silent longer than `silence_after` as disconnected (once each).
        Returns how many were; their writes go out like any flush.

        Raises:
            FlushError: as `flush` (the devices are reloaded when they next report).
        """
        at = self._clock() if now is None else now
        limit = self.config.silence_after
        changed: list[_Device] = []
        by_arrival = self._by_arrival
        while by_arrival:
            device_id = next(iter(by_arrival))
            device = self._devices.get(device_id)
            if device is None:
                by_arrival.popitem(last=False)
                continue
            applied = check_silence(device.state, now=at, silence_after=limit)
            if applied is None:
                if device.state.status is Status.ONLINE:
                    break  # the oldest online device is recent: so are the rest
                by_arrival.popitem(last=False)
                continue
            by_arrival.popitem(last=False)
            device.pending.extend(applied.events)
            device.dirty = True
            changed.append(device)
        if changed:
            # The silence decided these events: a trace of its own, one span per sweep.
            with tracing.tracer("services.devices.telemetry").start_as_current_span(
                    "sweep silent devices", attributes={"fleetline.devices": len(changed)}):
                await self.flush(changed)
        return len(changed)

    async def sweep_stored(self, now: float | None = None) -> int:
        """Report devices stored ONLINE that this worker does not hold and that are silent
        longer than `silence_after + sweep_interval` as disconnected (see the module
        docstring). Scans the whole table, page by page; each page's due devices are written
        by `flush`. A write that conflicts (the device's owner, or another worker's stored
        sweep, wrote it first) is dropped: that writer's version stands. Returns how many
        devices this call reported.

        Raises:
            shared.errors types: the Scan, or a write, failed for a reason other than a
                conflict or a transient error (devices already written stay written; the
                next stored sweep sees the rest).
        """
        at = self._clock() if now is None else now
        config = self.config
        silence = config.silence_after + config.sweep_interval + config.last_seen_interval
        seen = await self.store.scan_last_seen() if config.last_seen_interval else {}
        scanned = reported = dropped = 0
        async for page in self.store.scan_online(page_size=STORED_SWEEP_PAGE):
            scanned += len(page)
            due = [_Device(w.state, w.version, list(w.events), dirty=True)
                   for w in stored_disconnects(page, now=at, silence_after=silence,
                                               held=self._devices, seen=seen)]
            if not due:
                continue
            try:
                with tracing.tracer("services.devices.telemetry").start_as_current_span(
                        "sweep stored silent devices", attributes={"fleetline.devices": len(due)}):
                    await self.flush(due)
            except FlushError as exc:
                # Conflicts (another writer was first; its version stands) or repeated
                # transient failures (still ONLINE: the next stored sweep sees them).
                log.info("stored sweep: some devices not written", error=str(exc))
            written = sum(1 for d in due if not d.dirty)
            reported += written
            dropped += len(due) - written
        log.info("stored sweep done", online_scanned=scanned, disconnected=reported,
                 dropped=dropped)
        return reported

    async def run_stored_sweeper(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """`sweep_stored` `stored_sweep_after` after start (default `silence_after`), then
        every `stored_sweep_interval`, until cancelled. Retryable failures are logged, not
        raised: the next round tries again; others propagate (a missing dynamodb:Scan
        permission stops the worker instead of leaving devices ONLINE unnoticed)."""
        task_status.started()
        first = self.config.stored_sweep_after
        await anyio.sleep(self.config.silence_after if first is None else first)
        while True:
            try:
                await self.sweep_stored()
            except RetryableError as exc:
                log.warning("stored sweep failed; next round retries", error=str(exc))
            await anyio.sleep(self.config.stored_sweep_interval)

    async def run_sweeper(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep every `sweep_interval` until cancelled, and write the pending last-seen when
        `last_seen_interval` has passed since the last time. Failures are logged, not
        raised: the next round tries again."""
        task_status.started()
        while True:
            await anyio.sleep(self.config.sweep_interval)
            try:
                await self.sweep()
            except RetryableError as exc:
                log.warning("silence sweep failed; next round retries", error=str(exc))
            try:
                await self._last_seen_if_due()
            except RetryableError as exc:
                log.warning("last-seen write failed; next round retries", error=str(exc))

    # -- inspection ------------------------------------------------------------------------

    def device(self, device_id: str) -> DeviceState | None:
        entry = self._devices.get(device_id)
        return entry.state if entry is not None else None

    @property
    def device_count(self) -> int:
        return len(self._devices)


# Wait after an empty GetRecords. The runtime's default (1 s) would put up to a second per
# quiet shard between a device and the dashboard (issue 4: under 1 s end to end). Kinesis
# allows 5 GetRecords per second per shard, shared by every consumer of the stream; the
# telemetry stream has one consumer (this worker, one lease holder per shard), so 4 reads/s
# per idle shard stays within the limit with room for a resharding or a second reader. A busy
# shard is read again at once whatever this is (full page or MillisBehindLatest > 0).
TELEMETRY_IDLE_BACKOFF: Final = 0.25


def stream_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """Kinesis consumer settings from FLEETLINE_LEASE_DURATION, FLEETLINE_IDLE_BACKOFF
    (seconds; default `TELEMETRY_IDLE_BACKOFF`; tests shorten them) and
    FLEETLINE_STREAM_LIMIT (records per GetRecords; default the service maximum). Unset
    (but the idle backoff): the runtime's defaults."""
    options: dict[str, Any] = {"idle_backoff": TELEMETRY_IDLE_BACKOFF}
    if environ.get("FLEETLINE_LEASE_DURATION"):
        options["lease_duration"] = float(environ["FLEETLINE_LEASE_DURATION"])
    if environ.get("FLEETLINE_IDLE_BACKOFF"):
        options["idle_backoff"] = float(environ["FLEETLINE_IDLE_BACKOFF"])
    if environ.get("FLEETLINE_STREAM_LIMIT"):
        options["limit"] = int(environ["FLEETLINE_STREAM_LIMIT"])
    return options


@contextlib.asynccontextmanager
async def telemetry_lifespan(aws: AwsClients, resources: Resources) -> AsyncIterator[BatchHandler]:
    """The processor over DevicesTable and the readings lake (`ReadingsDeliveryStream`; the
    template always passes it, a test harness may not: then no lake), with its silence
    sweepers (memory and stored) running alongside. On the way out the pending last-seen
    is written (best effort: a failure is logged, the next worker's items are newer)."""
    config = replace(TelemetryConfig.from_environ(),
                     stream_name=resources.get("TelemetryStream").rsplit("/", 1)[-1])
    stream = resources.values.get(resource_env_name("ReadingsDeliveryStream"))
    if not stream:
        log.warning("no readings delivery stream: readings do not reach the lake")
    processor = TelemetryProcessor(
        DynamoDeviceStore(aws, resources.get("DevicesTable")), config,
        lake=FirehoseLake(aws, stream) if stream else None,
    )
    log.info("telemetry processor ready", zone=config.zone, write_mode=config.write_mode,
             silence_after=config.silence_after, last_seen_interval=config.last_seen_interval,
             lake=stream)
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run_sweeper)
        await tg.start(processor.run_stored_sweeper)
        yield processor
        tg.cancel_scope.cancel()
    try:
        written = await processor.flush_last_seen()
        log.info("last-seen written on stop", devices=written)
    except Exception as exc:
        log.warning("last-seen not written on stop", error=str(exc))


def worker() -> Worker:
    """The ECS task (`python -m shared.hosts.worker services.devices.telemetry:worker`):
    TelemetryStream with leases shared by the tasks, bad records to TelemetryFailureQueue."""
    return Worker(
        name="telemetry",
        source=KinesisStream("TelemetryStream", application="telemetry",
                             failure_queue="TelemetryFailureQueue",
                             options=stream_options(os.environ)),
        lifespan=telemetry_lifespan,
    )
