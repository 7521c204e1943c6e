"""The live dashboard: a web page fed by Server-Sent Events, standing in for AppSync
subscriptions. Run as `services.devices.dashboard:worker`; `fleetline devices url` prints a
viewer link (the page URL with a tenant token).

- The server keeps an in-memory view per tenant (`FleetView`): every device's latest snapshot
  and the counts, seeded from the read model at start and then kept current by the device
  events of the task's own feed queue. An event is applied only when its per-device
  `sequence` is newer, so repeats and late events change nothing.
- Fan-out (issue 4: every viewer sees every update, whichever task serves it): the bus rule
  DashboardRule sends every `fleetline.devices` event to the SNS topic DashboardFeedTopic,
  and each task owns one queue subscribed to it (`task_queue`): created at start with the
  name FLEETLINE_DASHBOARD_QUEUE_PREFIX + a random task id, SSE-SQS, 5-minute retention, a
  policy admitting only the topic, raw delivery (bodies are the EventBridge event, as a
  rule-to-queue target delivers it); unsubscribed and deleted on stop. It has no DLQ by
  design: the view is disposable and re-seeded from the read model. A task re-tags its
  queue with a heartbeat every minute, and removes other tasks' feeds whose queue is gone
  or whose heartbeat is stale (`stale_feeds`, pure), at start and every 5 minutes: the
  clean-up of tasks that died without stopping. `DashboardFeed` is the worker's source; the
  lifespan attaches the queue before seeding, so no event falls between the two.
  docs/devices.md ("Dashboard fan-out") has the reasons and the measured latency.
- A viewer authenticates with a token (`services.devices._auth`): the tenant comes from the
  token alone, and a viewer's stream only ever carries that tenant's devices (`Hub` keeps
  subscribers per tenant and publishes an update to that tenant's subscribers only).
- `GET /events?token=`: SSE. First a `snapshot` (counts, devices, open alarms), then one
  `update` per applied event, each with the counts after it. A viewer too slow to keep up
  (its buffer full) is disconnected; EventSource reconnects and gets a fresh snapshot.
- `GET /api/counts`, `/api/devices?status=`, `/api/devices/{id}`: the query API (read
  model), with the token as `Authorization: Bearer` or `?token=`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import structlog
from aiohttp import web
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import BaseModel

from services.devices._auth import InvalidTokenError, issue_token, verify_token
from services.devices.events import DeviceEvent
from services.devices.query import DeviceQueries, DeviceRecord, InvalidQueryError
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import BatchHandler, HandlerContext, SqsConsumer, SqsSettings, batch_handler
from shared.errors import AwsRequestError, ConfigurationError, FleetlineError
from shared.events import TypedEvent, load_registered_events, registry
from shared.hosts import Consumer, Worker

__all__ = [
    "DashboardFeed",
    "DashboardFeedError",
    "DashboardServer",
    "FeedConfig",
    "FeedSubscription",
    "FleetView",
    "Hub",
    "TaskQueue",
    "stale_feeds",
    "task_queue",
    "worker",
]

log = structlog.get_logger("services.devices.dashboard")

STATIC: Final = Path(__file__).parent / "static"
SNAPSHOT_DEVICES: Final = 500
SUBSCRIBER_BUFFER: Final = 1_000
KEEPALIVE_SECONDS: Final = 15.0


# --------------------------------------------------------------------------- the view (pure)


@dataclass
class FleetView:
    """One tenant's devices as the dashboard shows them. No I/O."""

    tenant_id: str
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)

    def apply(self, device: Mapping[str, Any], *, sequence: int) -> bool:
        """Keep `device` (a snapshot dict) if `sequence` is newer than the one held."""
        device_id = str(device["device_id"])
        if sequence <= self.sequences.get(device_id, -1):
            return False
        self.sequences[device_id] = sequence
        self.devices[device_id] = dict(device)
        return True

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.devices), "online": 0, "offline": 0, "unknown": 0,
               "with_alarms": 0}
        for device in self.devices.values():
            status = str(device.get("status", "unknown"))
            out[status] = out.get(status, 0) + 1
            if device.get("alarms"):
                out["with_alarms"] += 1
        return out

    def alarms(self) -> list[dict[str, Any]]:
        return [
            {"device_id": d["device_id"], "metric": metric, "severity": severity}
            for d in self.devices.values()
            for metric, severity in sorted((d.get("alarms") or {}).items())
        ]

    def snapshot(self, *, limit: int = SNAPSHOT_DEVICES) -> dict[str, Any]:
        recent = sorted(self.devices.values(), key=lambda d: -float(d.get("last_seen") or 0))
        return {"tenant_id": self.tenant_id, "counts": self.counts(),
                "devices": recent[:limit], "alarms": self.alarms()}


