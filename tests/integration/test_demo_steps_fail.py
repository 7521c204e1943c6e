"""A demo step that does not see what it set out to show fails, saying what it waited for
and what it saw (a broken pipeline once printed "0 devices in the read model" and exit 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.devices import demo as devices_demo
from services.orders import demo as orders_demo
from shared.aws import AwsClients
from shared.local import DemoContext, DemoStepFailed, UpState
from shared.local._demo import run_steps
from tests.integration._devices_support import create_device_resources
from tests.integration.test_devices_read_model import create_read_model

pytestmark = pytest.mark.emulator


def _context(aws: AwsClients, outputs: dict[str, str], **extra: Any) -> DemoContext:
    state = UpState(stack_name="demo-test", endpoint="http://127.0.0.1:1", supervisor_pid=0)
    return DemoContext(aws=aws, state=state, outputs=outputs, template={"Resources": {}},
                       template_path=Path("template.yaml"), extra=dict(extra))


async def test_devices_step_fails_when_the_read_model_stays_empty(aws: AwsClients) -> None:
    # The stream and bus exist, but no worker runs: nothing reaches the read model.
    resources = await create_device_resources(aws, prefix="demo")
    await create_read_model(aws, "demo-read-model")
    events = await aws.client("events")
    await events.create_event_bus(Name="demo-devices")
    ctx = _context(aws, {"TelemetryStream": resources.stream,
                         "DeviceEventsBusName": "demo-devices",
                         "DeviceReadModelTable": "demo-read-model"}, devices_within_s=1.0)
    with pytest.raises(DemoStepFailed) as failed:
        await devices_demo.step(ctx)
    assert "100 devices of t-001 in the read model" in str(failed.value)
    assert "saw 0 devices in the read model, 0 online" in str(failed.value)
    printed: list[str] = []
    assert await run_steps(ctx, [("devices", devices_demo.step)], printed.append) is False
    assert printed[-1].startswith("   failed: waited for 100 devices")


async def test_orders_step_fails_without_an_api(aws: AwsClients) -> None:
    dynamodb = await aws.client("dynamodb")
    await dynamodb.create_table(
        TableName="demo-inventory", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")])
    ctx = _context(aws, {"InventoryTable": "demo-inventory"})
    with pytest.raises(DemoStepFailed, match="orders HTTP API"):
        await orders_demo.step(ctx)
