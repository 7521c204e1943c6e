"""The edge Lambda behind the IoT rules that need code (`services.devices.ingest.handler`).

Telemetry needs none: the TelemetryTopicRule writes it straight to the Kinesis stream. The
`alarms` and `state` channels (MQTT `fleet/<tenant>/<device>/<channel>`) come here, as the
rule's SQL output: the device's JSON payload plus `tenant_id`, `device_id`, `channel` and
`received_at` (ms) taken from the topic and the broker.

- `normalise(event)` (pure) accepts the variants devices send (camelCase ids, `sev`/`level`
  for severity, millisecond or second timestamps, AWS shadow-style `{"state": {"reported":
  {...}}}`) and returns one shape, or a `Rejection` naming the field and the reason.
- An alarm is published to the alarms topic as a `DeviceAlarmRaised` envelope, with the
  message attributes of every alarm (`services.devices.alarms.alarm_attributes`: `tenant`
  and `severity`, which the subscriptions filter on, `type`, `event_id`).
- A state change goes to the device-events bus as a `DeviceStateReported` envelope (source
  `fleetline.iot`). The bus's EdgeStateRule puts it on the telemetry stream (partition key:
  the device), where the telemetry worker applies it in order with the device's readings
  and emits the transitions (DeviceStateChanged ...) as `fleetline.devices` events; the
  read-model rules never take an edge fact for a worker's decision.
- A bad payload goes to TelemetryFailureQueue with its reason (message attribute `reason`)
  and the handler returns `{"accepted": false, "reason": ...}`: it never raises for data,
  so the rule does not retry a payload that can never be accepted.
- Residency: a payload naming another zone than FLEETLINE_RESIDENCY_ZONE is rejected.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Final

import anyio

from services.devices.alarms import alarm_attributes
from services.devices.events import EDGE_SOURCE, DeviceAlarmRaised, DeviceStateReported
from shared.aws import AwsClients, aws_errors
from shared.events import Envelope

__all__ = [
    "EDGE_SOURCE",
    "DeviceAlarmRaised",
    "DeviceStateReported",
    "Normalised",
    "Rejection",
    "handler",
    "normalise",
]

SEVERITIES: Final = ("info", "warning", "major", "critical")
_SEVERITY_ALIASES: Final = {"warn": "warning", "crit": "critical", "err": "major",
                            "error": "major", "fatal": "critical", "low": "info",
                            "medium": "warning", "high": "major"}


@dataclass(frozen=True)
class Rejection:
    field: str | None
    reason: str

    def __str__(self) -> str:
        return self.reason if self.field is None else f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class Normalised:
    channel: str
    event: DeviceAlarmRaised | DeviceStateReported


def _first(event: dict[str, Any], *names: str) -> Any:
    for name in names:
        if event.get(name) not in (None, ""):
            return event[name]
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    # Anything after the year 2286 in seconds is a millisecond timestamp.
    return float(value) / 1000.0 if value > 1e10 else float(value)


def normalise(event: Any, *, zone: str) -> Normalised | Rejection:
    """One payload from an IoT rule, in one shape, or why it is refused. No I/O."""
    if not isinstance(event, dict):
        return Rejection(None, "payload must be a JSON object")
    device_id = _first(event, "device_id", "deviceId", "thingName")
    tenant_id = _first(event, "tenant_id", "tenantId")
    for name, value in (("device_id", device_id), ("tenant_id", tenant_id)):
        if not isinstance(value, str) or not 0 < len(value) <= 128:
            return Rejection(name, "must be a non-empty string of at most 128 characters")
    device_zone = event.get("zone")
    if device_zone is not None and device_zone != zone:
        return Rejection("zone", f"residency: device belongs to zone {device_zone!r}; this "
                                 f"deployment serves {zone!r}")
    ts = _timestamp(_first(event, "ts", "timestamp", "received_at"))
    if ts is None:
        return Rejection("ts", "must be a number (epoch seconds or milliseconds)")
    channel = event.get("channel")
    if channel == "alarms":
        raw = _first(event, "severity", "sev", "level")
        severity = str(raw).strip().lower() if raw is not None else ""
        severity = _SEVERITY_ALIASES.get(severity, severity)
        if severity not in SEVERITIES:
            return Rejection("severity", f"must be one of {list(SEVERITIES)}")
        code = _first(event, "code", "alarm", "type")
        if not isinstance(code, str):
            return Rejection("code", "must be a non-empty string")
        message = event.get("message")
        return Normalised("alarms", DeviceAlarmRaised(
            device_id=device_id, tenant_id=tenant_id, severity=severity, code=code,
            message=message if isinstance(message, str) else "", ts=ts))
    if channel == "state":
        state = event.get("state")
        if isinstance(state, dict) and isinstance(state.get("reported"), dict):
            reported = state["reported"]
        elif isinstance(event.get("reported"), dict):
            reported = event["reported"]
        else:
            return Rejection("reported", 'must be an object (or {"state": {"reported": {}}})')
        return Normalised("state", DeviceStateReported(
            device_id=device_id, tenant_id=tenant_id, reported=reported, ts=ts))
    return Rejection("channel", "must be 'alarms' or 'state'")


async def _deliver(event: Any, environ: dict[str, str]) -> dict[str, Any]:
    zone = environ.get("FLEETLINE_RESIDENCY_ZONE", "eu")
    result = normalise(event, zone=zone)
    async with AwsClients() as aws:
        if isinstance(result, Rejection):
            queue = environ.get("FLEETLINE_TELEMETRY_FAILURE_QUEUE")
            if queue:
                sqs = await aws.client("sqs")
                with aws_errors():
                    await sqs.send_message(
                        QueueUrl=queue,
                        MessageBody=json.dumps({"payload": event, "reason": str(result)},
                                               default=str),
                        MessageAttributes={
                            "reason": {"DataType": "String", "StringValue": str(result)[:256]},
                        },
                    )
            return {"accepted": False, "reason": str(result)}
        data = result.event
        envelope = Envelope.new(data, aggregate_id=data.device_id, sequence=0,
                                tenant_id=data.tenant_id)
        if isinstance(data, DeviceAlarmRaised):
            sns = await aws.client("sns")
            with aws_errors():
                await sns.publish(
                    TopicArn=environ["FLEETLINE_ALARMS_TOPIC"], Message=envelope.to_json(),
                    MessageAttributes=alarm_attributes(
                        tenant=data.tenant_id, severity=data.severity,
                        event_type=envelope.type, event_id=envelope.id),
                )
        else:
            events = await aws.client("events")
            # Through the zone's global endpoint when the stack has one (docs/zones.md).
            endpoint = environ.get("FLEETLINE_DEVICE_EVENTS_ENDPOINT_ID")
            with aws_errors():
                response = await events.put_events(Entries=[{
                    "EventBusName": environ["FLEETLINE_DEVICE_EVENTS_BUS_NAME"],
                    "Source": envelope.source, "DetailType": envelope.type,
                    "Detail": envelope.to_json(),
                }], **({"EndpointId": endpoint} if endpoint else {}))
            if response.get("FailedEntryCount"):
                # Raise: the rule's retries (then the function's DLQ) take over.
                raise RuntimeError(f"PutEvents refused the event: {response['Entries'][0]}")
        return {"accepted": True, "channel": result.channel, "event_id": envelope.id}


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Lambda entry point for the IoT rules (alarms and state channels)."""
    return anyio.run(_deliver, event, dict(os.environ))