class Hub:
    """Views per tenant and the viewers subscribed to each. Publishes an update only to the
    subscribers of the event's tenant."""

    def __init__(self) -> None:
        self.views: dict[str, FleetView] = {}
        self._subscribers: dict[str, set[MemoryObjectSendStream[str]]] = {}
        self.applied = 0
        self.ignored = 0
        self.dropped_viewers = 0

    def view(self, tenant_id: str) -> FleetView:
        found = self.views.get(tenant_id)
        if found is None:
            found = self.views[tenant_id] = FleetView(tenant_id)
        return found

    def seed(self, records: Iterable[DeviceRecord]) -> None:
        for record in records:
            data = record.model_dump(mode="json")
            self.view(record.tenant_id).apply(data, sequence=record.event_seq)

    def apply_event(self, event: DeviceEvent, *, event_type: str, sequence: int,
                    event_time: float, event_id: str) -> dict[str, Any] | None:
        """Apply one device event; the update message sent to its tenant's viewers, or None
        when it was not newer."""
        device = event.device.model_dump(mode="json")
        view = self.view(event.device.tenant_id)
        if not view.apply(device, sequence=sequence):
            self.ignored += 1
            return None
        self.applied += 1
        update = {
            "type": event_type,
            "event_id": event_id,
            "event_time": event_time,
            "sent_at": time.time(),
            "device": device,
            "counts": view.counts(),
            "alarms": view.alarms() if event_type in ("ThresholdBreached",
                                                      "ThresholdCleared") else None,
        }
        self.publish(event.device.tenant_id, "update", update)
        return update

    def publish(self, tenant_id: str, kind: str, payload: Mapping[str, Any]) -> None:
        subscribers = self._subscribers.get(tenant_id)
        if not subscribers:
            return
        frame = f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
        for stream in list(subscribers):
            try:
                stream.send_nowait(frame)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                # Too slow (or gone): disconnect; EventSource reconnects with a fresh snapshot.
                subscribers.discard(stream)
                stream.close()
                self.dropped_viewers += 1

    def subscribe(self, tenant_id: str) -> Any:
        send, receive = anyio.create_memory_object_stream[str](SUBSCRIBER_BUFFER)
        self._subscribers.setdefault(tenant_id, set()).add(send)
        return send, receive

    def unsubscribe(self, tenant_id: str, send: MemoryObjectSendStream[str]) -> None:
        self._subscribers.get(tenant_id, set()).discard(send)
        send.close()

    def viewers(self, tenant_id: str | None = None) -> int:
        if tenant_id is not None:
            return len(self._subscribers.get(tenant_id, ()))
        return sum(len(s) for s in self._subscribers.values())


def dashboard_handler(hub: Hub) -> BatchHandler:
    """BatchHandler for the task's feed queue: device events into the hub; other types
    ignored."""

    async def handle(event: TypedEvent[BaseModel], ctx: HandlerContext) -> None:
        data = event.data
        if not isinstance(data, DeviceEvent):
            return
        envelope = event.envelope
        hub.apply_event(data, event_type=envelope.type, sequence=envelope.sequence,
                        event_time=envelope.time.timestamp(), event_id=envelope.id)

    return batch_handler(handle, decode=lambda m: registry.decode(m.body))


# --------------------------------------------------------------------------- the task's feed


