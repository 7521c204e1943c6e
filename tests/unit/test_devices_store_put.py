"""The device item written by hand (`device_put`) is the request the outbox unit of work's
generic `build_write` makes for the same device, event and version."""

from __future__ import annotations

import json

import anyio
import pytest

from services.devices._store import DynamoDeviceStore, device_put, event_draft, state_attributes
from services.devices.domain import DEFAULT_THRESHOLDS, DeviceState, Telemetry, apply_telemetry
from shared.outbox import Aggregate, ItemRef, OutboxConfig, build_write, stage


def applied_device(seq: int) -> tuple[DeviceState, list]:  # type: ignore[type-arg]
    state: DeviceState | None = None
    events: list = []  # type: ignore[type-arg]
    for s in range(1, seq + 1):
        record = Telemetry(device_id="dev-1", tenant_id="t-1", zone="eu", seq=s, ts=float(s),
                           readings={"temperature": 20.0 + s * 40}, firmware="1.0")
        state = state or DeviceState.new(record)
        events = list(apply_telemetry(state, record, thresholds=DEFAULT_THRESHOLDS,
                                      arrival=float(s)).events)
    assert state is not None
    return state, events


@pytest.mark.parametrize(("seq", "version"), [(1, 0), (2, 3), (3, 7)])
def test_device_put_equals_build_write(seq: int, version: int) -> None:
    config = OutboxConfig()
    state, events = applied_device(seq)
    aggregate = Aggregate(ref=ItemRef(table="devices", key={"device_id": "dev-1"},
                                      aggregate_id="dev-1"),
                          state={}, version=version,
                          last_sequence=state.event_seq - len(events))
    staged = stage(aggregate, state_attributes(state), events=[event_draft(e) for e in events],
                   trace={})
    expected = build_write(staged, config, now=0.0)
    texts = [e.to_json() for e in staged.envelopes]
    assert len(expected) == 1
    assert device_put("devices", state, version, texts, config) == expected[0]
    if seq == 1:
        assert texts, "the first record's events are in the outbox attribute"


def test_store_refuses_more_than_a_transaction() -> None:
    store = DynamoDeviceStore(None, "devices")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 100"):
        anyio.run(store.commit, [object()] * 101)  # type: ignore[list-item]


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_state_attributes_are_the_doc_without_bookkeeping(seq: int) -> None:
    state, _ = applied_device(seq)
    state.desired = {"firmware": "2.0"}
    state.delta = {"firmware": "2.0"}
    state.reported = {"mode": "eco"}
    doc = state.to_doc()
    del doc["version"], doc["event_seq"]
    attributes = state_attributes(state)
    assert attributes["doc"] == json.dumps(doc, separators=(",", ":"))
    assert (attributes["tenant_id"], attributes["status"]) == ("t-1", "online")
