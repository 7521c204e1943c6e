"""Two residency zones live: `fleetline up --zones eu,us,eu:secondary` (the real template, one
emulator, a stack per zone in its Region and eu's standby in eu-west-3), the simulator
sending each device to its home zone, `report monthly --all-zones` over both lakes, the
failover drill, and the residency scan of every Region (docs/zones.md).

One `up` serves the module (about 30-40 s to READY on 2 cores); the tests run in file order,
the scan last, as it reads what the others wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from services.devices.events import DeviceStateChanged, DeviceView, Status
from services.devices.simulator import FleetConfig, FleetPlan
from shared.aws import AwsClients
from shared.events import Envelope
from shared.local import command_resources, endpoint_clients, read_state
from shared.outbox import PublisherConfig
from shared.outbox._publisher import EventPublisher  # the publisher the relay uses
from shared.zones import ZONES
from tests.integration._residency import Scanned, scan_region

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FLEET = FleetConfig(devices=40, tenants=2, seed=7)  # what `simulate --devices 40 --seed 7` plays
RECORDS = 200  # the whole fleet's, shared by the zones


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1",
                "FLEETLINE_STATE_DIR": str(state_dir)})
    return env


@dataclass
class Zones:
    state_dir: Path
    endpoint: str
    env: dict[str, str]
    ready_line: str

    def fleetline(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT,
                              env=self.env, text=True, capture_output=True, timeout=timeout,
                              check=False)

    def clients(self, region: str) -> AwsClients:
        return endpoint_clients(self.endpoint, self.env, region=region)

    async def outputs(self, zone: str, probe: str = "DeviceReadModelTable") -> Any:
        return await command_resources(probe, self.env, zone)


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zones]:
    state_dir = tmp_path_factory.mktemp("fleetline-zones")
    env = _env(state_dir)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "up", "--detach", "--zones", "eu,us,eu:secondary"],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=300, check=False)
    try:
        log = state_dir / "up.log"
        assert done.returncode == 0, done.stderr + (log.read_text() if log.exists() else "")
        ready = [line for line in done.stdout.splitlines() if line.startswith("READY ")]
        assert len(ready) == 1, done.stdout
        print(f"three stacks READY in {time.monotonic() - started:.1f} s")
        yield Zones(state_dir=state_dir, endpoint=ready[0].split()[1], env=env,
                    ready_line=ready[0])
    finally:
        subprocess.run([sys.executable, "-m", "shared.cli", "down"], cwd=ROOT, env=env,
                       capture_output=True, timeout=120, check=False)


def _devices_of(zone: str) -> frozenset[str]:
    plan = FleetPlan(FLEET)
    return frozenset(plan.ids[i] for i in range(FLEET.devices) if plan.zones[i] == zone)


def test_up_runs_one_stack_per_zone_in_its_region(zones: Zones) -> None:
    assert "zones=eu@eu-west-1,us@us-east-1,eu:secondary@eu-west-3" in zones.ready_line
    state = read_state(zones.state_dir)
    assert state is not None
    assert [(s.zone, s.role, s.region) for s in state.stacks] == [
        ("eu", "primary", "eu-west-1"), ("us", "primary", "us-east-1"),
        ("eu", "secondary", "eu-west-3")]
    names = {c.name for c in state.children}
    for prefix in ("eu-", "us-", "eu-secondary-"):
        assert f"{prefix}TelemetryWorkerService" in names


async def _lake_objects(aws: AwsClients, bucket: str) -> dict[str, int]:
    s3 = await aws.client("s3")
    listed = await s3.list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


async def _events_in_lake(zones: Zones, zone: str, month: str) -> tuple[int, dict[str, int]]:
    """(readings of `month` the zone's lake holds, its objects' sizes), read in its Region."""
    from services.devices.report import combine, run_duckdb

    bucket = (await zones.outputs(zone, "LakeBucket")).get("LakeBucket")
    async with zones.clients(ZONES[zone].primary) as aws:
        partial = await run_duckdb(aws, bucket=bucket, zone=zone, month=month)
        return sum(f.events for f in combine([partial])), await _lake_objects(aws, bucket)


async def test_simulate_sends_each_device_home_and_the_report_combines_the_zones(
        zones: Zones) -> None:
    # A reading of last month, for pruning: the report of this month must not read it.
    now = datetime.now(UTC)
    month = now.strftime("%Y-%m")
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(hour=12)
    outputs = await zones.outputs("eu", "TelemetryStream")
    async with zones.clients("eu-west-1") as aws:
        kinesis = await aws.client("kinesis")
        await kinesis.put_record(
            StreamName=outputs.get("TelemetryStream"), PartitionKey="dev-old-eu",
            Data=json.dumps({"kind": "telemetry", "device_id": "dev-old-eu",
                             "tenant_id": "t-001", "zone": "eu", "seq": 1,
                             "ts": last_month.timestamp(), "firmware": "1.0.0",
                             "readings": {"temperature": 20.0}}).encode())

    done = zones.fleetline("simulate", "--all-zones", "--devices", str(FLEET.devices),
                           "--tenants", str(FLEET.tenants), "--seed", str(FLEET.seed),
                           "--count", str(RECORDS), "--rate", "400", "--no-commands")
    assert done.returncode == 0, done.stderr
    sent = {line.split(":")[0]: int(line.split("sent ")[1].split()[0])
            for line in done.stdout.splitlines() if " sent " in line}
    assert sent == {"eu": RECORDS // 2, "us": RECORDS // 2}

    # Every reading reaches its own zone's lake (and last month's object is there).
    lakes: dict[str, dict[str, int]] = {}
    with anyio.fail_after(90):
        for zone in ("eu", "us"):
            while True:
                events, lakes[zone] = await _events_in_lake(zones, zone, month)
                old = any(f"/date={last_month:%Y-%m-%d}/" in k for k in lakes[zone])
                if events >= sent[zone] and (old or zone == "us"):
                    break
                await anyio.sleep(0.5)
            assert events == sent[zone]
            assert all(f"/zone={zone}/" in key for key in lakes[zone]), lakes[zone]

    # The report: each zone computed in its Region, only aggregates combined.
    done = zones.fleetline("report", "monthly", "--month", month, "--all-zones", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sum(d["events"] for d in report["days"]) == RECORDS  # both zones' readings
    by_zone = {z["zone"]: z for z in report["zones"]}
    assert {z: by_zone[z]["region"] for z in by_zone} == {"eu": "eu-west-1", "us": "us-east-1"}
    # Bytes scanned per zone: exactly the zone's objects of this month (pruned: last month's
    # object in the eu lake is not read).
    for zone, stored in lakes.items():
        this_month = sum(v for k, v in stored.items() if f"/date={month}-" in k)
        assert by_zone[zone]["bytes_scanned"] == this_month, zone
    assert sum(lakes["eu"].values()) > by_zone["eu"]["bytes_scanned"]


ASTRAY = "dev-us-astray"  # a us device whose record reaches the eu stack


async def test_a_record_sent_to_the_wrong_zone_is_refused_with_a_reason(zones: Zones) -> None:
    outputs = await zones.outputs("eu", "TelemetryStream")
    async with zones.clients("eu-west-1") as aws:
        kinesis = await aws.client("kinesis")
        await kinesis.put_record(
            StreamName=outputs.get("TelemetryStream"), PartitionKey=ASTRAY,
            Data=json.dumps({"kind": "telemetry", "device_id": ASTRAY, "tenant_id": "t-001",
                             "zone": "us", "seq": 1, "ts": time.time(), "firmware": "1.0.0",
                             "readings": {"temperature": 20.0}}).encode())
        sqs = await aws.client("sqs")
        reasons: list[str] = []
        with anyio.fail_after(30):
            while not reasons:
                # read, not consumed: the residency scan finds the record here with its reason
                got = (await sqs.receive_message(
                    QueueUrl=outputs.get("TelemetryFailureQueue"), MaxNumberOfMessages=10,
                    VisibilityTimeout=1, WaitTimeSeconds=1)).get("Messages", [])
                reasons = [json.loads(m["Body"])["reason"] for m in got
                           if ASTRAY in m["Body"]]
    assert reasons == [f"residency: device {ASTRAY} belongs to zone 'us'; "
                       "this deployment serves 'eu'"]


def _event(device: str, seq: int) -> dict[str, Any]:
    view = DeviceView(device_id=device, tenant_id="t-drill", zone="eu", status=Status.ONLINE,
                      seq=seq, last_seen=float(seq), firmware="1.0.0",
                      readings={"temperature": float(seq)})
    envelope = Envelope.new(DeviceStateChanged(device=view, changed={"step": seq}),
                            aggregate_id=device, sequence=seq, tenant_id="t-drill")
    return dict(json.loads(envelope.to_json()))


async def _archive_count(aws: AwsClients, archive: str) -> int:
    events = await aws.client("events")
    return int((await events.describe_archive(ArchiveName=archive))["EventCount"])


async def _read_model(aws: AwsClients, table: str) -> dict[str, dict[str, Any]]:
    dynamodb = await aws.client("dynamodb")
    items = (await dynamodb.query(
        TableName=table, KeyConditionExpression="tenant_id = :t",
        ExpressionAttributeValues={":t": {"S": "t-drill"}}))["Items"]
    return {i["device_id"]["S"]: {"seq": int(i["event_seq"]["N"]), "id": i["event_id"]["S"]}
            for i in items}


DRILL_DEVICES = [f"drill-{n:03d}" for n in range(1, 21)]
STEPS, SWITCH = 6, 4  # rounds 1-3 through the primary; round 4 in flight at the failover


async def test_failover_drill_loses_nothing_and_stays_in_the_zone(zones: Zones) -> None:
    primary, secondary = await zones.outputs("eu"), await zones.outputs("eu:secondary")
    bus = primary.get("DeviceEventsBusName")
    assert secondary.get("DeviceEventsBusName") == bus  # same stack name: the same bus name
    archive = bus  # the archive is named after its bus
    sent: dict[int, list[dict[str, Any]]] = {
        step: [_event(d, step) for d in DRILL_DEVICES] for step in range(1, STEPS + 1)}
    regions = ("eu-west-1", "eu-west-3", "us-east-1")
    before = {}
    for region in regions:
        async with zones.clients(region) as aws:
            before[region] = await _archive_count(aws, archive)

    async with zones.clients("eu-west-1") as eu1, zones.clients("eu-west-3") as eu3:
        through_primary = EventPublisher(eu1, PublisherConfig(bus_name=bus))
        through_secondary = EventPublisher(eu3, PublisherConfig(bus_name=bus))
        for step in range(1, SWITCH):
            assert (await through_primary.publish(sent[step])).ok
        # The failover: round SWITCH reached the primary but its producer saw no answer, and
        # retried after the endpoint had moved (at least once: both Regions have it).
        assert (await through_primary.publish(sent[SWITCH])).ok
        for step in range(SWITCH, STEPS + 1):
            assert (await through_secondary.publish(sent[step])).ok

        last = {d: e["id"] for d, e in zip(DRILL_DEVICES, sent[STEPS], strict=True)}
        at_switch = {d: e["id"] for d, e in zip(DRILL_DEVICES, sent[SWITCH], strict=True)}
        with anyio.fail_after(60):
            while True:
                eu1_model = await _read_model(eu1, primary.get("DeviceReadModelTable"))
                eu3_model = await _read_model(eu3, secondary.get("DeviceReadModelTable"))
                if ({d: v["id"] for d, v in eu3_model.items()} == last
                        and {d: v["id"] for d, v in eu1_model.items()} == at_switch):
                    break
                await anyio.sleep(0.5)
        # Nothing lost: every event is on a bus of the zone (the archives count them).
        after_primary = await _archive_count(eu1, archive)
        after_secondary = await _archive_count(eu3, archive)
    n = len(DRILL_DEVICES)
    assert after_primary - before["eu-west-1"] == n * SWITCH
    assert after_secondary - before["eu-west-3"] == n * (STEPS - SWITCH + 1)
    # Each read model applied the newest event of each device once: the Region that got the
    # retried round holds it at its sequence, the standby ends at the last one.
    assert {v["seq"] for v in eu3_model.values()} == {STEPS}
    assert {v["seq"] for v in eu1_model.values()} == {SWITCH}
    # Nothing outside the zone.
    async with zones.clients("us-east-1") as aws:
        assert await _archive_count(aws, archive) == before["us-east-1"]


def test_status_and_the_commands_pick_a_zones_stack(zones: Zones) -> None:
    # After the others: right after READY fifty processes start and status is slow.
    us = zones.fleetline("status", "--json", "--zone", "us")
    assert us.returncode == 0, us.stderr
    processes = [p["name"] for p in json.loads(us.stdout)["processes"]]
    assert "us-TelemetryWorkerService" in processes
    assert not [p for p in processes if p.startswith("eu-")]
    counts = zones.fleetline("devices", "--zone", "eu:secondary", "counts", "--tenant", "t-drill")
    assert counts.returncode == 0, counts.stderr
    assert json.loads(counts.stdout)["total"] == len(DRILL_DEVICES)
    missing = zones.fleetline("devices", "--zone", "us:secondary", "counts")
    assert missing.returncode == 2
    assert "zone us (secondary) is not up here" in missing.stderr


async def test_residency_no_region_holds_data_of_another_zones_devices(zones: Zones) -> None:
    everyone = _devices_of("eu") | _devices_of("us") | frozenset(DRILL_DEVICES) | {ASTRAY}
    scans: dict[str, Scanned] = {}
    for zone in ZONES.values():
        for region in zone.regions:
            async with zones.clients(region) as aws:
                scans[region] = await scan_region(aws, everyone)
    own = {"eu": _devices_of("eu") | frozenset(DRILL_DEVICES), "us": _devices_of("us") | {ASTRAY}}
    eu = await zones.outputs("eu", "TelemetryStream")
    # The refused record rests, with its reason, where it arrived and where refusals go:
    # the eu stream and failure queue; nowhere else (no table, lake, bus or archive).
    refused = {("stream", eu.get("TelemetryStream")),
               ("queue", eu.get("TelemetryFailureQueue").rsplit("/", 1)[-1])}
    astray = {(f.kind, f.name) for f in scans["eu-west-1"].findings if f.needle == ASTRAY}
    assert astray == refused
    for zone in ZONES.values():
        for region in zone.regions:
            found = scans[region].findings
            foreign = [f for f in found if f.needle not in own[zone.name]
                       and not (f.needle == ASTRAY and (f.kind, f.name) in refused)]
            assert foreign == [], (region, foreign[:10])
    # The scan sees data where it is: each primary's devices in its tables, lake, streams
    # and archive; the drill's in the standby's.
    for region, devices in (("eu-west-1", _devices_of("eu")), ("us-east-1", _devices_of("us")),
                            ("eu-west-3", frozenset(DRILL_DEVICES))):
        kinds = {f.kind for f in scans[region].findings}
        seen = {f.needle for f in scans[region].findings}
        assert {"table", "table-stream", "archive"} <= kinds, (region, kinds)
        assert seen >= devices, (region, sorted(devices - seen)[:5])
    for region in ("eu-west-1", "us-east-1"):
        assert {"bucket", "stream"} <= {f.kind for f in scans[region].findings}, region
        resources = scans[region].resources
        assert resources["table"] >= 5, (region, resources)
        assert resources["queue"] >= 5, (region, resources)
        assert resources["stream"] >= 2, (region, resources)
        assert resources["table-stream"] >= 5, (region, resources)
        assert resources["archive"] == 3, (region, resources)
    assert scans["us-east-2"].resources == dict.fromkeys(scans["us-east-2"].resources, 0)