QUEUE_PREFIX_ENV: Final = "FLEETLINE_DASHBOARD_QUEUE_PREFIX"
TASK_TAG: Final = "fleetline:dashboard-task"
CREATED_TAG: Final = "fleetline:created-at"
HEARTBEAT_TAG: Final = "fleetline:heartbeat"


class DashboardFeedError(FleetlineError):
    """The task's feed queue was used outside its lifecycle (opened before it was attached,
    or attached twice). A programming error, not a condition to retry."""


@dataclass(frozen=True, kw_only=True)
class FeedConfig:
    """Where this task's own queue goes and how long things last.

    - `topic_arn`: the feed topic (stack output DashboardFeedTopic).
    - `queue_prefix`: names of every task's queue start with it
      (FLEETLINE_DASHBOARD_QUEUE_PREFIX; the task role may only touch such queues).
    - `task_id`: unique per task; the queue is `queue_prefix + task_id`.
    - `retention_seconds` 300: the view is re-seeded from the read model at start, so older
      events are worth nothing; SQS's minimum is 60.
    - `heartbeat_seconds` 60: how often the task re-tags its queue as alive.
    - `stale_after_seconds` 300: another task's queue whose heartbeat is older is left over
      by a task that died without cleaning up; it is unsubscribed and deleted. Also how often
      a task looks for such queues.

    Raises ValueError naming the field when a value is out of range.
    """

    topic_arn: str
    queue_prefix: str
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    retention_seconds: int = 300
    heartbeat_seconds: float = 60.0
    stale_after_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not self.topic_arn.startswith("arn:") or self.topic_arn.count(":") < 5:
            raise ValueError(f"topic_arn must be a topic ARN, got {self.topic_arn!r}")
        if not self.queue_prefix:
            raise ValueError("queue_prefix must not be empty")
        if len(self.queue_name) > 80:
            raise ValueError(f"queue_prefix + task_id must be at most 80 characters, got "
                             f"{self.queue_name!r}")
        if not 60 <= self.retention_seconds <= 1_209_600:
            raise ValueError(f"retention_seconds must be 60..1209600, got "
                             f"{self.retention_seconds!r}")
        if self.heartbeat_seconds <= 0:
            raise ValueError(f"heartbeat_seconds must be positive, got {self.heartbeat_seconds!r}")
        if self.stale_after_seconds <= self.heartbeat_seconds:
            raise ValueError("stale_after_seconds must be longer than heartbeat_seconds, got "
                             f"{self.stale_after_seconds!r}")

    @classmethod
    def from_environ(cls, resources: Resources,
                     environ: Mapping[str, str] | None = None) -> FeedConfig:
        """From the stack output DashboardFeedTopic and FLEETLINE_DASHBOARD_QUEUE_PREFIX.

        Raises ConfigurationError naming the missing variable.
        """
        env = os.environ if environ is None else environ
        prefix = env.get(QUEUE_PREFIX_ENV, "")
        if not prefix:
            raise ConfigurationError(f"{QUEUE_PREFIX_ENV} is not set: the template passes the "
                                     "prefix of the dashboard tasks' queues")
        return cls(topic_arn=resources.get("DashboardFeedTopic"), queue_prefix=prefix)

    @property
    def queue_name(self) -> str:
        return f"{self.queue_prefix}{self.task_id}"

    @property
    def queue_arn(self) -> str:
        """Same partition, Region and account as the topic."""
        _, partition, _, region, account, *_ = self.topic_arn.split(":")
        return f"arn:{partition}:sqs:{region}:{account}:{self.queue_name}"


@dataclass(frozen=True, kw_only=True)
class FeedSubscription:
    """One subscription of the feed topic as the cleanup sees it."""

    subscription_arn: str
    queue_name: str
    queue_exists: bool
    heartbeat: float | None  # the queue's heartbeat tag; None when missing or unreadable


