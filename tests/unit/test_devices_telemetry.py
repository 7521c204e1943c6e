"""The telemetry worker's batch handling over the in-memory store: coalescing, order,
duplicates, restart, malformed records, residency and silence. No I/O."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from services.devices._store import MemoryDeviceStore, StoredDevice
from services.devices.domain import DEFAULT_THRESHOLDS, DeviceState, Telemetry, apply_telemetry
from services.devices.events import Status
from services.devices.telemetry import TelemetryConfig, TelemetryProcessor, stored_disconnects
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
    """A processor that writes its device on every applied record (`last_seen_interval`
    0): the flush's guarantees (coalescing, order, conflicts, replay) are tested on every
    record here; the default mode, state changes only, in test_devices_telemetry_writes."""
    kw.setdefault("last_seen_interval", 0.0)
    return TelemetryProcessor(store, TelemetryConfig(**kw), clock=lambda: 1000.0)  # type: ignore[arg-type]


async def test_writes_grow_with_devices_changed_not_records() -> None:
    store = MemoryDeviceStore()
    proc = processor(store)
    batch = [msg(tel(f"d{d}", s)) for s in range(1, 21) for d in range(5)]
    result = await proc(batch)
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert proc.statistics().device_writes == 5  # 100 records, 5 devices, one write each
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
    assert mixed.statistics().duplicates + mixed.statistics().stale > 0


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
    assert proc.statistics().duplicates == proc.statistics().stale == 0


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


# -- the stored sweep: devices stored ONLINE that no worker holds --------------------------


def stored(device: str, *, arrival: float, version: int = 3) -> StoredDevice:
    state = DeviceState.new(tel(device, 1))
    apply_telemetry(state, tel(device, 1), thresholds=DEFAULT_THRESHOLDS, arrival=arrival)
    return StoredDevice(state=state, version=version)


def test_stored_disconnects_picks_silent_online_devices_not_held() -> None:
    gone, recent, held = (stored("gone", arrival=1000.0), stored("recent", arrival=1095.0),
                          stored("held", arrival=1000.0))
    offline = stored("offline", arrival=1000.0)
    offline.state.status = Status.OFFLINE
    scanned = [gone, recent, held, offline]
    writes = stored_disconnects(scanned, now=1100.0, silence_after=60.0,
                                held={"held": object()})
    assert [w.state.device_id for w in writes] == ["gone"]
    (write,) = writes
    assert write.version == 3  # conditional on the version scanned
    assert write.state.status is Status.OFFLINE
    assert [type(e).__name__ for e in write.events] == ["DeviceDisconnected"]
    assert write.state.event_seq == gone.state.event_seq + 1
    assert gone.state.status is Status.ONLINE  # the scanned state is not changed
    # exactly at the threshold is not silent yet
    assert stored_disconnects([gone], now=1060.0, silence_after=60.0, held={}) == []


async def restarted_fleet(
    store: MemoryDeviceStore | None = None,
) -> tuple[MemoryDeviceStore, TelemetryProcessor]:
    """`gone` and `held` were last heard at 1000, `recent` at 1090, all written ONLINE by a
    first worker; a second worker (the restart) has since heard only from `held`."""
    store = store or MemoryDeviceStore()
    first = processor(store)
    await first([msg(tel("gone", 1), arrival=1000.0), msg(tel("held", 1), arrival=1000.0),
                 msg(tel("recent", 1), arrival=1090.0)])
    second = processor(store, silence_after=60.0, sweep_interval=5.0)
    await second([msg(tel("held", 1), arrival=1000.0)])  # a replayed record: loads it
    assert second.device("held") is not None
    assert second.device("gone") is None
    return store, second


def disconnected(store: MemoryDeviceStore) -> list[str]:
    return [e["aggregate_id"] for e in store.envelopes if e["type"] == "DeviceDisconnected"]


def status(store: MemoryDeviceStore, device: str) -> str:
    return str(json.loads(store.items[device][0]["doc"])["status"])


async def test_stored_sweep_reports_a_device_no_worker_holds_once() -> None:
    store, proc = await restarted_fleet()
    assert await proc.sweep_stored(now=1100.0) == 1
    assert disconnected(store) == ["gone"]
    assert status(store, "gone") == "offline"
    assert status(store, "recent") == "online"
    assert status(store, "held") == "online"  # left to this worker's own sweep
    assert proc.device("gone") is None  # not kept: it belongs to its shard's owner
    assert await proc.sweep_stored(now=1100.0) == 0  # run again: gone is OFFLINE now
    assert await proc.sweep(now=1100.0) == 1  # held, by the in-memory sweep
    assert disconnected(store) == ["gone", "held"]


async def test_stored_sweep_leaves_devices_within_the_owners_sweep_interval() -> None:
    store, proc = await restarted_fleet()
    # silent 62 s: past silence_after (60) but within silence_after + sweep_interval (65)
    assert await proc.sweep_stored(now=1062.0) == 0
    assert disconnected(store) == []


class ScannedEarlier:
    """The store as a worker saw it when it scanned: pages read before others wrote."""

    def __init__(self, store: MemoryDeviceStore, pages: list[list[StoredDevice]]) -> None:
        self._pages = pages
        self.load = store.load
        self.commit = store.commit

    async def scan_online(self, *, page_size: int | None = None
                          ) -> AsyncIterator[list[StoredDevice]]:
        for page in self._pages:
            yield page


async def scanned_earlier(store: MemoryDeviceStore,
                          pages: list[list[StoredDevice]]) -> TelemetryProcessor:
    """Another restarted worker (holding `held` too) whose scan read `pages`."""
    proc = TelemetryProcessor(ScannedEarlier(store, pages),
                              TelemetryConfig(silence_after=60.0, sweep_interval=5.0,
                                              last_seen_interval=0.0))
    await proc([msg(tel("held", 1), arrival=1000.0)])
    return proc


async def test_two_workers_sweeping_at_once_report_the_device_once() -> None:
    store, proc = await restarted_fleet()
    pages = [page async for page in store.scan_online()]  # worker A reads the table ...
    assert await proc.sweep_stored(now=1100.0) == 1  # ... worker B writes first
    late = await scanned_earlier(store, pages)
    assert await late.sweep_stored(now=1100.0) == 0  # A's write conflicts and is dropped
    assert disconnected(store) == ["gone"]
    assert late.device("gone") is None
    assert late.statistics().evicted == 0


async def test_a_device_written_by_its_owner_after_the_scan_stays_online() -> None:
    store, _ = await restarted_fleet()
    pages = [page async for page in store.scan_online()]  # the stored sweep reads ...
    owner = processor(store)
    await owner([msg(tel("gone", 2), arrival=1099.0)])  # ... the owner hears from gone ...
    sweeper = await scanned_earlier(store, pages)
    assert await sweeper.sweep_stored(now=1100.0) == 0  # ... and its write wins
    assert disconnected(store) == []
    assert status(store, "gone") == "online"


async def test_memory_store_scans_online_devices_in_pages() -> None:
    store, _ = await restarted_fleet()
    await processor(store, silence_after=60.0).sweep_stored(now=1100.0)  # gone, held: OFFLINE
    await processor(store)([msg(tel("more", 1), arrival=1100.0)])
    pages = [page async for page in store.scan_online(page_size=1)]
    assert [[d.state.device_id for d in page] for page in pages] == [["recent"], ["more"]]
    assert pages[0][0].version == store.items["recent"][1]


class CountingScans(MemoryDeviceStore):
    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.scans = 0
        self.rounds_done = anyio.Event()
        self._rounds = rounds

    async def scan_online(self, *, page_size: int | None = None
                          ) -> AsyncIterator[list[StoredDevice]]:
        async for page in super().scan_online(page_size=page_size):
            yield page
        self.scans += 1
        if self.scans >= self._rounds:
            self.rounds_done.set()


async def test_run_stored_sweeper_keeps_sweeping_and_reports_each_device_once() -> None:
    store = CountingScans(rounds=3)
    await restarted_fleet(store)
    proc = TelemetryProcessor(store, TelemetryConfig(
        silence_after=60.0, sweep_interval=5.0, stored_sweep_after=0.0,
        stored_sweep_interval=0.01, last_seen_interval=0.0), clock=lambda: 1100.0)
    async with anyio.create_task_group() as tg:
        await tg.start(proc.run_stored_sweeper)
        with anyio.fail_after(5):
            await store.rounds_done.wait()
        tg.cancel_scope.cancel()
    # held too: this processor does not hold it. Once each over three rounds.
    assert sorted(disconnected(store)) == ["gone", "held"]


def test_stored_sweep_settings() -> None:
    config = TelemetryConfig.from_environ({"FLEETLINE_STORED_SWEEP_INTERVAL": "600"})
    assert config.stored_sweep_interval == 600.0
    assert config.stored_sweep_after is None
    assert TelemetryConfig.from_environ({}).stored_sweep_interval == 3600.0
    with pytest.raises(ValueError, match="stored_sweep_interval"):
        TelemetryConfig(stored_sweep_interval=0)
    with pytest.raises(ValueError, match="stored_sweep_after"):
        TelemetryConfig(stored_sweep_after=-1)
