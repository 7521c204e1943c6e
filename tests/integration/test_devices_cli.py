"""`fleetline devices show / list / counts` against the emulator's read model: what a user
types to look at one device or a page of a tenant's fleet (issue 4's query API from the
shell)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from services.devices._local import stack_clients, stack_resources
from services.devices.cli import app
from services.devices.events import DeviceConnected, Status
from services.devices.projection import ReadModel, projection_handler
from shared.aws import AwsClients
from shared.config import resource_env_name
from shared.emulator import Emulator
from shared.events import load_registered_events
from shared.local._state import Phase, UpState, write_state
from tests.integration.test_devices_read_model import create_read_model, message, view

pytestmark = pytest.mark.emulator

TABLE = "cli-read-model"


@pytest.fixture
def read_model(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A read model with devices a1..a3 of t-a online and b1 of t-b."""
    load_registered_events()

    async def seed() -> None:
        async with AwsClients() as aws:
            await create_read_model(aws, TABLE)
            handler = projection_handler(ReadModel(aws, TABLE))
            await handler([message(DeviceConnected(device=view(f"a{i}", "t-a", Status.ONLINE)), 1)
                           for i in range(1, 4)]
                          + [message(DeviceConnected(device=view("b1", "t-b", Status.ONLINE)), 1)])

    anyio.run(seed)
    monkeypatch.setenv(resource_env_name("DeviceReadModelTable"), TABLE)
    return TABLE


def test_show_prints_the_device_and_refuses_another_tenants(read_model: str) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["show", "a1", "--tenant", "t-a"])
    assert shown.exit_code == 0, shown.output
    device = json.loads(shown.stdout)
    assert (device["device_id"], device["tenant_id"], device["status"]) == ("a1", "t-a", "online")

    foreign = runner.invoke(app, ["show", "b1", "--tenant", "t-a"])
    assert foreign.exit_code == 1
    assert "no device b1" in foreign.stderr


def test_list_pages_through_a_tenants_devices(read_model: str) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["list", "--tenant", "t-a", "--limit", "2"])
    assert first.exit_code == 0, first.output
    cursor = first.stderr.split("--cursor", 1)[1].strip()
    rest = runner.invoke(app, ["list", "--tenant", "t-a", "--limit", "2", "--cursor", cursor])
    assert rest.exit_code == 0, rest.output
    ids = [json.loads(line)["device_id"]
           for line in (first.stdout + rest.stdout).splitlines()]
    assert sorted(ids) == ["a1", "a2", "a3"]

    wrong = runner.invoke(app, ["list", "--tenant", "t-a", "--status", "sleeping"])
    assert wrong.exit_code == 2
    assert "status" in wrong.output


def test_counts(read_model: str) -> None:
    counted = CliRunner().invoke(app, ["counts", "--tenant", "t-a"])
    assert counted.exit_code == 0, counted.output
    assert json.loads(counted.stdout)["online"] == 3


async def test_outside_the_stack_the_cli_reads_the_running_up_and_leaves_the_environment(
    emulator: Emulator, tmp_path: Path,
) -> None:
    """No names, endpoint or credentials in the environment: the state file of `up` says
    where the stack is, and nothing is written into `os.environ` to get there."""
    async with AwsClients() as aws:
        cloudformation = await aws.client("cloudformation")
        await cloudformation.create_stack(StackName="cli-up", TemplateBody=json.dumps({
            "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
            "Outputs": {"TelemetryStream": {"Value": "cli-up-telemetry"}},
        }))
    write_state(tmp_path, UpState(stack_name="cli-up", endpoint=emulator.endpoint_url,
                                  supervisor_pid=os.getpid(), phase=Phase.READY))
    environ = {"FLEETLINE_STATE_DIR": str(tmp_path)}
    before = dict(os.environ)
    resources = await stack_resources("TelemetryStream", environ)
    assert resources.get("TelemetryStream") == "cli-up-telemetry"
    async with stack_clients("TelemetryStream", environ) as aws:
        assert aws.settings.endpoint_url == emulator.endpoint_url
    assert dict(os.environ) == before