def stale_feeds(found: Iterable[FeedSubscription], *, config: FeedConfig,
                now: float) -> list[FeedSubscription]:
    """The feeds another task left behind (pure): named with the prefix, not this task's, and
    either subscribed to a queue that is gone, or whose heartbeat is older than
    `stale_after_seconds`. A queue without a heartbeat tag is not one we created (ours are
    created with it), so it is left alone."""
    stale = []
    for feed in found:
        if not feed.queue_name.startswith(config.queue_prefix):
            continue
        if feed.queue_name == config.queue_name:
            continue
        silent = feed.heartbeat is not None and now - feed.heartbeat > config.stale_after_seconds
        if not feed.queue_exists or silent:
            stale.append(feed)
    return stale


def _queue_policy(config: FeedConfig) -> str:
    """Only the feed topic may send to the task's queue."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "FeedTopicDelivers",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": config.queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": config.topic_arn}},
        }],
    }, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class TaskQueue:
    """This task's queue, subscribed to the feed topic."""

    url: str
    arn: str
    subscription_arn: str
    config: FeedConfig


async def _create_and_subscribe(aws: AwsClients, config: FeedConfig) -> TaskQueue:
    sqs = await aws.client("sqs")
    sns = await aws.client("sns")
    now = str(int(time.time()))
    with aws_errors():
        created = await sqs.create_queue(
            QueueName=config.queue_name,
            Attributes={
                "SqsManagedSseEnabled": "true",
                "MessageRetentionPeriod": str(config.retention_seconds),
                "Policy": _queue_policy(config),
            },
            tags={TASK_TAG: config.task_id, CREATED_TAG: now, HEARTBEAT_TAG: now},
        )
    url = str(created["QueueUrl"])
    try:
        with aws_errors():
            subscribed = await sns.subscribe(
                TopicArn=config.topic_arn, Protocol="sqs", Endpoint=config.queue_arn,
                Attributes={"RawMessageDelivery": "true"}, ReturnSubscriptionArn=True,
            )
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(FleetlineError), aws_errors():
            await sqs.delete_queue(QueueUrl=url)
        raise
    return TaskQueue(url=url, arn=config.queue_arn,
                     subscription_arn=str(subscribed["SubscriptionArn"]), config=config)


async def _remove(aws: AwsClients, *, subscription_arn: str, queue_url: str | None,
                  reason: str) -> None:
    """Unsubscribe first (so SNS stops delivering), then delete the queue. Best effort: what
    is already gone (another task cleaned up first) is fine; anything else is logged."""
    sns = await aws.client("sns")
    sqs = await aws.client("sqs")
    try:
        with aws_errors():
            await sns.unsubscribe(SubscriptionArn=subscription_arn)
    except FleetlineError as exc:
        if getattr(exc, "code", None) != "NotFound":
            log.warning("feed unsubscribe failed", subscription=subscription_arn,
                        reason=reason, error=str(exc))
    if queue_url is None:
        return
    try:
        with aws_errors():
            await sqs.delete_queue(QueueUrl=queue_url)
    except FleetlineError as exc:
        if getattr(exc, "code", None) not in {"AWS.SimpleQueueService.NonExistentQueue",
                                              "QueueDoesNotExist"}:
            log.warning("feed queue delete failed", queue=queue_url, reason=reason,
                        error=str(exc))


