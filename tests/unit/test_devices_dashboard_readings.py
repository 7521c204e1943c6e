"""Readings on the dashboard (no I/O): the view keeps the latest reading and a bounded
sparkline per device, a viewer is sent only the devices it watches, at most once a second
each, and never another tenant's; paging and search over the fleet view."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from services.devices._dashboard_readings import (
    MAX_WATCHED,
    SERIES_SECONDS,
    SPARK_POINTS,
    ReadingsView,
    Viewer,
)
from services.devices.dashboard import FleetView, Hub
from shared.consumers import Message, SourceKind


def record(device: str, tenant: str, seq: int, **readings: float) -> str:
    return json.dumps({"kind": "telemetry", "device_id": device, "tenant_id": tenant,
                       "zone": "eu", "seq": seq, "ts": 1000.0 + seq,
                       "readings": readings or {"temperature": float(seq)}})


def messages(bodies: Sequence[str]) -> list[Message]:
    return [Message(id=str(i), body=b, source=SourceKind.KINESIS, source_name="telemetry")
            for i, b in enumerate(bodies)]


def frames(receive: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while True:
        try:
            frame = receive.receive_nowait()
        except anyio.WouldBlock:
            return out
        kind, data = frame.split("\n")[:2]
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))


def test_the_view_keeps_the_latest_reading_and_a_bounded_sparkline() -> None:
    view = ReadingsView()
    for seq in range(1, SPARK_POINTS + 11):
        assert view.apply(record("d1", "t-a", seq), arrival=2000.0 + seq) is not None
    assert view.apply(record("d1", "t-a", 5), arrival=3000.0) is None  # late: skipped
    assert view.apply(record("d1", "t-b", 99), arrival=3000.0) is None  # another tenant's id
    assert view.apply(b"not json", arrival=3000.0) is None
    assert view.apply(json.dumps({"kind": "desired", "device_id": "d1", "tenant_id": "t-a",
                                  "readings": {}}), arrival=3000.0) is None
    held = view.get("t-a", "d1")
    assert held is not None
    assert view.get("t-b", "d1") is None
    shown = held.to_json("d1")
    assert shown["seq"] == SPARK_POINTS + 10
    assert shown["readings"] == {"temperature": float(SPARK_POINTS + 10)}
    assert shown["spark"] == [float(s) for s in range(11, SPARK_POINTS + 11)]
    assert (view.applied, view.skipped) == (SPARK_POINTS + 10, 4)
    rate = view.rate("t-a", now=2000.0 + SPARK_POINTS + 11)
    assert len(rate) == SERIES_SECONDS
    assert rate[-(SPARK_POINTS + 10):] == [1] * (SPARK_POINTS + 10)
    assert view.rate("t-b", now=2100.0) == [0] * SERIES_SECONDS


def test_memory_per_device_is_fixed() -> None:
    view = ReadingsView()
    view.apply(record("d1", "t-a", 1), arrival=1.0)
    held = view.devices["d1"]
    before = sys.getsizeof(held) + sys.getsizeof(held.ring) + sys.getsizeof(held.readings)
    for seq in range(2, 500):
        view.apply(record("d1", "t-a", seq), arrival=float(seq))
    after = sys.getsizeof(held) + sys.getsizeof(held.ring) + sys.getsizeof(held.readings)
    assert after <= before + 8  # the readings' bytes may differ by a digit or two


def test_a_viewer_gets_only_what_it_watches_at_most_once_a_second_per_device() -> None:
    viewer = Viewer("t-a")
    assert len(viewer.watch(f"d{i}" for i in range(MAX_WATCHED + 50))) == MAX_WATCHED
    viewer.watch(["d1", "d2"])
    for device in ("d1", "d2"):
        viewer.mark(device)
    assert sorted(viewer.due(100.0)) == ["d1", "d2"]
    viewer.mark("d1")
    assert viewer.due(100.5) == []  # sent half a second ago: waits
    assert viewer.due(101.0) == ["d1"]
    assert viewer.due(103.0) == []  # nothing new


def test_the_hub_pushes_watched_readings_to_their_tenant_only() -> None:
    hub = Hub()
    a_id, _, a_receive = hub.open_viewer("t-a")
    b_id, _, b_receive = hub.open_viewer("t-b")
    hub.watch(a_id, "t-a", ["d1", "d2"])
    hub.watch(b_id, "t-b", ["d1", "x1"])  # d1 is t-a's device: its readings never reach b
    hub.apply_readings("shard-0", messages(
        [record(f"d{i}", "t-a", 1) for i in range(100)] + [record("x1", "t-b", 1)]))
    hub.flush(now=50.0)
    sent_a = frames(a_receive)
    assert [k for k, _ in sent_a] == ["readings"]
    assert sorted(d["device_id"] for d in sent_a[0][1]["devices"]) == ["d1", "d2"]
    sent_b = frames(b_receive)
    assert [d["device_id"] for _, f in sent_b for d in f["devices"]] == ["x1"]
    # 10 readings of d1 within the second: one more push, with the newest
    hub.apply_readings("shard-0", messages([record("d1", "t-a", s) for s in range(2, 12)]))
    hub.flush(now=50.5)
    assert frames(a_receive) == []
    hub.flush(now=51.0)
    (kind, frame), = frames(a_receive)
    assert [(d["device_id"], d["seq"]) for d in frame["devices"]] == [("d1", 11)]
    with pytest.raises(KeyError):  # another tenant cannot watch through a's viewer id
        hub.watch(a_id, "t-b", ["x1"])
    hub.tick(now=52.0)
    (kind, fleet), = frames(a_receive)
    assert kind == "fleet"
    assert fleet["readings_per_second"][-1] == 0  # second 51 had none (arrival: real time)
    assert fleet["online"] == [0]  # one sample: no device events applied


def test_paging_and_search_over_the_fleet_view() -> None:
    fleet = FleetView("t-1")
    for i in range(120):
        fleet.apply({"device_id": f"dev-{i:04d}", "status": "online" if i % 3 else "offline"},
                    sequence=1)
    first, cursor, matched = fleet.page(limit=50)
    assert [d["device_id"] for d in first][:2] == ["dev-0000", "dev-0001"]
    assert (cursor, matched) == ("dev-0049", 120)
    second, _, matched = fleet.page(limit=50, cursor=cursor)
    assert matched == 120
    third, _, _ = fleet.page(limit=50, cursor=cursor)  # a cursor reads the same page again
    assert second[0]["device_id"] == "dev-0050"
    assert second == third
    last, end, _ = fleet.page(limit=50, cursor="dev-0099")
    assert (len(last), end) == (20, None)
    found, _, matched = fleet.page(search="DEV-001")
    assert [d["device_id"] for d in found] == [f"dev-{i:04d}" for i in range(10, 20)]
    assert matched == 10
    offline, cursor, matched = fleet.page(status="offline", limit=5)
    assert matched == 40
    assert fleet.page(status="offline", limit=5, cursor=cursor)[2] == 40
    assert all(d["status"] == "offline" for d in offline)
    fleet.apply({"device_id": "dev-0000a", "status": "online"}, sequence=1)
    assert [d["device_id"] for d in fleet.page(limit=2)[0]] == ["dev-0000", "dev-0000a"]
