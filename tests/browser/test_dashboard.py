"""The live dashboard in a real browser: headless Chromium (Debian's) loads the page, sees an
update pushed from a queue (as a task's feed queue delivers it), and a second tenant's page
never shows the first tenant's device."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from services.devices._auth import DEV_SECRET, issue_token
from services.devices.dashboard import DashboardServer, Hub, dashboard_handler, dev_mode
from services.devices.events import DeviceConnected, DeviceView, Severity, Status, ThresholdBreached
from shared.aws import AwsClients
from shared.consumers import SqsConsumer, SqsSettings
from shared.events import Envelope, load_registered_events

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.emulator,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian chromium is not installed at /usr/bin/chromium "
                              "(.ci/run installs it with apt-get)"),
]

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def bus_event(event: DeviceConnected | ThresholdBreached, sequence: int) -> str:
    """The body EventBridge delivers to an SQS target."""
    envelope = Envelope.new(event, aggregate_id=event.device.device_id, sequence=sequence,
                            tenant_id=event.device.tenant_id)
    return json.dumps({
        "version": "0", "id": envelope.id, "detail-type": envelope.type,
        "source": envelope.source, "time": envelope.time.isoformat(), "region": "us-east-1",
        "resources": [], "detail": json.loads(envelope.to_json()),
    })


def device(device_id: str, tenant: str, **kw: object) -> DeviceView:
    return DeviceView(device_id=device_id, tenant_id=tenant, zone="eu", status=Status.ONLINE,
                      seq=1, last_seen=time.time(), firmware="1.0.0",
                      readings={"temperature": 21.5}, **kw)  # type: ignore[arg-type]


async def test_dashboard_pushes_updates_and_keeps_tenants_apart(
    aws: AwsClients, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    load_registered_events()
    sqs = await aws.client("sqs")
    queue_url = (await sqs.create_queue(QueueName="dashboard-browser"))["QueueUrl"]
    hub = Hub()
    # Locally (the emulator's endpoint, no secret configured): dev mode, as the lifespan sees it.
    server = DashboardServer(hub, None, secret=DEV_SECRET, dev_mode=dev_mode())
    base = await server.start(port=0)
    consumer = SqsConsumer(aws, queue_url, dashboard_handler(hub),
                           settings=SqsSettings(wait_time_seconds=1, drain_seconds=2))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)
            async with async_playwright() as pw:
                context = await pw.chromium.launch_persistent_context(
                    str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 800},
                )
                try:
                    page_a = await context.new_page()
                    page_b = await context.new_page()
                    # what the browser reports as failing (a missing resource, a script error)
                    browser_errors: list[str] = []
                    for page in (page_a, page_b):
                        page.on("console", lambda m: browser_errors.append(m.text)
                                if m.type == "error" else None)
                        page.on("pageerror", lambda e: browser_errors.append(str(e)))
                    await page_a.goto(f"{base}/?token={issue_token('t-alpha', secret=DEV_SECRET)}")
                    await page_b.goto(f"{base}/?token={issue_token('t-beta', secret=DEV_SECRET)}")
                    for page in (page_a, page_b):
                        await page.wait_for_selector("body[data-snapshot='1']", timeout=10_000)
                    assert await page_a.text_content("#tenant") == "t-alpha"

                    # tenant alpha's device connects and breaches a threshold
                    sent = time.monotonic()
                    await sqs.send_message(QueueUrl=queue_url, MessageBody=bus_event(
                        DeviceConnected(device=device("dev-alpha-1", "t-alpha")), 1))
                    await page_a.wait_for_selector("#device-dev-alpha-1", timeout=10_000)
                    latency = time.monotonic() - sent
                    assert await page_a.text_content("#count-online") == "1"
                    await sqs.send_message(QueueUrl=queue_url, MessageBody=bus_event(
                        ThresholdBreached(
                            device=device("dev-alpha-1", "t-alpha",
                                          alarms={"temperature": Severity.CRITICAL}),
                            metric="temperature", value=91.0, limit=80.0, bound="max",
                            severity=Severity.CRITICAL), 2))
                    # a locator, not wait_for_function: the page's CSP refuses eval
                    await expect(page_a.locator("#count-alarms")).to_have_text(
                        "1", timeout=10_000)
                    await page_a.screenshot(path=str(ARTIFACTS / "dashboard-tenant-alpha.png"))

                    # tenant beta gets its own device's update, and never alpha's
                    await sqs.send_message(QueueUrl=queue_url, MessageBody=bus_event(
                        DeviceConnected(device=device("dev-beta-1", "t-beta")), 1))
                    await page_b.wait_for_selector("#device-dev-beta-1", timeout=10_000)
                    assert await page_b.query_selector("#device-dev-alpha-1") is None
                    assert await page_b.text_content("#count-total") == "1"
                    assert await page_b.text_content("#count-alarms") == "0"
                    assert await page_a.query_selector("#device-dev-beta-1") is None
                    # locally (emulator, no secret) the bare URL offers a tenant picker
                    picker = await page_b.request.get(f"{base}/")
                    assert picker.status == 200
                    assert "t-alpha" in await picker.text()
                    # a forged tenant is refused outright
                    response = await page_b.request.get(f"{base}/events?token=t-alpha.1.x")
                    assert response.status == 401
                    await page_b.screenshot(path=str(ARTIFACTS / "dashboard-tenant-beta.png"))
                    assert browser_errors == []
                finally:
                    await context.close()
            assert latency < 5.0
            consumer.stop(drain_seconds=1)
    finally:
        await server.stop()