async def _feed_subscriptions(aws: AwsClients,
                              config: FeedConfig) -> list[tuple[FeedSubscription, str | None]]:
    """The topic's SQS subscriptions with the prefix, each with its queue's URL (None when
    the queue is gone)."""
    sns = await aws.client("sns")
    sqs = await aws.client("sqs")
    found: list[tuple[FeedSubscription, str | None]] = []
    token: str | None = None
    while True:
        with aws_errors():
            page = await sns.list_subscriptions_by_topic(
                TopicArn=config.topic_arn, **({"NextToken": token} if token else {}))
        for sub in page.get("Subscriptions", []):
            name = str(sub.get("Endpoint", "")).rsplit(":", 1)[-1]
            if sub.get("Protocol") != "sqs" or not name.startswith(config.queue_prefix):
                continue
            arn = str(sub["SubscriptionArn"])
            if name == config.queue_name or arn == "PendingConfirmation":
                continue
            url: str | None = None
            heartbeat: float | None = None
            try:
                with aws_errors():
                    url = str((await sqs.get_queue_url(QueueName=name))["QueueUrl"])
                    tags = (await sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
                heartbeat = float(tags[HEARTBEAT_TAG]) if HEARTBEAT_TAG in tags else None
            except AwsRequestError as exc:
                if exc.code not in {"AWS.SimpleQueueService.NonExistentQueue",
                                    "QueueDoesNotExist"}:
                    raise
                url = None
            except ValueError:  # a heartbeat tag that is not a number: not ours, leave it
                heartbeat = None
            found.append((FeedSubscription(subscription_arn=arn, queue_name=name,
                                           queue_exists=url is not None, heartbeat=heartbeat),
                          url))
        token = page.get("NextToken")
        if not token:
            return found


async def _sweep(aws: AwsClients, config: FeedConfig) -> int:
    """Remove the feeds other tasks left behind; how many. Best effort (logged)."""
    try:
        found = await _feed_subscriptions(aws, config)
    except FleetlineError as exc:
        log.warning("feed cleanup skipped", error=str(exc))
        return 0
    urls = {feed.subscription_arn: url for feed, url in found}
    stale = stale_feeds([feed for feed, _ in found], config=config, now=time.time())
    for feed in stale:
        reason = "queue gone" if not feed.queue_exists else "heartbeat stale"
        log.info("removing a feed left behind", queue=feed.queue_name, reason=reason)
        await _remove(aws, subscription_arn=feed.subscription_arn,
                      queue_url=urls[feed.subscription_arn], reason=reason)
    return len(stale)


async def _keep_alive(aws: AwsClients, queue: TaskQueue) -> None:
    """Re-tag the queue as alive every `heartbeat_seconds`; look for left-over feeds of dead
    tasks at start and every `stale_after_seconds`."""
    config = queue.config
    sqs = await aws.client("sqs")
    await _sweep(aws, config)
    last_sweep = time.monotonic()
    while True:
        await anyio.sleep(config.heartbeat_seconds)
        try:
            with aws_errors():
                await sqs.tag_queue(QueueUrl=queue.url,
                                    Tags={HEARTBEAT_TAG: str(int(time.time()))})
        except FleetlineError as exc:  # another try next beat; stale only after several
            log.warning("feed heartbeat failed", queue=queue.url, error=str(exc))
        if time.monotonic() - last_sweep >= config.stale_after_seconds:
            await _sweep(aws, config)
            last_sweep = time.monotonic()


@contextlib.asynccontextmanager
async def task_queue(aws: AwsClients, config: FeedConfig) -> AsyncIterator[TaskQueue]:
    """This task's own queue on the feed topic, for the duration of the block.

    On entry: create the queue (SSE-SQS, `retention_seconds`, a policy that admits only the
    topic, tags naming the task, its creation and a heartbeat) and subscribe it with raw
    delivery (the body is the EventBridge event, as a rule-to-queue target delivers it). A
    task group owned by the block then keeps the heartbeat and removes feeds left behind by
    dead tasks. On exit (shielded from cancellation): stop those, unsubscribe, delete the
    queue; best effort, failures logged, since a left-over feed is removed by the next task's
    sweep once its heartbeat is stale.

    Raises AwsRequestError / AwsUnavailableError when the queue cannot be created or
    subscribed (nothing is left behind then).
    """
    queue = await _create_and_subscribe(aws, config)
    log.info("dashboard feed attached", queue=config.queue_name, topic=config.topic_arn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_alive, aws, queue)
            try:
                yield queue
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _remove(aws, subscription_arn=queue.subscription_arn, queue_url=queue.url,
                          reason="task stopping")
            log.info("dashboard feed detached", queue=config.queue_name)


class _FeedState(enum.Enum):
    UNATTACHED = "unattached"
    ATTACHED = "attached"
    DETACHED = "detached"


class DashboardFeed:
    """The dashboard worker's `Source`: the consumer of this task's own queue.

    The lifespan attaches the queue (`attach`, around seeding and serving) before the host
    opens the source, and the host's consumer drains before the lifespan detaches it, so the
    queue outlives its consumer. Opening before `attach`, or attaching twice, raises
    DashboardFeedError.
    """

    def __init__(self, settings: SqsSettings | None = None) -> None:
        self.settings = settings or SqsSettings()
        self._queue: TaskQueue | None = None
        self._state = _FeedState.UNATTACHED

    @contextlib.asynccontextmanager
    async def attach(self, aws: AwsClients, config: FeedConfig) -> AsyncIterator[TaskQueue]:
        """`task_queue(aws, config)`, remembered for `open`. Raises DashboardFeedError when
        already attached (once) before."""
        if self._state is not _FeedState.UNATTACHED:
            raise DashboardFeedError(f"the dashboard feed is {self._state.value}; a feed is "
                                     "attached once (make a new DashboardFeed)")
        async with task_queue(aws, config) as queue:
            self._queue, self._state = queue, _FeedState.ATTACHED
            try:
                yield queue
            finally:
                self._queue, self._state = None, _FeedState.DETACHED

    async def open(self, aws: AwsClients, resources: Resources, handler: BatchHandler, *,
                   name: str, drain_seconds: float) -> Consumer:
        if self._queue is None:
            raise DashboardFeedError(f"the dashboard feed is {self._state.value}: open it "
                                     "inside the dashboard lifespan, which attaches it")
        settings = dataclasses.replace(self.settings, drain_seconds=drain_seconds)
        return SqsConsumer(aws, self._queue.url, handler, settings=settings)


# --------------------------------------------------------------------------- HTTP


def dev_mode() -> bool:
    """No dashboard secret configured and an endpoint override (the emulator): local use."""
    return not os.environ.get("FLEETLINE_DASHBOARD_SECRET") and bool(
        os.environ.get("AWS_ENDPOINT_URL"))


def _tenant(request: web.Request) -> str:
    token = request.query.get("token", "")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = header[len("Bearer "):]
    try:
        return verify_token(token)
    except InvalidTokenError as exc:
        raise web.HTTPUnauthorized(text=json.dumps({"error": str(exc)}),
                                   content_type="application/json") from None


class DashboardServer:
    """The aiohttp application: page, SSE stream, query API."""

    def __init__(self, hub: Hub, queries: DeviceQueries | None) -> None:
        self.hub = hub
        self.queries = queries
        self.app = web.Application()
        self.app.add_routes([
            web.get("/", self.page),
            web.get("/healthz", self.health),
            web.get("/events", self.events),
            web.get("/api/counts", self.api_counts),
            web.get("/api/devices", self.api_devices),
            web.get("/api/devices/{device_id}", self.api_device),
        ])
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Listen; returns the base URL (port 0 picks a free one)."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def page(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token"):
            return web.FileResponse(STATIC / "dashboard.html")
        if not dev_mode():
            raise web.HTTPUnauthorized(
                text="a viewer link carries a token: run `fleetline devices url --tenant <id>`")
        # Local development only (no secret configured, an emulator endpoint): pick a tenant.
        tenants = sorted(set(self.hub.views) | {f"t-{i:03d}" for i in range(1, 4)})
        links = "".join(
            f'<li><a href="/?token={issue_token(t)}">{t}</a> '
            f"({len(self.hub.view(t).devices)} devices)</li>" for t in tenants
        )
        return web.Response(content_type="text/html", text=(
            "<!doctype html><title>fleetline dashboard</title><link rel='icon' href='data:,'>"
            "<body style='font:15px system-ui;margin:2rem'>"
            "<h1>fleetline dashboard (local)</h1><p>View the fleet as tenant:</p>"
            f"<ul>{links}</ul><p style='color:#777'>Local development only: with "
            "FLEETLINE_DASHBOARD_SECRET set, viewers need a link from "
            "<code>fleetline devices url</code>.</p></body>"))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "viewers": self.hub.viewers(),
                                  "applied": self.hub.applied})

    async def events(self, request: web.Request) -> web.StreamResponse:
        tenant_id = _tenant(request)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        send, receive = self.hub.subscribe(tenant_id)
        try:
            snapshot = self.hub.view(tenant_id).snapshot()
            frame = f"event: snapshot\ndata: {json.dumps(snapshot, separators=(',', ':'))}\n\n"
            await response.write(frame.encode())
            async with receive:
                while True:
                    with anyio.move_on_after(KEEPALIVE_SECONDS) as scope:
                        frame = await receive.receive()
                    if scope.cancelled_caught:
                        frame = ": keep-alive\n\n"
                    await response.write(frame.encode())
        except (anyio.EndOfStream, anyio.ClosedResourceError, ConnectionResetError):
            pass
        finally:
            self.hub.unsubscribe(tenant_id, send)
        return response

    def _require_queries(self) -> DeviceQueries:
        if self.queries is None:
            raise web.HTTPServiceUnavailable(text="no read model configured")
        return self.queries

    async def api_counts(self, request: web.Request) -> web.Response:
        tenant_id = _tenant(request)
        counts = await self._require_queries().fleet_counts(tenant_id)
        return web.json_response(counts.model_dump(mode="json"))

    async def api_devices(self, request: web.Request) -> web.Response:
        tenant_id = _tenant(request)
        try:
            page = await self._require_queries().devices_by_status(
                tenant_id, request.query.get("status", "online"),
                limit=int(request.query.get("limit", "50")), cursor=request.query.get("cursor"),
            )
        except (InvalidQueryError, ValueError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}),
                                     content_type="application/json") from None
        return web.json_response(page.model_dump(mode="json"))

    async def api_device(self, request: web.Request) -> web.Response:
        tenant_id = _tenant(request)
        record = await self._require_queries().device(tenant_id, request.match_info["device_id"])
        if record is None:  # also when the device belongs to another tenant
            raise web.HTTPNotFound(text=json.dumps({"error": "no such device"}),
                                   content_type="application/json")
        return web.json_response(record.model_dump(mode="json"))


