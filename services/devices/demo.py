"""`fleetline demo` step for devices (entry point `fleetline.demo: devices`): play a small
fleet for a few seconds through the same stream and bus the IoT rules feed, wait until the
read model shows it (telemetry worker -> outbox -> relay -> bus -> projection), and print the
fleet counts and a dashboard link for one tenant."""

from __future__ import annotations

import time
from typing import Any

import anyio

from services.devices.cli import dashboard_url
from services.devices.query import DeviceQueries
from services.devices.simulator import FleetConfig, simulate

__all__ = ["step"]

DEMO_TENANT = "t-001"


async def step(ctx: Any) -> list[str]:
    """The demo step (a `shared.local.DemoStep`)."""
    config = FleetConfig(devices=300, tenants=3, zone="eu", eu_share=1.0, duplicates=0.02,
                         out_of_order=0.02, malformed=0.01, seed=7)
    report = await simulate(
        ctx.aws, config, stream=ctx.outputs["TelemetryStream"],
        bus=ctx.outputs["DeviceEventsBusName"], rate=300.0, duration=3.0,
    )
    lines = [
        f"simulated {config.devices} devices: {report.records} records in "
        f"{report.put_records_calls} PutRecords, faults {report.by_fault or 'none'}"
    ]
    queries = DeviceQueries(ctx.aws, ctx.outputs["DeviceReadModelTable"])
    deadline = time.monotonic() + 60
    counts = await queries.fleet_counts(DEMO_TENANT)
    # The devices of one tenant are a third of the fleet; wait until the projection saw them.
    while counts.total < config.devices // config.tenants and time.monotonic() < deadline:
        await anyio.sleep(0.5)
        counts = await queries.fleet_counts(DEMO_TENANT)
    lines.append(
        f"{DEMO_TENANT}: {counts.total} devices in the read model, {counts.online} online, "
        f"{counts.offline} offline, {counts.with_alarms} with alarms"
    )
    base = next((url for name, url in ctx.state.urls.items() if "dashboard" in name.lower()),
                None)
    if base is not None:
        lines.append(f"live dashboard for {DEMO_TENANT}: {dashboard_url(DEMO_TENANT, base=base)}")
    lines.append("more load: fleetline simulate --devices 10000")
    return lines
