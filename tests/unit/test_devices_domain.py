"""The device aggregate's decisions, without I/O."""

from __future__ import annotations

import json
import random

import pytest

from services.devices.domain import (
    ApplyOutcome,
    DesiredUpdate,
    DeviceState,
    InvalidTelemetry,
    ResidencyRefused,
    Telemetry,
    ThresholdRule,
    Thresholds,
    apply_desired,
    apply_telemetry,
    check_residency,
    check_silence,
    parse_record,
)
from services.devices.events import (
    DeviceConnected,
    DeviceDisconnected,
    DeviceStateChanged,
    FirmwareVersionReported,
    Severity,
    ShadowDeltaChanged,
    Status,
    ThresholdBreached,
    ThresholdCleared,
)

RULES = Thresholds(
    default=(ThresholdRule(metric="temperature", max=80.0, severity=Severity.CRITICAL),),
    by_tenant={"t-strict": (ThresholdRule(metric="temperature", max=30.0),)},
)


def record(seq: int, *, temp: float = 20.0, firmware: str | None = "1.0.0",
           tenant: str = "t-1", reported: dict[str, object] | None = None) -> Telemetry:
    return Telemetry(device_id="dev-1", tenant_id=tenant, zone="eu", seq=seq, ts=1000.0 + seq,
                     readings={"temperature": temp, "battery": 90.0}, firmware=firmware,
                     reported=reported)


def run(
    records: list[Telemetry], state: DeviceState | None = None
) -> tuple[DeviceState, list[str]]:
    state = state or DeviceState.new(records[0])
    types: list[str] = []
    for r in records:
        applied = apply_telemetry(state, r, thresholds=RULES, arrival=r.ts)
        types.extend(e.type_name for e in applied.events)
    return state, types


def test_first_record_connects_and_reports_firmware() -> None:
    state = DeviceState.new(record(1))
    applied = apply_telemetry(state, record(1), thresholds=RULES, arrival=5.0)
    assert applied.outcome is ApplyOutcome.APPLIED
    assert [type(e) for e in applied.events] == [DeviceConnected, FirmwareVersionReported]
    assert state.status is Status.ONLINE
    assert state.event_seq == 2
    assert applied.events[0].device.firmware == "1.0.0"  # snapshot after the record


def test_steady_telemetry_emits_nothing() -> None:
    _, types = run([record(1), record(2, temp=21), record(3, temp=22)])
    assert types == ["DeviceConnected", "FirmwareVersionReported"]


def test_duplicate_and_stale_are_dropped_and_change_nothing() -> None:
    state, _ = run([record(1), record(3, temp=50)])
    before = state.to_doc()
    assert apply_telemetry(state, record(3, temp=99), thresholds=RULES, arrival=1).outcome \
        is ApplyOutcome.DUPLICATE
    assert apply_telemetry(state, record(2, temp=99), thresholds=RULES, arrival=1).outcome \
        is ApplyOutcome.STALE
    assert state.to_doc() == before


@pytest.mark.parametrize("seed", range(20))
def test_any_order_with_duplicates_ends_in_the_in_order_state(seed: int) -> None:
    rnd = random.Random(seed)
    records = [
        record(i, temp=rnd.choice([20.0, 85.0, 40.0]), firmware=rnd.choice(["1.0", "1.1"]),
               reported={"mode": rnd.choice(["eco", "boost"])})
        for i in range(1, 30)
    ]
    in_order, _ = run(records)
    shuffled = records + rnd.sample(records, 10)
    rnd.shuffle(shuffled)
    # the last record always arrives at some point; where it lands decides nothing
    mixed, _ = run(shuffled, DeviceState.new(records[0]))
    assert mixed.snapshot() == in_order.snapshot()


def test_threshold_breached_once_then_cleared_per_tenant_rules() -> None:
    _, types = run([record(1, temp=50), record(2, temp=85), record(3, temp=90), record(4, temp=70)])
    assert types.count("ThresholdBreached") == 1
    assert types.count("ThresholdCleared") == 1
    strict, types = run([record(1, temp=50, tenant="t-strict")])
    assert "ThresholdBreached" in types
    assert strict.alarms == {"temperature": Severity.WARNING}


