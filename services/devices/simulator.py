"""`fleetline simulate`: a fleet of devices writing where AWS IoT Core's rules would.

The fleet is N devices (`dev-000001` ...) spread over tenants (`t-001` ...) and two residency
zones (eu, us), each with a firmware version; every device sends telemetry with its own
increasing `seq`, round-robin across the fleet at a total rate. A run serves one zone
(`--zone`, default the first stack of the running `fleetline up`): devices of the other zone
write to the other zone's stack, so only the `misrouted` fault sends them here (to exercise
residency refusal). `--all-zones` plays the same fleet in every zone `fleetline up --zones`
runs, each device writing to its home zone's stack only.

Fault modes (each a probability per record, or a share of devices for `silent`):
duplicates (the same record twice), out-of-order (a record held back and sent after the
device's next one), malformed (bytes the worker cannot decode, or a record missing a field),
silent (devices that stop sending after `silent_after` seconds), misrouted (a record of a
device of the other zone).

Writes are batched as the rules' targets would receive them: Kinesis PutRecords (up to 500
records, partition key = device id; only failed records are retried) and EventBridge
PutEvents (up to 10 entries) for presence events (connected when a device starts, disconnected
when it goes silent) when `presence` is on.

`FleetPlan` is pure (a seeded generator of records), so tests and the benchmark use the
same fleet without I/O.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import anyio
import anyio.abc
import typer

from services.devices.events import EDGE_SOURCE
from services.devices.firmware_agent import DeviceAnswer, UpdateFaults, UpdatePlan, watch_jobs
from shared.aws import AwsClients, aws_errors
from shared.config import Resources

__all__ = [
    "FleetConfig",
    "FleetPlan",
    "OutRecord",
    "SimulationReport",
    "app",
    "simulate",
]

PUT_RECORDS_MAX: Final = 500
PUT_RECORDS_MAX_BYTES: Final = 5_000_000
PUT_EVENTS_MAX: Final = 10
PRESENCE_IN_FLIGHT: Final = 8  # PutEvents calls at once for presence events
PRESENCE_BUFFER: Final = 64  # batches of presence entries waiting before telemetry waits
PRESENCE_DETAIL_TYPE: Final = "DevicePresence"


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """A fleet and its faults. Probabilities are per record; `silent` is a share of devices."""

    devices: int = 1_000
    tenants: int = 10
    zone: str = "eu"  # the zone this deployment serves
    eu_share: float = 0.5  # share of devices in eu; the rest are in us
    firmware_versions: tuple[str, ...] = ("1.0.0", "1.1.0", "2.0.0")
    duplicates: float = 0.0
    out_of_order: float = 0.0
    malformed: float = 0.0
    silent: float = 0.0
    silent_after: float = 10.0  # seconds after the start
    misrouted: float = 0.0
    alarm_rate: float = 0.001  # probability a temperature reading spikes above 80
    seed: int = 1
    # The first record of each device carries seq_base + 1. The CLI starts from the clock
    # (milliseconds), so a second run against the same stack is newer than the first: the
    # telemetry worker drops records whose seq is not newer than the one it stored.
    seq_base: int = 0

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("devices must be >= 1")
        if self.tenants < 1:
            raise ValueError("tenants must be >= 1")
        if self.zone not in ("eu", "us"):  # the zones of shared.zones.ZONES
            raise ValueError("zone must be 'eu' or 'us'")
        for name in ("eu_share", "duplicates", "out_of_order", "malformed", "silent",
                     "misrouted", "alarm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not self.firmware_versions:
            raise ValueError("firmware_versions must not be empty")


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One Kinesis record to write. `fault` says what was injected ("" for none)."""

    partition_key: str
    data: bytes
    fault: str = ""
    device_index: int = -1
    seq: int = 0


@dataclass
class SimulationReport:
    """What a run sent: `elapsed` runs until the last record and the last presence event
    were written, so `rate` is what the fleet reached, not what was asked."""

    records: int = 0
    by_fault: dict[str, int] = field(default_factory=dict)
    put_records_calls: int = 0
    put_events_calls: int = 0
    presence_events: int = 0
    retried_records: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.elapsed if self.elapsed > 0 else 0.0


