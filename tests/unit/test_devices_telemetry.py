"""The telemetry worker's batch handling over the in-memory store: coalescing, order,
duplicates, restart, malformed records, residency and silence. No I/O."""

from __future__ import annotations

import json
import random

import anyio
import anyio.lowlevel
import pytest

from services.devices._store import MemoryDeviceStore
from services.devices.domain import Telemetry
from services.devices.telemetry import TelemetryConfig, TelemetryProcessor
from shared.consumers import Message, Outcome, SourceKind


def tel(device: str, seq: int, *, temp: float = 20.0, zone: str = "eu",
        tenant: str = "t-1") -> Telemetry:
    return Telemetry(device_id=device, tenant_id=tenant, zone=zone, seq=seq, ts=1000.0 + seq,
                     readings={"temperature": temp}, firmware="1.0")


_counter = iter(range(10**9))


def msg(body: str | Telemetry, *, shard: str = "shard-0", arrival: float = 1000.0) -> Message:
    n = next(_counter)
    text = body.to_json() if isinstance(body, Telemetry) else body
    return Message(id=f"{n:012d}", body=text, source=SourceKind.KINESIS, source_name=shard,
                   sequence=f"{n:012d}", approximate_arrival=arrival)


def processor(store: MemoryDeviceStore, **kw: object) -> TelemetryProcessor:
    return TelemetryProcessor(store, TelemetryConfig(**kw), clock=lambda: 1000.0)  # type: ignore[arg-type]


async def test_writes_grow_with_devices_changed_not_records() -> None:
    store = MemoryDeviceStore()
    proc = processor(store)
    batch = [msg(tel(f"d{d}", s)) for s in range(1, 21) for d in range(5)]
    result = await proc(batch)
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert proc.stats.device_writes == 5  # 100 records, 5 devices, one write each
    assert store.commits == 1  # one transaction
    assert {json.loads(store.items[f"d{d}"][0]["doc"])["seq"] for d in range(5)} == {20}


async def test_duplicates_and_out_of_order_do_not_change_final_state() -> None:
    rnd = random.Random(4)
    records = [tel("d1", s, temp=rnd.choice([20.0, 90.0])) for s in range(1, 40)]
    clean = processor(MemoryDeviceStore())
    await clean([msg(r) for r in records])
    mixed_records = records + rnd.sample(records, 15)
    rnd.shuffle(mixed_records)
    store = MemoryDeviceStore()
    mixed = processor(store)
    for start in range(0, len(mixed_records), 7):
        await mixed([msg(r) for r in mixed_records[start:start + 7]])
    assert mixed.device("d1").snapshot() == clean.device("d1").snapshot()  # type: ignore[union-attr]
    assert mixed.stats.duplicates + mixed.stats.stale > 0


async def test_concurrent_shards_keep_per_device_order() -> None:
    store = MemoryDeviceStore()
    proc = processor(store)
    shards = {f"shard-{k}": [f"dev-{k}-{i}" for i in range(10)] for k in range(4)}

    async def play(shard: str, devices: list[str]) -> None:
        for seq in range(1, 31):
            await proc([msg(tel(d, seq), shard=shard) for d in devices])
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for shard, devices in shards.items():
            tg.start_soon(play, shard, devices)
    for devices in shards.values():
        for d in devices:
            attrs, version, _ = store.items[d]
            assert json.loads(attrs["doc"])["seq"] == 30
            assert json.loads(attrs["doc"])["received"] == 30
            assert version == 30
    assert proc.stats.duplicates == proc.stats.stale == 0


async def test_restart_replay_loses_nothing_and_counts_nothing_twice() -> None:
    store = MemoryDeviceStore()
    records = [tel(f"d{d}", s) for s in range(1, 11) for d in range(3)]
    first = processor(store)
    await first([msg(r) for r in records[:12]])  # flushed (checkpoint would move here)
    await first([msg(r) for r in records[12:21]])  # flushed, but "killed" before checkpoint
    # A new process replays from the last checkpoint: records 12.. again, then the rest.
    second = processor(store)
    result = await second([msg(r) for r in records[12:]])
    dup = [o for o in result.outcomes.values() if o is Outcome.DUPLICATE]
    assert len(dup) == 9
    for d in range(3):
        doc = json.loads(store.items[f"d{d}"][0]["doc"])
        assert (doc["seq"], doc["received"]) == (10, 10)
    connected = [e for e in store.envelopes if e["type"] == "DeviceConnected"]
    assert len(connected) == 3  # one per device, not one per process


async def test_malformed_and_foreign_zone_records_dead_letter_with_reason() -> None:
    store = MemoryDeviceStore()
    proc = processor(store, zone="eu")
    bad = msg("{not json")
    missing = msg(json.dumps({"device_id": "d1", "tenant_id": "t", "zone": "eu", "ts": 1,
                              "readings": {}}))
    foreign = msg(tel("d9", 1, zone="us"))
    good = msg(tel("d1", 1))
    result = await proc([bad, missing, foreign, good])
    assert result.outcomes[bad.id] is Outcome.DEAD_LETTER
    assert "not JSON" in result.reasons[bad.id]
    assert "seq" in result.reasons[missing.id]
    assert result.outcomes[foreign.id] is Outcome.DEAD_LETTER
    assert "residency" in result.reasons[foreign.id]
    assert result.outcomes[good.id] is Outcome.SUCCEEDED
    assert "d9" not in store.items  # never written


async def test_silent_device_reported_disconnected_once() -> None:
    store = MemoryDeviceStore()
    proc = processor(store, silence_after=10.0)
    await proc([msg(tel("quiet", 1), arrival=1000.0), msg(tel("busy", 1), arrival=1000.0)])
    await proc([msg(tel("busy", 2), arrival=1008.0)])
    assert await proc.sweep(now=1005.0) == 0
    assert await proc.sweep(now=1012.0) == 1
    assert await proc.sweep(now=1013.0) == 0
    assert await proc.sweep(now=1030.0) == 1  # busy goes silent later
    assert await proc.sweep(now=1100.0) == 0
    disconnected = [e["aggregate_id"] for e in store.envelopes
                    if e["type"] == "DeviceDisconnected"]
    assert disconnected == ["quiet", "busy"]
    assert json.loads(store.items["quiet"][0]["doc"])["status"] == "offline"


async def test_conflicting_write_evicts_and_asks_for_retry() -> None:
    store = MemoryDeviceStore()
    proc = processor(store)
    await proc([msg(tel("d1", 1))])
    attrs, version, seq = store.items["d1"]
    store.items["d1"] = (attrs, version + 5, seq)  # another worker wrote it
    with pytest.raises(Exception, match="not written"):
        await proc([msg(tel("d1", 2))])
    assert proc.device("d1") is None  # reloaded next time
    store.items["d1"] = (attrs, version, seq)
    result = await proc([msg(tel("d1", 2))])
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