def test_breach_event_carries_limit_and_severity() -> None:
    state = DeviceState.new(record(1))
    applied = apply_telemetry(state, record(1, temp=81), thresholds=RULES, arrival=1)
    breach = next(e for e in applied.events if isinstance(e, ThresholdBreached))
    assert (breach.value, breach.limit, breach.bound, breach.severity) == (
        81.0, 80.0, "max", Severity.CRITICAL)
    assert breach.device.alarms == {"temperature": Severity.CRITICAL}
    cleared = apply_telemetry(state, record(2, temp=20), thresholds=RULES, arrival=2)
    assert [type(e) for e in cleared.events] == [ThresholdCleared]
    assert state.alarms == {}


def test_reported_state_change_names_changed_keys() -> None:
    state, _ = run([record(1, reported={"mode": "eco", "fan": 1})])
    applied = apply_telemetry(state, record(2, reported={"mode": "boost"}), thresholds=RULES,
                              arrival=2)
    (event,) = applied.events
    assert isinstance(event, DeviceStateChanged)
    assert event.changed == {"mode": "boost", "fan": None}


def test_shadow_delta_until_device_reports_desired() -> None:
    state, _ = run([record(1, firmware="1.0.0", reported={"mode": "eco"})])
    update = DesiredUpdate(device_id="dev-1", tenant_id="t-1", zone="eu", version=1,
                           desired={"firmware": "2.0.0", "mode": "eco"})
    applied = apply_desired(state, update)
    (event,) = applied.events
    assert isinstance(event, ShadowDeltaChanged)
    assert event.delta == {"firmware": "2.0.0"}
    assert apply_desired(state, update).outcome is ApplyOutcome.DUPLICATE
    applied = apply_telemetry(state, record(2, firmware="2.0.0", reported={"mode": "eco"}),
                              thresholds=RULES, arrival=2)
    assert [type(e) for e in applied.events] == [FirmwareVersionReported, ShadowDeltaChanged]
    assert state.delta == {}


def test_silence_reported_once_and_reconnect() -> None:
    state = DeviceState.new(record(1))
    apply_telemetry(state, record(1), thresholds=RULES, arrival=100.0)
    assert check_silence(state, now=105.0, silence_after=10.0) is None
    first = check_silence(state, now=111.0, silence_after=10.0)
    assert first is not None
    (event,) = first.events
    assert isinstance(event, DeviceDisconnected)
    assert event.silent_for == pytest.approx(11.0)
    assert check_silence(state, now=200.0, silence_after=10.0) is None  # once
    again = apply_telemetry(state, record(2), thresholds=RULES, arrival=201.0)
    assert [type(e) for e in again.events] == [DeviceConnected]


def test_residency_refuses_other_zone_and_claims() -> None:
    rec = record(1)
    check_residency(rec, deployment_zone="eu", state=None)
    with pytest.raises(ResidencyRefused, match=r"zone 'eu'.*serves 'us'"):
        check_residency(rec, deployment_zone="us", state=None)
    other_tenant = DeviceState(device_id="dev-1", tenant_id="t-2", zone="eu")
    with pytest.raises(ResidencyRefused, match="tenancy"):
        check_residency(rec, deployment_zone="eu", state=other_tenant)


def test_parse_roundtrip_and_errors_name_the_field() -> None:
    rec = record(7, reported={"mode": "eco"})
    assert parse_record(rec.to_json()) == rec
    good = json.loads(rec.to_json())
    cases = {
        "device_id": {**good, "device_id": ""},
        "seq": {**good, "seq": "7"},
        "readings.temperature": {**good, "readings": {"temperature": "hot"}},
        "zone": {**good, "zone": "mars"},
        "ts": {k: v for k, v in good.items() if k != "ts"},
        "kind": {**good, "kind": "reboot"},
    }
    for name, body in cases.items():
        with pytest.raises(InvalidTelemetry) as info:
            parse_record(json.dumps(body))
        assert info.value.field == name
    with pytest.raises(InvalidTelemetry, match="not JSON"):
        parse_record(b"{oops")


