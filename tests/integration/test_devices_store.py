"""The device store against the emulator: one request per batch of devices, version
conditions, and a cancelled transaction naming exactly the conflicting devices."""

from __future__ import annotations

import pytest

from services.devices._store import DeviceWrite, DynamoDeviceStore
from services.devices.domain import DEFAULT_THRESHOLDS, DeviceState, Telemetry, apply_telemetry
from shared.aws import AwsClients
from tests.integration._devices_support import create_device_resources, outbox_events

pytestmark = pytest.mark.emulator


def device(device_id: str, seq: int = 1) -> tuple[DeviceState, list]:  # type: ignore[type-arg]
    record = Telemetry(device_id=device_id, tenant_id="t", zone="eu", seq=seq, ts=1.0,
                       readings={"temperature": 20.0}, firmware="1.0")
    state = DeviceState.new(record)
    applied = apply_telemetry(state, record, thresholds=DEFAULT_THRESHOLDS, arrival=1.0)
    return state, list(applied.events)


async def test_commit_batch_and_conflicts(aws: AwsClients) -> None:
    res = await create_device_resources(aws, prefix="store", shards=1)
    store = DynamoDeviceStore(aws, res.devices_table)
    (a, a_events), (b, b_events) = device("a"), device("b")
    aws.counter.reset()
    result = await store.commit([DeviceWrite(a, 0, a_events), DeviceWrite(b, 0, b_events)])
    assert set(result.committed) == {"a", "b"}
    assert aws.counter.snapshot() == {"dynamodb.TransactWriteItems": 1}
    loaded = await store.load(["a", "b", "missing"])
    assert set(loaded) == {"a", "b"}
    assert loaded["a"].version == 1
    assert loaded["a"].state.snapshot() == a.snapshot()

    # b is written again at version 1 by "someone else"; our stale write of b conflicts and
    # a's write, cancelled along with it, is reported transient (retry as is).
    assert (await store.commit([DeviceWrite(b, 1)])).committed
    stale = await store.commit([DeviceWrite(a, 1), DeviceWrite(b, 1)])
    assert stale.conflicts == {"b"}
    assert stale.transient == {"a"}
    assert not stale.committed
    single = await store.commit([DeviceWrite(b, 1)])
    assert single.conflicts == {"b"}

    events = await outbox_events(aws, res.devices_stream_arn)
    for name in ("a", "b"):  # the outbox: each device's events once, in sequence
        assert [(e["type"], e["sequence"]) for e in events if e["aggregate_id"] == name] == [
            ("DeviceConnected", 1), ("FirmwareVersionReported", 2)]
