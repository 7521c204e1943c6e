"""The telemetry worker's default mode: the device table written on state changes, last-seen
packed once per interval, every applied reading to the lake. In-memory store and lake."""

from __future__ import annotations

import json

import orjson
import pytest

from services.devices._store import LAST_SEEN_PER_ITEM, MemoryDeviceStore, StoredDevice
from services.devices.domain import DeviceState, Telemetry
from services.devices.events import Status
from services.devices.lake import LakeError, MemoryLake, pack_records, reading_rows
from services.devices.telemetry import TelemetryConfig, TelemetryProcessor, stored_disconnects
from shared.consumers import Message, Outcome, SourceKind

_counter = iter(range(10**9))


def tel(device: str, seq: int, *, temp: float = 20.0, zone: str = "eu", tenant: str = "t-1",
        firmware: str = "1.0") -> Telemetry:
    return Telemetry(device_id=device, tenant_id=tenant, zone=zone, seq=seq, ts=86400.0 + seq,
                     readings={"temperature": temp, "battery": 80.0}, firmware=firmware)


def msg(body: str | Telemetry, *, arrival: float = 1000.0) -> Message:
    n = next(_counter)
    text = body.to_json() if isinstance(body, Telemetry) else body
    return Message(id=f"{n:012d}", body=text, source=SourceKind.KINESIS, source_name="s-0",
                   sequence=f"{n:012d}", approximate_arrival=arrival)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(store: MemoryDeviceStore, lake: MemoryLake | None = None,
           clock: Clock | None = None, **kw: float) -> TelemetryProcessor:
    return TelemetryProcessor(store, TelemetryConfig(**kw), lake=lake,  # type: ignore[arg-type]
                              clock=clock or Clock())


def stored_seq(store: MemoryDeviceStore, device: str) -> int:
    return int(json.loads(store.items[device][0]["doc"])["seq"])


async def test_readings_that_change_nothing_do_not_write_the_device() -> None:
    store, lake = MemoryDeviceStore(), MemoryLake()
    proc = worker(store, lake)
    await proc([msg(tel(f"d{d}", 1)) for d in range(50)])  # first contact: connected
    assert proc.statistics().device_writes == 50
    await proc([msg(tel(f"d{d}", s)) for s in range(2, 22) for d in range(50)])
    assert proc.statistics().device_writes == 50  # 1,000 readings, no state change: no write
    assert stored_seq(store, "d0") == 1
    assert proc.device("d0").seq == 21  # type: ignore[union-attr]
    # 1,050 readings, 2 metrics each, all in the lake
    assert len(lake.rows) == 2100
    assert {r["date"] for r in lake.rows} == {"1970-01-02"}
    assert {r["zone"] for r in lake.rows} == {"eu"}


async def test_state_changes_are_written_with_their_events_once() -> None:
    store = MemoryDeviceStore()
    proc = worker(store)
    await proc([msg(tel("d1", 1)), msg(tel("d1", 2)), msg(tel("d1", 3, temp=95.0)),
                msg(tel("d1", 4, temp=95.0)), msg(tel("d1", 5, temp=95.0, firmware="1.1"))])
    assert stored_seq(store, "d1") == 5  # the batch's transitions: the device is written once
    assert proc.statistics().device_writes == 1
    await proc([msg(tel("d1", 6, firmware="1.1", temp=96.0)),
                msg(tel("d1", 7, firmware="1.1", temp=97.0))])  # still breached: no change
    assert proc.statistics().device_writes == 1
    await proc([msg(tel("d1", 8, firmware="1.1", temp=20.0))])  # alarm cleared
    assert proc.statistics().device_writes == 2
    assert stored_seq(store, "d1") == 8
    types = [e["type"] for e in store.envelopes]
    assert types == ["DeviceConnected", "FirmwareVersionReported", "ThresholdBreached",
                     "FirmwareVersionReported", "ThresholdCleared"]


async def test_last_seen_is_written_packed_once_per_interval() -> None:
    store, clock = MemoryDeviceStore(), Clock()
    proc = worker(store, clock=clock, last_seen_interval=300.0)
    await proc([msg(tel(f"d{d}", 1)) for d in range(10)])
    for seq in range(2, 6):
        await proc([msg(tel(f"d{d}", seq), arrival=1000.0 + seq) for d in range(10)])
    clock.now = 1200.0
    await proc._last_seen_if_due()
    assert store.last_seen == []  # not yet: 200 s < 300 s
    clock.now = 1300.0
    await proc._last_seen_if_due()
    assert len(store.last_seen) == 1  # ten devices, one item
    seen = orjson.loads(store.last_seen[0]["seen"]["S"])
    assert seen["d3"] == [86405.0, 1005.0, 5]
    assert store.last_seen[0]["device_id"]["S"].startswith("~last-seen#")
    assert await proc.flush_last_seen() == 0  # nothing new since
    await proc([msg(tel("d3", 6), arrival=1301.0)])
    assert await proc.flush_last_seen() == 1
    assert await store.scan_last_seen() == {f"d{d}": 1005.0 for d in range(10)} | {"d3": 1301.0}