def test_state_document_roundtrip() -> None:
    state, _ = run([record(1, temp=90, reported={"mode": "eco"})])
    assert DeviceState.from_doc(json.loads(json.dumps(state.to_doc()))) == state


def test_thresholds_from_json_names_bad_rule() -> None:
    th = Thresholds.from_json('{"default": [{"metric": "t", "max": 1}], '
                              '"tenants": {"a": [{"metric": "t", "min": 5, "severity": "info"}]}}')
    assert th.for_tenant("a")[0].severity is Severity.INFO
    assert th.for_tenant("zzz")[0].max == 1.0
    with pytest.raises(ValueError, match=r"tenants.a\[0\]"):
        Thresholds.from_json('{"tenants": {"a": [{"metric": "t"}]}}')


# ----------------------------------------------------------------------- edge facts
def _edge(kind: str, detail: dict[str, object]) -> str:
    return json.dumps({"version": "0", "id": "e", "source": "fleetline.iot",
                       "detail-type": kind, "detail": detail})


def test_edge_events_on_the_stream_parse_as_edge_facts() -> None:
    from services.devices.domain import Presence, StateReport

    presence = parse_record(_edge("DevicePresence", {
        "device_id": "d", "tenant_id": "t", "zone": "eu", "status": "offline", "ts": 5.0}))
    assert presence == Presence(device_id="d", tenant_id="t", zone="eu", online=False, ts=5.0)
    report = parse_record(_edge("DeviceStateReported", {"id": "x", "data": {
        "device_id": "d", "tenant_id": "t", "reported": {"mode": "eco"}, "ts": 6.0}}))
    assert report == StateReport(device_id="d", tenant_id="t", zone="", reported={"mode": "eco"},
                                 ts=6.0)
    with pytest.raises(InvalidTelemetry, match=r"detail\.status"):
        parse_record(_edge("DevicePresence", {"device_id": "d", "tenant_id": "t",
                                              "zone": "eu", "status": "maybe", "ts": 1}))
    with pytest.raises(InvalidTelemetry, match="source"):
        parse_record(json.dumps({"source": "elsewhere", "detail-type": "DevicePresence",
                                 "detail": {}}))


def test_presence_and_reports_change_the_device_in_order_with_its_readings() -> None:
    from services.devices.domain import Presence, StateReport, apply_presence, apply_report

    state = DeviceState(device_id="d", tenant_id="t", zone="eu")
    reading = Telemetry(device_id="d", tenant_id="t", zone="eu", seq=1, ts=10.0,
                        readings={"temperature": 20.0})
    apply_telemetry(state, reading, thresholds=Thresholds(), arrival=10.0)
    off = Presence(device_id="d", tenant_id="t", zone="eu", online=False, ts=11.0)
    applied = apply_presence(state, off, arrival=11.0)
    assert [type(e) for e in applied.events] == [DeviceDisconnected]
    assert apply_presence(state, off, arrival=11.0).outcome is ApplyOutcome.DUPLICATE
    # older than the last reading: the reading says more
    stale = Presence(device_id="d", tenant_id="t", zone="eu", online=True, ts=9.0)
    assert apply_presence(state, stale, arrival=12.0).outcome is ApplyOutcome.STALE
    on = Presence(device_id="d", tenant_id="t", zone="eu", online=True, ts=12.0)
    assert [type(e) for e in apply_presence(state, on, arrival=12.0).events] == [
        DeviceConnected]
    report = StateReport(device_id="d", tenant_id="t", zone="eu", reported={"mode": "eco"},
                         ts=13.0)
    changed = apply_report(state, report)
    assert [type(e) for e in changed.events] == [DeviceStateChanged]
    assert state.reported == {"mode": "eco"}
    assert apply_report(state, report).outcome is ApplyOutcome.DUPLICATE