@contextlib.asynccontextmanager
async def dashboard_lifespan(aws: AwsClients, resources: Resources, *,
                             feed: DashboardFeed) -> AsyncIterator[BatchHandler]:
    """Attach this task's queue to the feed topic, then seed the view from the read model (so
    no event between the two is lost: it waits in the queue, and the newest sequence wins),
    serve HTTP, hand the queue handler to the host; after the host's drain, stop serving and
    detach (unsubscribe, delete the queue). FLEETLINE_DASHBOARD_HOST / FLEETLINE_DASHBOARD_PORT
    (default 127.0.0.1:8080; the task definition maps 8080).

    Raises ConfigurationError when DashboardFeedTopic or FLEETLINE_DASHBOARD_QUEUE_PREFIX is
    missing.
    """
    load_registered_events()
    if not os.environ.get("FLEETLINE_DASHBOARD_SECRET") and not dev_mode():
        log.warning("FLEETLINE_DASHBOARD_SECRET is not set: viewer tokens use the development "
                    "secret; set it (from Secrets Manager) outside local development")
    host = os.environ.get("FLEETLINE_DASHBOARD_HOST", "127.0.0.1")
    port = int(os.environ.get("FLEETLINE_DASHBOARD_PORT", "8080"))
    config = FeedConfig.from_environ(resources)
    queries = DeviceQueries(aws, resources.get("DeviceReadModelTable"))
    async with feed.attach(aws, config):
        hub = Hub()
        hub.seed(await queries.all_devices())
        server = DashboardServer(hub, queries)
        url = await server.start(host, port)
        log.info("dashboard listening", url=url, queue=config.queue_name,
                 devices=sum(len(v.devices) for v in hub.views.values()),
                 hint="`fleetline devices url --tenant t-001` prints a viewer link")
        try:
            yield dashboard_handler(hub)
        finally:
            with anyio.CancelScope(shield=True):
                await server.stop()


def worker() -> Worker:
    """The ECS task (`python -m shared.hosts.worker services.devices.dashboard:worker`)."""
    wait = int(os.environ.get("FLEETLINE_WAIT_TIME_SECONDS", "20"))
    feed = DashboardFeed(SqsSettings(wait_time_seconds=wait))
    return Worker(
        name="dashboard",
        source=feed,
        lifespan=functools.partial(dashboard_lifespan, feed=feed),
    )
