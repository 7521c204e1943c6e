"""The edge Lambda's normalisation: one shape from the variants devices send, or a reason."""

from __future__ import annotations

import pytest

from services.devices.events import DeviceAlarmRaised, DeviceStateReported
from services.devices.ingest import Normalised, Rejection, normalise


def test_alarm_variants_normalise() -> None:
    out = normalise({"deviceId": "d1", "tenant_id": "t1", "channel": "alarms", "sev": "CRIT",
                     "code": "overheat", "received_at": 1_700_000_000_123}, zone="eu")
    assert isinstance(out, Normalised)
    assert isinstance(out.event, DeviceAlarmRaised)
    assert out.event.severity == "critical"
    assert out.event.ts == pytest.approx(1_700_000_000.123)


def test_state_shadow_style_and_flat() -> None:
    shadow = normalise({"device_id": "d1", "tenant_id": "t1", "channel": "state",
                        "ts": 1.0, "state": {"reported": {"mode": "eco"}}}, zone="eu")
    flat = normalise({"device_id": "d1", "tenant_id": "t1", "channel": "state", "ts": 1.0,
                      "reported": {"mode": "eco"}}, zone="eu")
    assert isinstance(shadow, Normalised)
    assert isinstance(shadow.event, DeviceStateReported)
    assert shadow == flat


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"tenant_id": "t", "channel": "alarms", "ts": 1}, "device_id"),
        ({"device_id": "d", "tenant_id": "t", "channel": "alarms", "ts": 1, "code": "x",
          "severity": "meh"}, "severity"),
        ({"device_id": "d", "tenant_id": "t", "channel": "alarms", "ts": "noon"}, "ts"),
        ({"device_id": "d", "tenant_id": "t", "channel": "state", "ts": 1}, "reported"),
        ({"device_id": "d", "tenant_id": "t", "channel": "gossip", "ts": 1}, "channel"),
        ({"device_id": "d", "tenant_id": "t", "channel": "state", "ts": 1, "zone": "us",
          "reported": {}}, "zone"),
    ],
)
def test_rejections_name_the_field(payload: dict[str, object], field: str) -> None:
    out = normalise(payload, zone="eu")
    assert isinstance(out, Rejection)
    assert out.field == field
    assert str(out).startswith(field)


def test_not_an_object() -> None:
    assert isinstance(normalise(["x"], zone="eu"), Rejection)
