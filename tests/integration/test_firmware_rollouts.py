"""Firmware rollouts end to end on the emulator: the real workflow (its Distributed Map waves
run by the local map-runs process), the tasks and acks workers, IoT Jobs, and a fleet that
takes the jobs and answers on the acks stream (services.firmware.harness). Over real HTTP.

Each test names the device counts it expects exactly: a device counted twice, or not at
all, fails it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from services.devices.firmware_agent import UpdateFaults
from services.firmware.domain import RolloutSpec
from services.firmware.errors import RolloutRejected
from services.firmware.harness import (
    STACK_ENV,
    FirmwareStack,
    Fleet,
    create_stack,
    runtime,
)
from services.firmware.service import FirmwareService
from shared.aws import AwsClients
from shared.emulator import Emulator

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WITHIN_S = 90.0


@pytest.fixture
async def stack(aws: AwsClients) -> FirmwareStack:
    return await create_stack(aws)


async def upload(service: FirmwareService, tmp_path: Path, *versions: str) -> None:
    for version in versions:
        image = tmp_path / f"fw-{version}.bin"
        image.write_bytes(f"firmware {version}".encode() * 100)
        await service.upload(version, image)


def spec(**changes: Any) -> RolloutSpec:
    values: dict[str, Any] = {
        "version": "2.0.0", "zone": "eu", "canary": 6, "growth": 3.0,
        "success_threshold": 80.0, "abort_threshold": 50.0, "min_executed": 5,
        "device_timeout": 4.0, "batch_size": 10, "max_concurrency": 4}
    values.update(changes)
    return RolloutSpec(**values)


async def until(check: Callable[[], Awaitable[Any]], *, within: float = WITHIN_S,
                what: str = "") -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await anyio.sleep(0.2)
    raise AssertionError(f"not within {within:.0f} s: {what} (last: {last!r})")


async def final(service: FirmwareService, rollout_id: str, *states: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        status = await service.status(rollout_id)
        return status if status["state"] in states else None

    return dict(await until(ended, what=f"{rollout_id} in {states}"))


@asynccontextmanager
async def playing(fleet: Fleet) -> AsyncIterator[Fleet]:
    """The fleet in the read model, taking jobs and answering, for the block."""
    await fleet.seed()
    async with anyio.create_task_group() as tg:
        await tg.start(fleet.play)
        try:
            yield fleet
        finally:
            tg.cancel_scope.cancel()


async def test_three_waves_succeed_and_every_device_is_counted_once(
    aws: AwsClients, stack: FirmwareStack, tmp_path: Path,
) -> None:
    """60 devices, 6 of them in zone us: the eu rollout targets the other 54 in three waves
    (6, 18, 30). Devices answer twice (duplicates), some after their time-out (late), some
    never (silent): each is counted exactly once, and no us device is ever commanded."""
    zones = {f"dev-{i:04d}": "us" for i in range(1, 61, 10)}
    fleet = Fleet(aws, stack, devices=60, zones=zones, duplicate_answers=True,
                  faults=UpdateFaults(late=0.05, silent=0.05, late_seconds=8.0,
                                      install_seconds=0.2))
    service = FirmwareService(aws, stack.service_settings())
    await upload(service, tmp_path, "2.0.0")
    async with playing(fleet), runtime(aws, stack) as running:
        # 10 % of the devices fail to answer in time, drawn at random into the waves: a
        # success threshold of 40 % is what even an unlucky canary of 6 reaches.
        rollout_id, created = await service.start(spec(success_threshold=40.0))
        assert created
        status = await final(service, rollout_id, "SUCCEEDED", "FAILED", "ROLLED_BACK")
        assert running.acks is not None
        duplicates_seen = running.acks.ignored
    assert status["state"] == "SUCCEEDED", status
    assert [w["size"] for w in status["waves"]] == [6, 18, 30]
    counts = status["counts"]
    silent = fleet.plan.silent
    answered = {fleet.ids[a.device] for a in fleet.answers if not a.failed}
    on_time = [d for d in answered if fleet.versions[d] == "2.0.0"]
    assert counts["pending"] == 0
    assert counts["in_progress"] == 0
    assert counts["succeeded"] + counts["timed_out"] == 54
    assert counts["timed_out"] >= silent  # silent ones, and late ones
    assert counts["succeeded"] <= len(on_time)
    assert sum(counts.values()) == 54  # once each
    assert duplicates_seen >= counts["succeeded"]  # every answer came twice
    for wave in status["waves"]:
        assert sum(wave["counts"].values()) == wave["size"]
    us_devices = set(zones)
    jobs = await _job_targets(aws)
    assert jobs
    assert not (set().union(*jobs.values()) & us_devices)
    assert all(fleet.versions[d] == "1.0.0" for d in us_devices)


async def test_a_bad_version_aborts_and_every_updated_device_goes_back(
    aws: AwsClients, stack: FirmwareStack, tmp_path: Path,
) -> None:
    """Most devices fail to install 9.9.9: past the abort threshold the rollout stops, the
    later waves never start, and every device that did install it is back on 1.0.0."""
    fleet = Fleet(aws, stack, devices=40,
                  faults=UpdateFaults(bad_versions=frozenset({"9.9.9"}), bad_fail=0.7,
                                      install_seconds=0.2))
    service = FirmwareService(aws, stack.service_settings())
    await upload(service, tmp_path, "9.9.9")
    async with playing(fleet), runtime(aws, stack):
        rollout_id, _ = await service.start(spec(
            version="9.9.9", canary=20, growth=2.0, abort_threshold=20.0, min_executed=5))
        status = await final(service, rollout_id, "ROLLED_BACK", "FAILED", "SUCCEEDED")
    assert status["state"] == "ROLLED_BACK", status
    first, *later = status["waves"]
    assert first["counts"]["failed"] > 0
    assert first["counts"]["rolled_back"] >= 1
    assert first["counts"]["succeeded"] == 0  # every success went back
    for wave in later:
        assert wave["state"] == "planned"
        assert wave["counts"]["pending"] == wave["size"]  # never started
    assert all(v == "1.0.0" for v in fleet.versions.values()), fleet.versions
    installed = {fleet.ids[a.device] for a in fleet.answers if a.version == "9.9.9"
                 and not a.failed}
    assert installed  # something was updated, so something was rolled back
    assert first["counts"]["rolled_back"] == len(installed)


async def test_pause_and_the_approval_gate_hold_the_next_wave_until_the_operator(
    aws: AwsClients, stack: FirmwareStack, tmp_path: Path,
) -> None:
    fleet = Fleet(aws, stack, devices=30, faults=UpdateFaults(install_seconds=0.2))
    service = FirmwareService(aws, stack.service_settings())
    await upload(service, tmp_path, "2.0.0")
    async with playing(fleet), runtime(aws, stack):
        rollout_id, _ = await service.start(spec(canary=5, growth=5.0, approval=True))
        paused = await service.pause(rollout_id)
        assert paused.state.value == "PAUSED"
        await anyio.sleep(3.0)
        status = await service.status(rollout_id)
        assert status["counts"]["in_progress"] + status["counts"]["succeeded"] == 0
        assert not await _job_targets(aws)  # paused before the first wave: nothing commanded
        assert (await service.resume(rollout_id)).state.value == "RUNNING"

        async def waiting() -> dict[str, Any] | None:
            s = await service.status(rollout_id)
            return s if s["state"] == "WAITING_APPROVAL" else None

        status = await until(waiting, what="waiting for approval after wave 0")
        assert status["waves"][0]["counts"]["succeeded"] == 5
        await anyio.sleep(2.0)
        held = await service.status(rollout_id)
        assert held["state"] == "WAITING_APPROVAL"
        assert held["waves"][1]["counts"]["pending"] == 25  # not started without approval
        assert (await service.approve(rollout_id)).state.value == "RUNNING"
        status = await final(service, rollout_id, "SUCCEEDED", "FAILED")
    assert status["state"] == "SUCCEEDED"
    assert status["counts"]["succeeded"] == 30


async def test_a_killed_tasks_worker_neither_loses_nor_doubles_a_device(
    aws: AwsClients, emulator: Emulator, stack: FirmwareStack, tmp_path: Path,
) -> None:
    """SIGKILL the tasks worker while it holds batches: their heartbeats stop, the batch
    tasks come again to a new worker, which commands no device twice and counts none twice."""
    fleet = Fleet(aws, stack, devices=40, faults=UpdateFaults(install_seconds=4.0))
    service = FirmwareService(aws, stack.service_settings())
    await upload(service, tmp_path, "2.0.0")
    env = {**os.environ, STACK_ENV: stack.to_json(), "AWS_ENDPOINT_URL": emulator.endpoint_url}
    worker = await anyio.open_process(
        [sys.executable, "-m", "services.firmware.harness", "tasks"], cwd=ROOT, env=env,
        stdout=open(tmp_path / "tasks.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115, ASYNC230
    try:
        async with playing(fleet), runtime(aws, stack, "acks", "map-runs") as running:
            rollout_id, _ = await service.start(spec(canary=40, device_timeout=20.0))

            async def claimed() -> bool:
                s = await service.status(rollout_id)
                return s["counts"]["in_progress"] >= 20

            await until(claimed, what="batches claimed by the first worker")
            worker.send_signal(signal.SIGKILL)
            with anyio.fail_after(10):
                await worker.wait()
            await running.start("tasks")
            status = await final(service, rollout_id, "SUCCEEDED", "FAILED", "ROLLED_BACK")
    finally:
        if worker.returncode is None:
            worker.kill()
    assert status["state"] == "SUCCEEDED", status
    assert status["counts"]["succeeded"] == 40
    assert sum(status["counts"].values()) == 40
    targets = await _job_targets(aws)
    commanded = [d for devices in targets.values() for d in devices]
    assert sorted(commanded) == sorted(fleet.ids)  # each device in exactly one job


async def test_refusals_start_nothing_and_a_client_token_starts_one_rollout(
    aws: AwsClients, stack: FirmwareStack, tmp_path: Path,
) -> None:
    service = FirmwareService(aws, stack.service_settings())
    await upload(service, tmp_path, "2.0.0", "2.1.0")
    refusals = {
        "version": spec(version="3.0.0"),
        "zone": spec(zone="us"),
        "abort_threshold": spec(abort_threshold=150.0),
    }
    for field, bad in refusals.items():
        with pytest.raises(RolloutRejected) as caught:
            await service.start(bad)
        assert caught.value.field == field
    downgrade = spec(version="2.0.0", from_version="2.1.0")
    with pytest.raises(RolloutRejected, match="--allow-downgrade"):
        await service.start(downgrade)
    assert await service.list() == []

    first, created = await service.start(spec(tenant="t-1", client_token="k-1"))
    again, created_again = await service.start(spec(tenant="t-1", client_token="k-1"))
    assert (again, created, created_again) == (first, True, False)
    with pytest.raises(RolloutRejected) as caught:
        await service.start(spec(tenant="t-1", client_token="k-1", canary=7))
    assert caught.value.field == "client_token"
    with pytest.raises(RolloutRejected) as caught:
        await service.start(spec(tenant="t-1", version="2.1.0"))
    assert caught.value.field == "tenant"
    assert first in str(caught.value)
    other, created = await service.start(spec(tenant="t-2"))
    assert created
    assert {r["rollout_id"] for r in await service.list()} == {first, other}
    await service.abort(first)
    await service.abort(other)


async def _job_targets(aws: AwsClients) -> dict[str, list[str]]:
    iot = await aws.client("iot")
    out: dict[str, list[str]] = {}
    for job in (await iot.list_jobs()).get("jobs", []):
        described = await iot.describe_job(jobId=job["jobId"])
        out[job["jobId"]] = [t.rsplit("/", 1)[-1] for t in described["job"]["targets"]]
    return out
