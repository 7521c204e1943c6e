"""The live dashboard in a real browser: headless Chromium (Debian's) loads the page, sees an
update pushed from a queue (as a task's feed queue delivers it) and readings put on a Kinesis
stream (read through an enhanced fan-out consumer, as a task reads the telemetry stream):
the reading updating, its last-seen age, a sparkline, the fleet charts, the detail panel,
paging and search; a second tenant's page never shows the first tenant's device or
readings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from services.devices._auth import DEV_SECRET, issue_token
from services.devices.dashboard import DashboardServer, Hub, dashboard_handler, dev_mode
from services.devices.domain import Telemetry
from services.devices.events import DeviceConnected, DeviceView, Severity, Status, ThresholdBreached
from shared.aws import AwsClients
from shared.consumers import SqsConsumer, SqsSettings
from shared.consumers.kinesis import KinesisFanOut, fan_out_consumer, stream_arn
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


def reading(device_id: str, tenant: str, seq: int, temperature: float) -> dict[str, object]:
    """A record as the edge puts it on the telemetry stream."""
    data = Telemetry(device_id=device_id, tenant_id=tenant, zone="eu", seq=seq, ts=time.time(),
                     readings={"temperature": temperature, "humidity": 40.0}).to_json()
    return {"Data": data.encode(), "PartitionKey": device_id}


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
    kinesis = await aws.client("kinesis")
    await kinesis.create_stream(StreamName="dashboard-readings", ShardCount=2)
    hub = Hub()
    # Sixty more devices of alpha, for paging and search (the read model seeds them so).
    for i in range(60):
        hub.view("t-alpha").apply({"device_id": f"dev-alpha-s{i:03d}", "tenant_id": "t-alpha",
                                   "status": "offline", "firmware": "1.0.0"}, sequence=1)
    # Locally (the emulator's endpoint, no secret configured): dev mode, as the lifespan sees it.
    server = DashboardServer(hub, None, secret=DEV_SECRET, dev_mode=dev_mode())
    base = await server.start(port=0)
    consumer = SqsConsumer(aws, queue_url, dashboard_handler(hub),
                           settings=SqsSettings(wait_time_seconds=1, drain_seconds=2))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        async with anyio.create_task_group() as tg, \
                fan_out_consumer(aws, await stream_arn(aws, "dashboard-readings"),
                                 name="browser-task") as fan_out:
            await tg.start(consumer.run)
            async with anyio.create_task_group() as readers:
                await readers.start(KinesisFanOut(aws, fan_out,
                                                  on_records=hub.apply_readings).run)
                await readers.start(hub.run_pushes)
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
                        alpha = issue_token("t-alpha", secret=DEV_SECRET)
                        await page_a.goto(f"{base}/?token={alpha}")
                        beta = issue_token("t-beta", secret=DEV_SECRET)
                        await page_b.goto(f"{base}/?token={beta}")
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
                        # locators, not wait_for_function: the page's CSP refuses eval
                        await expect(page_a.locator("#count-alarms")).to_have_text(
                            "1", timeout=10_000)
                        await page_a.screenshot(path=str(ARTIFACTS / "dashboard-tenant-alpha.png"))

                        # readings of alpha's device reach its row: value, age, sparkline
                        row = "#device-dev-alpha-1"
                        for seq, temperature in ((1, 20.5), (2, 23.25)):
                            await kinesis.put_records(StreamName="dashboard-readings", Records=[
                                reading("dev-alpha-1", "t-alpha", seq, temperature)])
                            await expect(page_a.locator(f"{row} td.readings")).to_contain_text(
                                f"temperature {temperature}", timeout=10_000)
                        await page_a.wait_for_selector(f"{row} svg.spark[data-points='2']",
                                                       timeout=10_000)
                        # temperature 20.5 then 23.25: a rising line across the cell
                        assert await page_a.get_attribute(f"{row} svg.spark polyline",
                                                          "points") == "0.0,20.0 90.0,2.0"
                        age = await page_a.text_content(f"{row} td.age")
                        assert age is not None
                        assert age.endswith("s ago")
                        # the fleet charts: readings per second and online devices
                        await expect(page_a.locator("#online-now")).to_have_text(
                            "1", timeout=10_000)
                        await expect(page_a.locator("#chart-rate polyline")).to_have_count(1)
                        await expect(page_a.locator("#chart-online polyline")).to_have_count(1)
                        online = await page_a.get_attribute("#chart-online polyline", "points")
                        assert online is not None
                        assert online.endswith(",2.0")  # 1 online of 1: the top, from zero
                        # the detail panel: readable fields, not JSON
                        await page_a.click(row)
                        await page_a.wait_for_selector("#detail dd[data-field='temperature']",
                                                       timeout=10_000)
                        assert await page_a.text_content(
                            "#detail dd[data-field='temperature']") == "23.25"
                        assert await page_a.query_selector("#detail pre") is None
                        detail = await page_a.text_content("#detail")
                        assert detail is not None
                        assert "{" not in detail
                        await page_a.screenshot(path=str(ARTIFACTS / "dashboard-readings.png"),
                                                full_page=True)

                        # paging (25 a page, 61 devices) and search, served by the task
                        await page_a.wait_for_selector("#page-info[data-range='1-25/61']",
                                                       timeout=10_000)
                        await page_a.click("#next")
                        await page_a.wait_for_selector("#page-info[data-range='26-50/61']",
                                                       timeout=10_000)
                        assert await page_a.query_selector("#device-dev-alpha-s024") is not None
                        await page_a.fill("#search", "S05")
                        await page_a.wait_for_selector("#page-info[data-range='1-10/10']",
                                                       timeout=10_000)
                        assert await page_a.query_selector(row) is None
                        await page_a.fill("#search", "alpha-1")
                        await page_a.wait_for_selector("#page-info[data-range='1-1/1']",
                                                       timeout=10_000)
                        await kinesis.put_records(StreamName="dashboard-readings", Records=[
                            reading("dev-alpha-1", "t-alpha", 3, 30.0)])
                        await expect(page_a.locator(f"{row} td.readings")).to_contain_text(
                            "temperature 30", timeout=10_000)
                        await page_a.screenshot(path=str(ARTIFACTS / "dashboard-search.png"))

                        # tenant beta gets its own device's update, and never alpha's
                        await sqs.send_message(QueueUrl=queue_url, MessageBody=bus_event(
                            DeviceConnected(device=device("dev-beta-1", "t-beta")), 1))
                        await page_b.wait_for_selector("#device-dev-beta-1", timeout=10_000)
                        await kinesis.put_records(StreamName="dashboard-readings", Records=[
                            reading("dev-beta-1", "t-beta", 1, 11.0),
                            # an alpha device id claimed by beta: not beta's to see
                            reading("dev-alpha-1", "t-beta", 9, 99.0)])
                        await expect(page_b.locator("#device-dev-beta-1 td.readings")
                                     ).to_contain_text("temperature 11", timeout=10_000)
                        assert await page_b.query_selector("#device-dev-alpha-1") is None
                        assert await page_b.query_selector("#device-dev-alpha-s000") is None
                        beta_page = await page_b.request.get(
                            f"{base}/api/view/devices?q=alpha&token={beta}")
                        assert (await beta_page.json())["matched"] == 0
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
                readers.cancel_scope.cancel()
            assert latency < 5.0
            consumer.stop(drain_seconds=1)
    finally:
        await server.stop()