async def test_a_device_written_for_a_change_leaves_the_last_seen_set() -> None:
    store = MemoryDeviceStore()
    proc = worker(store)
    await proc([msg(tel("d1", 1))])
    await proc([msg(tel("d1", 2))])  # last-seen pending
    await proc([msg(tel("d1", 3, temp=99.0))])  # breach: the item carries seq 3
    assert await proc.flush_last_seen() == 0


def test_last_seen_items_split_by_size() -> None:
    from services.devices._store import LastSeen, last_seen_items
    entries = [LastSeen(f"d{i}", 1.0, 2.0, i) for i in range(LAST_SEEN_PER_ITEM + 1)]
    items = last_seen_items(entries, writer="w", now=5.0, expires_at=9.0)
    assert [len(orjson.loads(i["seen"]["S"])) for i in items] == [LAST_SEEN_PER_ITEM, 1]
    assert all(len(i["seen"]["S"]) < 350_000 for i in items)


async def test_replay_after_a_crash_emits_each_transition_once() -> None:
    store = MemoryDeviceStore()
    records = [tel("d1", s, temp=95.0 if s in (4, 5) else 20.0) for s in range(1, 9)]
    first = worker(store)
    await first([msg(r) for r in records[:5]])
    # the first worker dies before its checkpoint covers seq 3..5; the second replays 3..8
    second = worker(store)
    await second([msg(r) for r in records[2:]])
    types = [e["type"] for e in store.envelopes]
    assert types == ["DeviceConnected", "FirmwareVersionReported", "ThresholdBreached",
                     "ThresholdCleared"]
    assert second.device("d1").seq == 8  # type: ignore[union-attr]


async def test_refused_malformed_and_duplicate_records_never_reach_the_lake() -> None:
    lake = MemoryLake()
    proc = worker(MemoryDeviceStore(), lake)
    result = await proc([msg(tel("d1", 1)), msg(tel("d1", 1)), msg("{nope"),
                         msg(tel("u1", 1, zone="us")), msg(tel("d1", 2, tenant="t-2"))])
    assert sorted(result.outcomes.values()) == sorted(
        [Outcome.SUCCEEDED, Outcome.DUPLICATE, Outcome.DEAD_LETTER, Outcome.DEAD_LETTER,
         Outcome.DEAD_LETTER])
    assert {(r["device_id"], r["seq"]) for r in lake.rows} == {("d1", 1)}


async def test_a_lake_failure_retries_the_batch_and_loses_no_reading() -> None:
    store, lake = MemoryDeviceStore(), MemoryLake()
    proc = worker(store, lake)
    await proc([msg(tel("d1", 1))])
    batch = [msg(tel("d1", 2)), msg(tel("d1", 3, temp=90.0))]
    lake.fail = 1
    with pytest.raises(LakeError):
        await proc(batch)
    assert proc.device("d1") is None  # forgotten: the retried batch reloads it
    assert stored_seq(store, "d1") == 1  # the breach was not written before the lake took it
    await proc(batch)
    assert sorted({(r["device_id"], r["seq"]) for r in lake.rows}) == [
        ("d1", 1), ("d1", 2), ("d1", 3)]
    assert [e["type"] for e in store.envelopes].count("ThresholdBreached") == 1


def test_stored_sweep_takes_the_newer_last_seen() -> None:
    state = DeviceState(device_id="d1", tenant_id="t", zone="eu", status=Status.ONLINE,
                        last_arrival=1000.0)
    scanned = [StoredDevice(state, 3)]
    due = stored_disconnects(scanned, now=2000.0, silence_after=365.0, held={})
    assert [w.state.device_id for w in due] == ["d1"]
    assert stored_disconnects(scanned, now=2000.0, silence_after=365.0, held={},
                              seen={"d1": 1900.0}) == []
    assert scanned[0].state.last_arrival == 1000.0


def test_pack_records_keeps_rows_whole_and_in_order() -> None:
    rows = [b'{"n":%d}\n' % i for i in range(1203)]
    records = pack_records(rows, max_rows=500)
    assert [r.count(b"\n") for r in records] == [500, 500, 203]
    assert b"".join(records) == b"".join(rows)
    by_size = pack_records(rows[:10], max_bytes=30)
    assert all(len(r) <= 30 for r in by_size)
    assert b"".join(by_size) == b"".join(rows[:10])
    with pytest.raises(ValueError, match="max_bytes"):
        pack_records([b"x" * 40], max_bytes=30)


def test_reading_rows_one_per_metric_with_partition_keys() -> None:
    rows = [orjson.loads(r) for r in reading_rows(tel("d1", 7), arrival=5.0)]
    assert [(r["metric"], r["value"]) for r in rows] == [("temperature", 20.0),
                                                        ("battery", 80.0)]
    assert rows[0] | {"metric": "", "value": 0} == {
        "tenant_id": "t-1", "device_id": "d1", "seq": 7, "ts": 86407.0, "arrival": 5.0,
        "firmware": "1.0", "zone": "eu", "date": "1970-01-02", "metric": "", "value": 0}


def test_last_seen_interval_setting() -> None:
    assert TelemetryConfig.from_environ({}).last_seen_interval == 300.0
    assert TelemetryConfig.from_environ(
        {"FLEETLINE_LAST_SEEN_INTERVAL": "0"}).last_seen_interval == 0.0
    with pytest.raises(ValueError, match="last_seen_interval"):
        TelemetryConfig(last_seen_interval=-1)
