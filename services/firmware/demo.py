"""`fleetline demo` step for firmware (entry point `fleetline.demo: firmware`): while a fleet
plays and takes IoT jobs (the simulator, services.devices.firmware_agent), roll a good
version out to one tenant in three waves and a bad one to another, and show the first
succeed and the second abort and roll back. The step fails, saying what it waited for and
what it saw, when a rollout does not end as it should."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio

from services.devices.firmware_agent import UpdateFaults, UpdatePlan
from services.devices.simulator import FleetConfig, FleetPlan, simulate
from services.firmware.domain import RolloutSpec
from services.firmware.service import FirmwareService, ServiceSettings
from shared.config import Resources

__all__ = ["step"]

GOOD: Final = "9.1.0"
BAD: Final = "9.9.9"
WITHIN_S: Final = 120.0


class DemoFailed(RuntimeError):
    """A rollout of the demo did not end as it should."""


async def step(ctx: Any) -> list[str]:
    """The demo step (a `shared.local.DemoStep`)."""
    resources = Resources.from_outputs(ctx.outputs)
    service = FirmwareService(ctx.aws, ServiceSettings.from_resources(
        resources, ctx.outputs.get("ResidencyZone", "eu")))
    with tempfile.TemporaryDirectory() as folder:
        for version in (GOOD, BAD):
            image = Path(folder) / f"fw-{version}.bin"
            image.write_bytes(f"fleetline demo firmware {version}\n".encode() * 512)
            await service.upload(version, image)
    config = FleetConfig(devices=300, tenants=3, zone="eu", eu_share=1.0, seed=7,
                         seq_base=int(time.time() * 1000))
    updates = UpdatePlan(UpdateFaults(bad_versions=frozenset({BAD}), bad_fail=0.8,
                                      install_seconds=1.0), seed=7)
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: simulate(
            ctx.aws, config, stream=ctx.outputs["TelemetryStream"], bus=None, rate=100.0,
            duration=WITHIN_S, updates=updates, plan=FleetPlan(config)))
        good, _ = await service.start(RolloutSpec(
            version=GOOD, zone=service.settings.zone, tenant="t-001", canary=10, growth=3.0,
            success_threshold=90.0, abort_threshold=20.0, min_executed=5,
            device_timeout=30.0, batch_size=50, client_token=f"demo-good-{config.seq_base}"))
        bad, _ = await service.start(RolloutSpec(
            version=BAD, zone=service.settings.zone, tenant="t-002", canary=10, growth=3.0,
            success_threshold=90.0, abort_threshold=20.0, min_executed=5,
            device_timeout=30.0, batch_size=50, client_token=f"demo-bad-{config.seq_base}"))
        try:
            for rollout_id, wanted in ((good, "SUCCEEDED"), (bad, "ROLLED_BACK")):
                status = await _ended(service, rollout_id)
                counts = status["counts"]
                lines.append(
                    f"rollout {rollout_id} of {status['version']} to tenant {status['tenant']}: "
                    f"{status['state']} in {len(status['waves'])} waves planned; "
                    + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
                if status["state"] != wanted:
                    raise DemoFailed(
                        f"rollout {rollout_id} of {status['version']} ended {status['state']}, "
                        f"not {wanted} ({status.get('reason') or 'no reason given'})")
        finally:
            tg.cancel_scope.cancel()
    lines.append(f"see one with: fleetline firmware status {good}")
    return lines


async def _ended(service: FirmwareService, rollout_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WITHIN_S
    status = await service.status(rollout_id)
    while status["state"] not in ("SUCCEEDED", "ROLLED_BACK", "FAILED"):
        if time.monotonic() > deadline:
            raise DemoFailed(f"rollout {rollout_id} still {status['state']} after "
                             f"{WITHIN_S:.0f} s: counts {status['counts']}")
        await anyio.sleep(1.0)
        status = await service.status(rollout_id)
    return status
