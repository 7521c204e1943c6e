"""`fleetline demo` step for devices (entry point `fleetline.demo: devices`): play a small
fleet for a few seconds through the same stream and bus the IoT rules feed, wait until the
read model shows it (telemetry worker -> outbox -> relay -> bus -> projection), and print the
fleet counts and a dashboard link for one tenant. The step fails (`DemoStepFailed`, with
what it waited for and what it saw) when the read model does not show the tenant's devices
online within `WITHIN_S`: a broken pipeline is a failed demo, not "0 devices"."""

from __future__ import annotations

import time
from typing import Any

import anyio

from services.devices.cli import dashboard_url
from services.devices.query import DeviceQueries
from services.devices.simulator import FleetConfig, simulate
from shared.local import DemoStepFailed

__all__ = ["WITHIN_S", "step"]

DEMO_TENANT = "t-001"
WITHIN_S = 60.0


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
    within = float(ctx.extra.get("devices_within_s", WITHIN_S))
    deadline = time.monotonic() + within
    counts = await queries.fleet_counts(DEMO_TENANT)
    # The devices of one tenant are a third of the fleet; wait until the projection saw them.
    expected = config.devices // config.tenants
    while counts.total < expected and time.monotonic() < deadline:
        await anyio.sleep(0.5)
        counts = await queries.fleet_counts(DEMO_TENANT)
    seen = (f"{counts.total} devices in the read model, {counts.online} online, "
            f"{counts.offline} offline, {counts.with_alarms} with alarms")
    if counts.total < expected or counts.online == 0:
        raise DemoStepFailed(
            f"{expected} devices of {DEMO_TENANT} in the read model, some online, within "
            f"{within:.0f} s (telemetry worker -> outbox -> relay -> bus -> projection)",
            seen)
    lines.append(f"{DEMO_TENANT}: {seen}")
    base = next((url for name, url in ctx.state.urls.items() if "dashboard" in name.lower()),
                None)
    if base is not None:
        lines.append(f"live dashboard for {DEMO_TENANT}: {dashboard_url(DEMO_TENANT, base=base)}")
    lines.append("more load: fleetline simulate --devices 10000")
    return lines
