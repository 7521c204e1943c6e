"""The simulator's fleet plan: pure, seeded, with the faults it promises."""

from __future__ import annotations

import collections

import pytest

from services.devices.domain import InvalidTelemetry, Telemetry, parse_record
from services.devices.simulator import (
    FleetConfig,
    FleetPlan,
    OutRecord,
    chunks_for_put_records,
)


def test_round_robin_seq_per_device_and_zone_split() -> None:
    plan = FleetPlan(FleetConfig(devices=100, tenants=4, eu_share=0.5, seed=3), start=0)
    records = plan.next_batch(len(plan.local) * 3, now=1.0)
    assert len(records) == len(plan.local) * 3
    assert 30 < len(plan.local) < 70
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for rec in records:
        parsed = parse_record(rec.data)
        assert isinstance(parsed, Telemetry)
        assert parsed.zone == "eu"
        assert parsed.device_id == rec.partition_key
        seqs[parsed.device_id].append(parsed.seq)
    assert all(s == [1, 2, 3] for s in seqs.values())
    assert {parse_record(r.data).tenant_id for r in records} == {"t-001", "t-002", "t-003",
                                                                 "t-004"}


def test_faults_are_injected_as_configured() -> None:
    cfg = FleetConfig(devices=50, eu_share=1.0, duplicates=0.1, out_of_order=0.1, malformed=0.05,
                      misrouted=0.05, seed=9)
    plan = FleetPlan(cfg, start=0)
    plan.foreign = [0]  # pretend one device lives in the other zone
    plan.zones[0] = "us"
    records = plan.next_batch(2_000, now=1.0) + plan.flush_held()
    faults = collections.Counter(r.fault for r in records)
    assert {"duplicate", "out-of-order", "malformed", "misrouted"} <= set(faults)
    for rec in records:
        if rec.fault == "malformed":
            with pytest.raises(InvalidTelemetry):
                parse_record(rec.data)
        if rec.fault == "misrouted":
            assert parse_record(rec.data).zone == "us"
    # an out-of-order record comes after a newer record of the same device
    last: dict[str, int] = {}
    late = 0
    for rec in records:
        if rec.fault in ("malformed", "misrouted"):
            continue
        seq = parse_record(rec.data).seq  # type: ignore[union-attr]
        if seq < last.get(rec.partition_key, 0):
            late += 1
        last[rec.partition_key] = max(seq, last.get(rec.partition_key, 0))
    assert late >= faults["out-of-order"] - 50  # held ones flushed at the end count too


def test_silent_devices_stop_after_their_time() -> None:
    plan = FleetPlan(FleetConfig(devices=10, eu_share=1.0, silent=0.3, silent_after=5.0),
                     start=0)
    early = {r.partition_key for r in plan.next_batch(10, now=1.0)}
    late = {r.partition_key for r in plan.next_batch(10, now=6.0)}
    assert len(early) == 10
    assert len(late) == 7
    assert not late & {plan.ids[i] for i in plan.silent}


def test_put_records_chunks_respect_count_and_size() -> None:
    small = [OutRecord("k", b"x" * 10) for _ in range(1_201)]
    assert [len(c) for c in chunks_for_put_records(small)] == [500, 500, 201]
    big = [OutRecord("k", b"x" * 1_000_000) for _ in range(7)]
    assert [len(c) for c in chunks_for_put_records(big)] == [4, 3]


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        FleetConfig(duplicates=1.5)
    with pytest.raises(ValueError, match="zone"):
        FleetConfig(zone="mars")