class FleetPlan:
    """Generates the fleet's records, deterministically for a seed. No I/O.

    The devices of this deployment's zone send round-robin; `next_batch(n, now)` returns up to
    `n` records (fewer only when every local device is silent)."""

    def __init__(self, config: FleetConfig, *, start: float | None = None) -> None:
        self.config = config
        self._rnd = random.Random(config.seed)
        self.start = time.time() if start is None else start
        n = config.devices
        zone_rnd = random.Random(config.seed * 7919 + 1)
        self.zones = ["eu" if zone_rnd.random() < config.eu_share else "us" for _ in range(n)]
        self.tenants = [f"t-{(i % config.tenants) + 1:03d}" for i in range(n)]
        self.ids = [f"dev-{i + 1:06d}" for i in range(n)]
        versions = config.firmware_versions
        self.firmware = [versions[i % len(versions)] for i in range(n)]
        self.seq = [config.seq_base] * n
        self.temperature = [20.0 + (i % 15) for i in range(n)]
        self.battery = [100.0 - (i % 50) for i in range(n)]
        self.local = [i for i in range(n) if self.zones[i] == config.zone]
        self.foreign = [i for i in range(n) if self.zones[i] != config.zone]
        silent_count = round(len(self.local) * config.silent)
        self.silent = frozenset(self.local[:silent_count])
        self._cursor = 0
        self._held: dict[int, OutRecord] = {}  # out-of-order: held until the device's next
        self.started: set[int] = set()

    def device_record(self, i: int, now: float) -> tuple[str, dict[str, Any]]:
        """The next telemetry record of device `i` (advances its seq)."""
        return self._record(i, now)

    def answer_record(self, answer: DeviceAnswer, now: float) -> OutRecord:
        """The record a device sends right after a firmware job: its new version, or the
        failed install (it stays on its version)."""
        i = answer.device
        if not answer.failed:
            self.firmware[i] = answer.version
        key, body = self._record(i, now)
        body["firmware_update"] = {"status": "failed" if answer.failed else "succeeded",
                                   "version": answer.version, "job": answer.job or ""}
        if answer.failed:
            body["firmware_update"]["reason"] = answer.reason or "failed"
        return OutRecord(key, json.dumps(body, separators=(",", ":")).encode(),
                         "firmware-failed" if answer.failed else "firmware-installed", i,
                         self.seq[i])

    def local_index(self) -> dict[str, int]:
        """This zone's device ids (IoT thing names) to their index."""
        return {self.ids[i]: i for i in self.local}

    def _record(self, i: int, now: float) -> tuple[str, dict[str, Any]]:
        self.seq[i] += 1
        rnd = self._rnd
        temp = self.temperature[i] + rnd.uniform(-0.5, 0.5)
        temp = min(max(temp, -10.0), 60.0)
        self.temperature[i] = temp
        if rnd.random() < self.config.alarm_rate:
            temp = 85.0 + rnd.random() * 10
        self.battery[i] = max(self.battery[i] - 0.01, 0.0)
        body = {
            "kind": "telemetry",
            "device_id": self.ids[i],
            "tenant_id": self.tenants[i],
            "zone": self.zones[i],
            "seq": self.seq[i],
            "ts": now,
            "firmware": self.firmware[i],
            "readings": {"temperature": round(temp, 2), "battery": round(self.battery[i], 2)},
        }
        return self.ids[i], body

    def is_silent(self, i: int, now: float) -> bool:
        return i in self.silent and now - self.start >= self.config.silent_after

    def next_batch(self, n: int, now: float) -> list[OutRecord]:
        cfg = self.config
        rnd = self._rnd
        out: list[OutRecord] = []
        local = self.local
        if not local:
            return out
        skipped = 0
        while len(out) < n and skipped < len(local):
            i = local[self._cursor % len(local)]
            self._cursor += 1
            if self.is_silent(i, now):
                skipped += 1
                continue
            skipped = 0
            self.started.add(i)
            key, body = self.device_record(i, now)
            data = json.dumps(body, separators=(",", ":")).encode()
            rec = OutRecord(key, data, "", i, self.seq[i])
            held = self._held.pop(i, None)
            if cfg.malformed and rnd.random() < cfg.malformed:
                if rnd.random() < 0.5:
                    bad = data[: len(data) // 2]  # truncated JSON
                else:
                    del body["seq"]
                    bad = json.dumps(body).encode()
                out.append(OutRecord(key, bad, "malformed", i, self.seq[i]))
            elif cfg.out_of_order and held is None and rnd.random() < cfg.out_of_order:
                self._held[i] = OutRecord(key, data, "out-of-order", i, self.seq[i])
            else:
                out.append(rec)
            if held is not None:
                out.append(held)  # after the newer record: out of order
            if cfg.duplicates and rnd.random() < cfg.duplicates:
                out.append(OutRecord(key, data, "duplicate", i, self.seq[i]))
            if cfg.misrouted and self.foreign and rnd.random() < cfg.misrouted:
                j = rnd.choice(self.foreign)
                fkey, fbody = self.device_record(j, now)
                out.append(OutRecord(fkey, json.dumps(fbody).encode(), "misrouted", j,
                                     self.seq[j]))
        return out

    def flush_held(self) -> list[OutRecord]:
        """Records still held back for out-of-order delivery (send them at the end)."""
        held = list(self._held.values())
        self._held.clear()
        return held

    def presence(self, indexes: Sequence[int], status: str, now: float) -> list[dict[str, Any]]:
        """PutEvents entries for IoT lifecycle (presence) events of these devices."""
        return [
            {
                "Source": EDGE_SOURCE,
                "DetailType": PRESENCE_DETAIL_TYPE,
                "Detail": json.dumps(
                    {
                        "device_id": self.ids[i],
                        "tenant_id": self.tenants[i],
                        "zone": self.zones[i],
                        "status": status,
                        "ts": now,
                    }
                ),
            }
            for i in indexes
        ]


def chunks_for_put_records(records: Sequence[OutRecord]) -> Iterator[list[OutRecord]]:
    """Split into PutRecords calls: at most 500 records and 5 MB (data + keys) per call."""
    batch: list[OutRecord] = []
    size = 0
    for rec in records:
        rec_size = len(rec.data) + len(rec.partition_key)
        if batch and (len(batch) == PUT_RECORDS_MAX or size + rec_size > PUT_RECORDS_MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(rec)
        size += rec_size
    if batch:
        yield batch


async def put_records(
    kinesis: Any, stream: str, records: Sequence[OutRecord], report: SimulationReport,
    *, max_attempts: int = 8,
) -> None:
    """PutRecords in batches; retries only the records a partial failure names.

    Raises:
        AwsUnavailableError / AwsRequestError: the call itself failed (translated).
        RuntimeError: some records still failed after `max_attempts`.
    """
    for batch in chunks_for_put_records(records):
        pending = batch
        for attempt in range(max_attempts):
            with aws_errors():
                response = await kinesis.put_records(
                    StreamName=stream,
                    Records=[{"Data": r.data, "PartitionKey": r.partition_key} for r in pending],
                )
            report.put_records_calls += 1
            if not response.get("FailedRecordCount"):
                break
            pending = [
                rec for rec, result in zip(pending, response["Records"], strict=True)
                if result.get("ErrorCode")
            ]
            report.retried_records += len(pending)
            await anyio.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
        else:
            raise RuntimeError(f"{len(pending)} records still failing after {max_attempts} tries")


async def put_events(
    events_client: Any, bus: str, entries: Sequence[dict[str, Any]], report: SimulationReport
) -> None:
    """PutEvents in batches of 10; failed entries are retried a few times, then reported."""
    for start in range(0, len(entries), PUT_EVENTS_MAX):
        pending = [dict(e, EventBusName=bus) for e in entries[start : start + PUT_EVENTS_MAX]]
        for attempt in range(5):
            with aws_errors():
                response = await events_client.put_events(Entries=pending)
            report.put_events_calls += 1
            if not response.get("FailedEntryCount"):
                pending = []
                break
            pending = [
                e for e, r in zip(pending, response["Entries"], strict=True) if r.get("ErrorCode")
            ]
            await anyio.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
        report.presence_events += len(entries[start : start + PUT_EVENTS_MAX]) - len(pending)


async def simulate(
    aws: AwsClients,
    config: FleetConfig,
    *,
    stream: str,
    bus: str | None,
    rate: float,
    count: int | None = None,
    duration: float | None = None,
    batch_size: int = PUT_RECORDS_MAX,
    on_batch: Any = None,
    plan: FleetPlan | None = None,
    updates: UpdatePlan | None = None,
) -> SimulationReport:
    """Play the fleet at `rate` records/s until `count` records or `duration` seconds.

    `bus` None sends no presence events. `on_batch(records)` (optional) sees each batch
    after it was written. Pass `plan` to continue a fleet across calls (its devices keep
    their sequence numbers); by default a new plan is made from `config`. With `updates` the
    devices take firmware jobs (services.devices.firmware_agent) while the fleet plays."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if count is None and duration is None:
        raise ValueError("give count or duration")
    plan = plan if plan is not None else FleetPlan(config)
    report = SimulationReport()
    started = time.monotonic()
    kinesis = await aws.client("kinesis")
    events_client = await aws.client("events") if bus else None
    # Presence events go out from their own task, a few PutEvents in flight, so a slow bus
    # does not hold back telemetry; the bounded buffer still pushes back when it falls behind.
    presence_in, presence_out = anyio.create_memory_object_stream[list[dict[str, Any]]](
        max_buffer_size=PRESENCE_BUFFER
    )
    async with anyio.create_task_group() as senders:
        if events_client is not None and bus:
            senders.start_soon(_send_presence, events_client, bus, presence_out, report)
        else:
            presence_out.close()
        async with presence_in, anyio.create_task_group() as watching:
            if updates is not None:  # jobs from before this run were answered by an earlier one
                watching.start_soon(functools.partial(
                    watch_jobs, aws, updates, plan.local_index(), since=time.time() - 1.0))
            await _play(plan, kinesis, stream,
                        presence_in if events_client is not None and bus else None,
                        report, rate=rate, count=count, duration=duration,
                        batch_size=batch_size, on_batch=on_batch, updates=updates)
            watching.cancel_scope.cancel()  # the presence sender still drains its buffer
    # Until the last presence event is out too: a slow bus holds the fleet back (the bounded
    # buffer), so a rate over the telemetry alone would claim more than was reached.
    report.elapsed = time.monotonic() - started
    return report


async def _send_presence(
    events_client: Any, bus: str,
    batches: anyio.abc.ObjectReceiveStream[list[dict[str, Any]]], report: SimulationReport,
) -> None:
    in_flight = anyio.Semaphore(PRESENCE_IN_FLIGHT)

    async def one(chunk: list[dict[str, Any]]) -> None:
        try:
            await put_events(events_client, bus, chunk, report)
        finally:
            in_flight.release()

    async with batches, anyio.create_task_group() as tg:
        async for entries in batches:
            for start in range(0, len(entries), PUT_EVENTS_MAX):
                await in_flight.acquire()  # taken here, so no more tasks exist than may run
                tg.start_soon(one, entries[start : start + PUT_EVENTS_MAX])


async def _play(
    plan: FleetPlan, kinesis: Any, stream: str,
    presence: anyio.abc.ObjectSendStream[list[dict[str, Any]]] | None,
    report: SimulationReport, *, rate: float, count: int | None, duration: float | None,
    batch_size: int, on_batch: Any, updates: UpdatePlan | None = None,
) -> None:
    started = time.monotonic()
    silent_announced: set[int] = set()
    sent = 0
    while True:
        elapsed = time.monotonic() - started
        if duration is not None and elapsed >= duration:
            break
        if count is not None and sent >= count:
            break
        # pacing: never ahead of `rate`
        due = math.floor(rate * elapsed) + 1 - sent
        if due <= 0:
            await anyio.sleep(max((sent + 1) / rate - elapsed, 0.001))
            continue
        want = min(batch_size, due, count - sent if count is not None else batch_size)
        now = time.time()
        before = set(plan.started)
        batch = plan.next_batch(want, now)
        if updates is not None:  # answers go out at once, beside the round-robin
            batch.extend(plan.answer_record(a, now) for a in updates.due(now))
        if not batch:
            await anyio.sleep(0.05)
            continue
        await put_records(kinesis, stream, batch, report)
        sent += len(batch)
        report.records += len(batch)
        for rec in batch:
            if rec.fault:
                report.by_fault[rec.fault] = report.by_fault.get(rec.fault, 0) + 1
        if presence is not None:
            new = sorted(plan.started - before)
            gone = [
                i for i in plan.silent if plan.is_silent(i, now) and i not in silent_announced
            ]
            silent_announced.update(gone)
            entries = plan.presence(new, "connected", now)
            entries += plan.presence(gone, "disconnected", now)
            if entries:
                await presence.send(entries)
        if on_batch is not None:
            on_batch(batch)
    held = plan.flush_held()
    if held:
        await put_records(kinesis, stream, held, report)
        report.records += len(held)
        report.by_fault["out-of-order"] = report.by_fault.get("out-of-order", 0) + len(held)
        if on_batch is not None:
            on_batch(held)


# --------------------------------------------------------------------------- CLI

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Play a device fleet: telemetry to the stream, presence to the bus, in batches.",
)


@app.callback()
def _simulate_command(
    devices: Annotated[int, typer.Option(help="fleet size")] = 1_000,
    rate: Annotated[float, typer.Option(help="records per second, whole fleet")] = 500.0,
    duration: Annotated[float | None, typer.Option(help="seconds to run")] = None,
    count: Annotated[int | None, typer.Option(help="records to send")] = None,
    tenants: Annotated[int, typer.Option()] = 10,
    zone: Annotated[str | None, typer.Option(
        help="the zone whose devices play, on its stack (default: the first one up)")] = None,
    all_zones: Annotated[bool, typer.Option(
        "--all-zones", help="every zone up, each zone's devices on its own stack")] = False,
    eu_share: Annotated[float, typer.Option(help="share of devices in eu")] = 0.5,
    firmware: Annotated[str, typer.Option(help="comma-separated versions")] = "1.0.0,1.1.0,2.0.0",
    duplicates: Annotated[float, typer.Option(help="probability per record")] = 0.0,
    out_of_order: Annotated[float, typer.Option(help="probability per record")] = 0.0,
    malformed: Annotated[float, typer.Option(help="probability per record")] = 0.0,
    silent: Annotated[float, typer.Option(help="share of devices that go silent")] = 0.0,
    silent_after: Annotated[float, typer.Option(help="seconds before they do")] = 10.0,
    misrouted: Annotated[float, typer.Option(help="probability per record")] = 0.0,
    presence: Annotated[bool, typer.Option(help="presence events to the bus")] = True,
    stream: Annotated[str | None, typer.Option(help="default: $FLEETLINE_TELEMETRY_STREAM")] = None,
    bus: Annotated[str | None, typer.Option(
        help="default: $FLEETLINE_DEVICE_EVENTS_BUS_NAME")] = None,
    seed: Annotated[int, typer.Option()] = 1,
    commands: Annotated[bool, typer.Option(
        help="devices take firmware jobs (IoT Jobs) and answer")] = True,
    update_fail: Annotated[float, typer.Option(
        help="share of devices whose install fails")] = 0.0,
    update_late: Annotated[float, typer.Option(
        help="share that answer after --update-late-seconds")] = 0.0,
    update_silent: Annotated[float, typer.Option(help="share that never answer")] = 0.0,
    update_late_seconds: Annotated[float, typer.Option()] = 120.0,
    bad_firmware: Annotated[str, typer.Option(
        help="comma-separated versions that fail on most devices")] = "",
) -> None:
    from rich.console import Console

    console = Console()
    if duration is None and count is None:
        duration = 60.0
    if all_zones and (zone or stream or bus):
        raise typer.BadParameter("--all-zones plays every zone's stack: drop --zone/--stream/--bus")
    from services.devices._local import stack_clients, stack_resources, stack_zone, zones_up

    zones: list[str | None] = list(zones_up()) if all_zones else [zone]
    if not zones:
        raise typer.BadParameter("--all-zones: no `fleetline up` runs here")
    versions = tuple(v.strip() for v in firmware.split(",") if v.strip())

    def plan_zone(name: str | None) -> tuple[str | None, FleetConfig, str, str | None]:
        resources = (anyio.run(stack_resources, "TelemetryStream", None, name) if not stream
                     else Resources.from_environ())
        stream_name = stream or _resource(resources, "TelemetryStream")
        bus_name = (bus or _resource(resources, "DeviceEventsBusName")) if presence else None
        try:
            config = FleetConfig(
                devices=devices, tenants=tenants, zone=name or stack_zone(resources),
                eu_share=eu_share, firmware_versions=versions, duplicates=duplicates,
                out_of_order=out_of_order, malformed=malformed, silent=silent,
                silent_after=silent_after, misrouted=misrouted, seed=seed,
                seq_base=int(time.time() * 1000))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        return name, config, stream_name, bus_name

    planned = [plan_zone(name) for name in zones]

    def share(config: FleetConfig) -> float:
        # The asked rate is the whole fleet's: each zone plays its devices' share of it.
        if len(planned) == 1:
            return 1.0
        return config.eu_share if config.zone == "eu" else 1.0 - config.eu_share

    def updates_plan() -> UpdatePlan | None:
        return UpdatePlan(UpdateFaults(
            fail=update_fail, late=update_late, silent=update_silent,
            late_seconds=update_late_seconds,
            bad_versions=frozenset(v.strip() for v in bad_firmware.split(",") if v.strip()),
        ), seed=seed) if commands else None

    runs = [(name, config, stream_name, bus_name, updates_plan())
            for name, config, stream_name, bus_name in planned]
    reports: dict[str, SimulationReport] = {}

    async def play(name: str | None, config: FleetConfig, stream_name: str,
                   bus_name: str | None, updates: UpdatePlan | None) -> None:
        zone_rate = max(rate * share(config), 0.001)
        zone_count = None if count is None else max(round(count * share(config)), 1)
        # An explicit --stream is the environment's stack; else the one `stack_resources` read.
        async with (AwsClients() if stream else stack_clients(zone=name)) as aws:
            reports[config.zone] = await simulate(
                aws, config, stream=stream_name, bus=bus_name, rate=zone_rate,
                count=zone_count, duration=duration, updates=updates)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for run in runs:
                tg.start_soon(play, *run)

    for _name, config, stream_name, bus_name, _updates in runs:
        console.print(f"simulating the {config.zone} zone's devices of {devices} at "
                      f"{rate * share(config):g} records/s -> {stream_name}"
                      + (f", presence -> {bus_name}" if bus_name else ""))
    anyio.run(main)
    for _name, config, _stream, _bus, updates in runs:
        report = reports[config.zone]
        console.print(
            f"{config.zone}: sent {report.records} records and {report.presence_events} "
            f"presence events in {report.elapsed:.1f}s ({report.rate:.0f} records/s of "
            f"{rate * share(config):g} asked), {report.put_records_calls} PutRecords, "
            f"{report.put_events_calls} PutEvents; faults: {report.by_fault or 'none'}"
            + (f"; firmware jobs: {updates.scheduled} answers scheduled, {updates.silent} "
               "silent" if updates is not None else "")
        )


def _resource(resources: Resources, key: str) -> str:
    try:
        return resources.get(key)
    except Exception as exc:
        raise typer.BadParameter(str(exc)) from None
