"""The devices bounded context: fleet telemetry, device state and shadow, alarms, residency,
the read model with its query API, and the live dashboard.

Processes (see deploy/template.yaml): the telemetry worker (`services.devices.telemetry:worker`),
the read-model projection (`services.devices.projection:worker`), the dashboard
(`services.devices.dashboard:worker`), the edge Lambda (`services.devices.ingest.handler`)
and the alarm publisher Lambda (`services.devices.alarms.handler`: alarms from the bus to SNS).
`fleetline simulate` plays a fleet. Decisions live in `services.devices.domain` (no I/O).
"""
