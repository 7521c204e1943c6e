"""The live dashboard: a web page fed by Server-Sent Events, standing in for AppSync
subscriptions. Run as `services.devices.dashboard:worker`; `fleetline devices url` prints a
viewer link (the page URL with a tenant token).

- The server keeps an in-memory view per tenant (`FleetView`): every device's latest snapshot
  and the counts, seeded from the read model at start and then kept current by the device
  events of the task's own feed queue. An event is applied only when its per-device
  `sequence` is newer, so repeats and late events change nothing.
- Fan-out (issue 4: every viewer sees every update, whichever task serves it): the bus rule
  DashboardRule sends every `fleetline.devices` event to the SNS topic DashboardFeedTopic,
  and each task consumes a queue of its own subscribed to it. That queue, its heartbeat, the
  clean-up of feeds left by dead tasks and `DashboardFeed` (the worker's source) live in
  `services.devices._dashboard_feed`; their public names are re-exported here. The lifespan
  attaches the queue before seeding, so no event falls between the two.
  docs/devices.md ("Dashboard fan-out") has the reasons and the measured latency.
- A viewer authenticates with a token (`services.devices._auth`; `issue_token` is
  re-exported here for the CLI's and benchmarks' viewer links): the tenant comes from the
  token alone, and a viewer's stream only ever carries that tenant's devices (`Hub` keeps
  subscribers per tenant and publishes an update to that tenant's subscribers only).
- Readings (issue 14): each task reads the telemetry stream itself through an enhanced
  fan-out consumer of its own (`shared.consumers.kinesis.KinesisFanOut`; readings are not on
  the bus), keeps per device the latest reading and a sparkline ring
  (`services.devices._dashboard_readings`), and sends each viewer only the devices on its
  screen, each at most once a second, plus the fleet charts once a second.
  docs/devices.md ("Readings on the dashboard") has the reasons, the cost and the figures.
- `GET /events?token=`: SSE. First a `snapshot` (counts, open alarms, firmware, rollouts
  and the viewer's id), then one `update` per applied event, each with the counts after it,
  `readings` for the watched devices and `fleet` once a second. A viewer too slow to keep
  up (its buffer full) is disconnected; EventSource reconnects and gets a fresh snapshot.
- `GET /api/view/devices?q=&status=&cursor=&limit=`: a page of the tenant's devices from
  the task's view, with their readings; `POST /api/watch` `{viewer, devices}`: the devices
  on that viewer's screen.
- `GET /api/counts`, `/api/devices?status=`, `/api/devices/{id}`: the query API (read
  model), with the token as `Authorization: Bearer` or `?token=`.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import structlog
from aiohttp import web
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import BaseModel

from services.devices._auth import (
    InvalidTokenError,
    dashboard_secret,
    issue_token,
    verify_token,
)
from services.devices._dashboard_feed import (
    DashboardFeed,
    DashboardFeedError,
    FeedConfig,
    FeedSubscription,
    TaskQueue,
    stale_feeds,
    task_queue,
)
from services.devices._dashboard_readings import (
    SERIES_SECONDS,
    ReadingsView,
    Viewer,
    fleet_frame,
    readings_frame,
)
from services.devices.events import DeviceEvent
from services.devices.query import DeviceQueries, DeviceRecord, InvalidQueryError
from shared.aws import AwsClients, aws_errors
from shared.config import Resources, resource_env_name
from shared.consumers import BatchHandler, HandlerContext, Message, SqsSettings, batch_handler
from shared.consumers.kinesis import (
    KinesisFanOut,
    deregister_fan_out_consumer,
    fan_out_consumer,
    list_fan_out_consumers,
    stream_arn,
)
from shared.errors import AwsRequestError, FleetlineError
from shared.events import TypedEvent, load_registered_events, registry
from shared.hosts import Worker

__all__ = [
    "DashboardFeed",
    "DashboardFeedError",
    "DashboardServer",
    "FeedConfig",
    "FeedSubscription",
    "FleetView",
    "Hub",
    "TaskQueue",
    "dashboard_handler",
    "issue_token",
    "rollout_for_tenant",
    "stale_feeds",
    "task_queue",
    "worker",
]

log = structlog.get_logger("services.devices.dashboard")

STATIC: Final = Path(__file__).parent / "static"
SNAPSHOT_DEVICES: Final = 500
FIRMWARE_SOURCE: Final = "fleetline.firmware"  # rollout events on the feed (DashboardFirmwareRule)
SUBSCRIBER_BUFFER: Final = 1_000
KEEPALIVE_SECONDS: Final = 15.0
FLUSH_SECONDS: Final = 0.1  # how often watched readings are sent (each device <= 1/s)
FLEET_SECONDS: Final = 1.0  # how often the fleet charts get a point
PAGE_LIMIT: Final = 50
MAX_PAGE_LIMIT: Final = 200
STATUSES: Final = frozenset({"online", "offline", "unknown"})


# --------------------------------------------------------------------------- the view (pure)


@dataclass
class FleetView:
    """One tenant's devices as the dashboard shows them. No I/O."""

    tenant_id: str
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    _sorted_ids: list[str] | None = field(default=None, repr=False)
    version: int = 0  # counts every applied change (the fleet charts' counts are cached by it)

    def apply(self, device: Mapping[str, Any], *, sequence: int) -> bool:
        """Keep `device` (a snapshot dict) if `sequence` is newer than the one held."""
        device_id = str(device["device_id"])
        if sequence <= self.sequences.get(device_id, -1):
            return False
        if device_id not in self.devices:
            self._sorted_ids = None  # a new device: the sorted ids are made again when asked
        self.sequences[device_id] = sequence
        self.devices[device_id] = dict(device)
        self.version += 1
        return True

    def page(self, *, search: str = "", status: str | None = None, cursor: str | None = None,
             limit: int = PAGE_LIMIT) -> tuple[list[dict[str, Any]], str | None, int]:
        """Devices by id after `cursor` (an id; exclusive) whose id contains `search` (case
        insensitive) and whose status is `status` (any when None): up to `limit` of them,
        the cursor of the next page (None at the end) and how many match in all.

        The sorted ids are kept between calls (made again after a new device: O(n log n)),
        a page is one bisect and a scan (O(n) with a search or a filter: docs/devices.md
        has the times at 10,000 and 100,000 devices)."""
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self.devices)
        ids = self._sorted_ids
        needle = search.lower()
        start = bisect.bisect_right(ids, cursor) if cursor else 0
        matched_before = 0
        if needle or status:
            def matches(device_id: str) -> bool:
                if needle and needle not in device_id.lower():
                    return False
                return status is None or self.devices[device_id].get("status") == status
            matched_before = sum(1 for d in ids[:start] if matches(d))
            after = [d for d in ids[start:] if matches(d)]
        else:
            matched_before = start
            after = ids[start:]
        chosen = after[:limit]
        more = len(after) > limit
        return ([self.devices[d] for d in chosen], chosen[-1] if more and chosen else None,
                matched_before + len(after))

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.devices), "online": 0, "offline": 0, "unknown": 0,
               "with_alarms": 0}
        for device in self.devices.values():
            status = str(device.get("status", "unknown"))
            out[status] = out.get(status, 0) + 1
            if device.get("alarms"):
                out["with_alarms"] += 1
        return out

    def firmware(self) -> dict[str, int]:
        """Devices per firmware version (the dashboard's chart)."""
        versions: dict[str, int] = {}
        for device in self.devices.values():
            version = str(device.get("firmware") or "unknown")
            versions[version] = versions.get(version, 0) + 1
        return dict(sorted(versions.items()))

    def alarms(self) -> list[dict[str, Any]]:
        return [
            {"device_id": d["device_id"], "metric": metric, "severity": severity}
            for d in self.devices.values()
            for metric, severity in sorted((d.get("alarms") or {}).items())
        ]

    def snapshot(self, *, limit: int = SNAPSHOT_DEVICES,
                 rollouts: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Counts, alarms, firmware, rollouts and the `limit` most recently seen devices (the
        page asks for its devices by page: `DashboardServer` sends none here)."""
        recent = (sorted(self.devices.values(), key=lambda d: -float(d.get("last_seen") or 0))
                  if limit else [])
        return {"tenant_id": self.tenant_id, "counts": self.counts(),
                "devices": recent[:limit], "alarms": self.alarms(),
                "firmware": self.firmware(), "rollouts": list(rollouts)}


def rollout_for_tenant(rollout: Mapping[str, Any], tenant_id: str) -> dict[str, Any] | None:
    """What a tenant's viewers may see of a rollout (pure): all of a rollout of their own
    tenant; of a fleet-wide rollout (no tenant) its version and state but not its counts,
    which are other tenants' devices too; nothing of another tenant's rollout."""
    owner = rollout.get("tenant")
    if owner is not None and owner != tenant_id:
        return None
    shown = dict(rollout)
    if owner is None:
        shown["counts"] = None
        shown["fleet_wide"] = True
    return shown


class Hub:
    """Views per tenant and the viewers subscribed to each. Publishes an update only to the
    subscribers of the event's tenant."""

    def __init__(self) -> None:
        self.views: dict[str, FleetView] = {}
        self._subscribers: dict[str, set[MemoryObjectSendStream[str]]] = {}
        # Readings (from the telemetry stream): the view, the viewers by id and by the
        # devices they watch, and per tenant the online count sampled once a second.
        self.readings = ReadingsView()
        self._viewers: dict[str, tuple[Viewer, MemoryObjectSendStream[str]]] = {}
        self._watchers: dict[str, set[Viewer]] = {}
        self._online: dict[str, deque[int]] = {}
        self._counts: dict[str, tuple[int, dict[str, int]]] = {}  # tenant -> (version, counts)
        self.applied = 0
        self.ignored = 0
        self.dropped_viewers = 0
        # Rollouts from the firmware bus (a rollout's newest event wins), by id.
        self.rollouts: dict[str, dict[str, Any]] = {}
        self._rollout_sequences: dict[str, int] = {}

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
            "firmware": view.firmware() if event_type == "FirmwareVersionReported" else None,
        }
        self.publish(event.device.tenant_id, "update", update)
        return update

    def rollouts_for(self, tenant_id: str) -> list[dict[str, Any]]:
        shown = (rollout_for_tenant(r, tenant_id) for r in self.rollouts.values())
        return sorted((r for r in shown if r is not None),
                      key=lambda r: str(r.get("updated_at", "")), reverse=True)[:20]

    def apply_rollout(self, rollout: Mapping[str, Any], *, event_type: str, sequence: int,
                      event_time: float) -> bool:
        """Keep a rollout's newest view and send it to the viewers allowed to see it."""
        rollout_id = str(rollout["rollout_id"])
        if sequence <= self._rollout_sequences.get(rollout_id, -1):
            return False
        self._rollout_sequences[rollout_id] = sequence
        view = {**rollout, "last_event": event_type, "updated_at": event_time}
        self.rollouts[rollout_id] = view
        tenants = [view["tenant"]] if view.get("tenant") else list(self._subscribers)
        for tenant_id in tenants:
            shown = rollout_for_tenant(view, tenant_id)
            if shown is not None:
                self.publish(tenant_id, "rollout", shown)
        return True

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

    def open_viewer(self, tenant_id: str) -> tuple[str, Any, Any]:
        """`subscribe`, and a `Viewer` for readings: (viewer id, send, receive)."""
        send, receive = self.subscribe(tenant_id)
        viewer_id = uuid.uuid4().hex
        self._viewers[viewer_id] = (Viewer(tenant_id), send)
        return viewer_id, send, receive

    def unsubscribe(self, tenant_id: str, send: MemoryObjectSendStream[str]) -> None:
        self._subscribers.get(tenant_id, set()).discard(send)
        for viewer_id, (_, stream) in list(self._viewers.items()):
            if stream is send:
                self.watch(viewer_id, tenant_id, ())
                del self._viewers[viewer_id]
        send.close()

    def watch(self, viewer_id: str, tenant_id: str, device_ids: Iterable[str]) -> int:
        """Viewer `viewer_id` (of `tenant_id`) now watches these devices; how many (at most
        MAX_WATCHED). The watched devices' latest readings are sent at the next flush.

        Raises KeyError when there is no such viewer of that tenant (gone, or another
        tenant's)."""
        found = self._viewers.get(viewer_id)
        if found is None or found[0].tenant_id != tenant_id:
            raise KeyError(viewer_id)
        viewer = found[0]
        for device_id in viewer.watched:
            watchers = self._watchers.get(device_id)
            if watchers is not None:
                watchers.discard(viewer)
                if not watchers:
                    del self._watchers[device_id]
        watched = viewer.watch(device_ids)
        for device_id in watched:
            self._watchers.setdefault(device_id, set()).add(viewer)
            if self.readings.get(tenant_id, device_id) is not None:
                viewer.mark(device_id)
        return len(watched)

    def apply_readings(self, shard_id: str, messages: Sequence[Message]) -> None:
        """The fan-out reader's callback: keep the readings, mark their watchers."""
        taken = self.readings.apply_messages(messages, arrival=time.time())
        watchers = self._watchers
        for device_id, held in taken:
            for viewer in watchers.get(device_id, ()):
                if viewer.tenant_id == held.tenant_id:
                    viewer.mark(device_id)

    def flush(self, now: float | None = None) -> int:
        """Send each viewer its due readings (at most one per device per MIN_INTERVAL);
        how many device readings were sent."""
        now = time.time() if now is None else now
        sent = 0
        for viewer, send in list(self._viewers.values()):
            due = viewer.due(now)
            if due:
                frame = readings_frame(self.readings, viewer.tenant_id, due, now=now)
                sent += len(frame["devices"])
                self._send(viewer.tenant_id, send, "readings", frame)
        return sent

    def tick(self, now: float | None = None) -> None:
        """Once a second: a point of the online chart per tenant with viewers, and the
        fleet charts to those viewers."""
        now = time.time() if now is None else now
        for tenant_id, subscribers in list(self._subscribers.items()):
            if not subscribers:
                self._online.pop(tenant_id, None)
                self._counts.pop(tenant_id, None)
                continue
            view = self.view(tenant_id)
            cached = self._counts.get(tenant_id)
            if cached is None or cached[0] != view.version:  # counting is O(devices)
                cached = self._counts[tenant_id] = (view.version, view.counts())
            counts = cached[1]
            online = self._online.get(tenant_id)
            if online is None:
                online = self._online[tenant_id] = deque(maxlen=SERIES_SECONDS)
            online.append(counts.get("online", 0))
            self.publish(tenant_id, "fleet", fleet_frame(self.readings, tenant_id, now=now,
                                                         online=online, counts=counts))

    def _send(self, tenant_id: str, send: MemoryObjectSendStream[str], kind: str,
              payload: Mapping[str, Any]) -> None:
        frame = f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
        try:
            send.send_nowait(frame)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._subscribers.get(tenant_id, set()).discard(send)
            send.close()
            self.dropped_viewers += 1

    async def run_pushes(self, *, task_status: anyio.abc.TaskStatus[None] =
                         anyio.TASK_STATUS_IGNORED) -> None:
        """Flush every FLUSH_SECONDS and tick every FLEET_SECONDS, until cancelled."""
        task_status.started()
        next_tick = time.monotonic()
        while True:
            self.flush()
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick += FLEET_SECONDS
            await anyio.sleep(FLUSH_SECONDS)

    def viewers(self, tenant_id: str | None = None) -> int:
        if tenant_id is not None:
            return len(self._subscribers.get(tenant_id, ()))
        return sum(len(s) for s in self._subscribers.values())


def dashboard_handler(hub: Hub) -> BatchHandler:
    """BatchHandler for the task's feed queue: device events into the hub; other types
    ignored."""

    async def handle(event: TypedEvent[BaseModel], ctx: HandlerContext) -> None:
        data = event.data
        envelope = event.envelope
        rollout = getattr(data, "rollout", None)
        if envelope.source == FIRMWARE_SOURCE and isinstance(rollout, BaseModel):
            # The firmware context's contract: every rollout event carries `rollout`.
            hub.apply_rollout(rollout.model_dump(mode="json"), event_type=envelope.type,
                              sequence=envelope.sequence,
                              event_time=envelope.time.timestamp())
            return
        if not isinstance(data, DeviceEvent):
            return
        hub.apply_event(data, event_type=envelope.type, sequence=envelope.sequence,
                        event_time=envelope.time.timestamp(), event_id=envelope.id)

    return batch_handler(handle, decode=lambda m: registry.decode(m.body))


# --------------------------------------------------------------------------- HTTP


def dev_mode(environ: Mapping[str, str] | None = None) -> bool:
    """No dashboard secret configured and an endpoint override (the emulator): local use.
    Read from the task's environment (default `os.environ`) by the lifespan, once."""
    env = os.environ if environ is None else environ
    return not env.get("FLEETLINE_DASHBOARD_SECRET") and bool(env.get("AWS_ENDPOINT_URL"))


def _script_hash(page: Path) -> str:
    """The CSP source of the page's one inline script (its SHA-256, base64)."""
    import base64
    import hashlib
    import re

    scripts = re.findall(r"<script>(.*?)</script>", page.read_text(), flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in scripts)


@functools.cache
def security_headers() -> dict[str, str]:
    """Headers on every dashboard response. Viewer tokens travel in URLs (`?token=`, since
    EventSource cannot send headers), so no page may leak its URL as a referrer, be framed,
    run or load anything but its own script and API, or be kept by a cache."""
    csp = "; ".join((
        "default-src 'none'",
        f"script-src {_script_hash(STATIC / 'dashboard.html')}",
        "style-src 'unsafe-inline'",  # style attributes in the page; no remote styles
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))
    return {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


@web.middleware
async def _secure(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(security_headers())
        raise
    if not response.prepared:  # an SSE stream sets them itself before it starts
        response.headers.update(security_headers())
    return response


class DashboardServer:
    """The aiohttp application: page, SSE stream, query API. Every response carries
    `security_headers()`.

    `secret` signs and checks viewer tokens (`services.devices._auth`); `dev_mode` lets the
    page without a token list tenants to pick from (local development only: `dev_mode()`).
    """

    def __init__(self, hub: Hub, queries: DeviceQueries | None, *, secret: str,
                 dev_mode: bool = False) -> None:
        self.hub = hub
        self.queries = queries
        self.secret = secret
        self.dev_mode = dev_mode
        self.app = web.Application(middlewares=[_secure])
        self.app.add_routes([
            web.get("/", self.page),
            web.get("/healthz", self.health),
            web.get("/events", self.events),
            web.get("/api/counts", self.api_counts),
            web.get("/api/devices", self.api_devices),
            web.get("/api/devices/{device_id}", self.api_device),
            web.get("/api/view/devices", self.api_view_devices),
            web.post("/api/watch", self.api_watch),
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

    def _tenant(self, request: web.Request) -> str:
        token = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[len("Bearer "):]
        try:
            return verify_token(token, secret=self.secret)
        except InvalidTokenError as exc:
            raise web.HTTPUnauthorized(text=json.dumps({"error": str(exc)}),
                                       content_type="application/json") from None

    async def page(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token"):
            return web.FileResponse(STATIC / "dashboard.html")
        if not self.dev_mode:
            raise web.HTTPUnauthorized(
                text="a viewer link carries a token: run `fleetline devices url --tenant <id>`")
        # Local development only (no secret configured, an emulator endpoint): pick a tenant.
        tenants = sorted(set(self.hub.views) | {f"t-{i:03d}" for i in range(1, 4)})
        links = "".join(
            f'<li><a href="/?token={issue_token(t, secret=self.secret)}">{t}</a> '
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
                                  "applied": self.hub.applied,
                                  "readings": self.hub.readings.applied})

    async def events(self, request: web.Request) -> web.StreamResponse:
        tenant_id = self._tenant(request)
        response = web.StreamResponse(headers={
            **security_headers(), "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        viewer_id, send, receive = self.hub.open_viewer(tenant_id)
        try:
            snapshot = self.hub.view(tenant_id).snapshot(
                limit=0, rollouts=self.hub.rollouts_for(tenant_id))
            snapshot["viewer_id"] = viewer_id  # for /api/watch: the devices on its screen
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
        tenant_id = self._tenant(request)
        counts = await self._require_queries().fleet_counts(tenant_id)
        return web.json_response(counts.model_dump(mode="json"))

    async def api_devices(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant(request)
        try:
            page = await self._require_queries().devices_by_status(
                tenant_id, request.query.get("status", "online"),
                limit=int(request.query.get("limit", "50")), cursor=request.query.get("cursor"),
            )
        except (InvalidQueryError, ValueError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}),
                                     content_type="application/json") from None
        return web.json_response(page.model_dump(mode="json"))

    async def api_view_devices(self, request: web.Request) -> web.Response:
        """A page of the tenant's devices from the task's view, each with its latest
        reading: `?q=` (part of the id), `&status=`, `&cursor=`, `&limit=` (<= 200)."""
        tenant_id = self._tenant(request)
        status = request.query.get("status") or None
        try:
            limit = int(request.query.get("limit", str(PAGE_LIMIT)))
        except ValueError:
            limit = -1
        if not 0 < limit <= MAX_PAGE_LIMIT or (status is not None and status not in STATUSES):
            raise web.HTTPBadRequest(text=json.dumps({
                "error": f"limit must be 1..{MAX_PAGE_LIMIT}, status one of "
                         f"{sorted(STATUSES)}"}), content_type="application/json")
        devices, cursor, matched = self.hub.view(tenant_id).page(
            search=request.query.get("q", "")[:100], status=status,
            cursor=request.query.get("cursor") or None, limit=limit)
        readings = self.hub.readings
        items = []
        for device in devices:
            held = readings.get(tenant_id, str(device["device_id"]))
            items.append({**device, "live": held.to_json(str(device["device_id"]))
                          if held is not None else None})
        return web.json_response({"devices": items, "cursor": cursor, "matched": matched})

    async def api_watch(self, request: web.Request) -> web.Response:
        """`POST {"viewer": id, "devices": [ids]}`: the devices on that viewer's screen; their
        readings are pushed on its SSE stream (each at most once a second)."""
        tenant_id = self._tenant(request)
        try:
            body = await request.json()
            viewer_id = str(body["viewer"])
            devices = [str(d) for d in body.get("devices", [])]
            watched = self.hub.watch(viewer_id, tenant_id, devices)
        except KeyError:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such viewer"}),
                                   content_type="application/json") from None
        except (ValueError, TypeError, AttributeError):
            raise web.HTTPBadRequest(text=json.dumps({"error": "expected {viewer, devices}"}),
                                     content_type="application/json") from None
        return web.json_response({"watched": watched})

    async def api_device(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant(request)
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
    local = dev_mode()
    if not os.environ.get("FLEETLINE_DASHBOARD_SECRET") and not local:
        log.warning("FLEETLINE_DASHBOARD_SECRET is not set: viewer tokens use the development "
                    "secret; set it (from Secrets Manager) outside local development")
    host = os.environ.get("FLEETLINE_DASHBOARD_HOST", "127.0.0.1")
    port = int(os.environ.get("FLEETLINE_DASHBOARD_PORT", "8080"))
    config = FeedConfig.from_environ(resources)
    queries = DeviceQueries(aws, resources.get("DeviceReadModelTable"))
    stream = resources.values.get(resource_env_name("TelemetryStream"))
    if not stream:
        log.warning("no telemetry stream: the dashboard shows device events but no readings")
    async with feed.attach(aws, config), contextlib.AsyncExitStack() as stack:
        hub = Hub()
        hub.seed(await queries.all_devices())
        consumer = None
        if stream:
            arn = await stream_arn(aws, stream)
            # The consumer is named after the task's feed queue: one per task, and a
            # consumer whose queue is gone is a dead task's (`sweep_readers`).
            consumer = await stack.enter_async_context(
                fan_out_consumer(aws, arn, name=config.queue_name))
        # Exit in reverse: the tasks are cancelled, then the consumer is deregistered.
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        await tg.start(hub.run_pushes)
        if consumer is not None:
            reader = KinesisFanOut(aws, consumer, on_records=hub.apply_readings)
            await tg.start(reader.run)
            tg.start_soon(sweep_readers, aws, consumer.stream_arn, config)
        server = DashboardServer(hub, queries, secret=dashboard_secret(), dev_mode=local)
        url = await server.start(host, port)
        log.info("dashboard listening", url=url, queue=config.queue_name, readings=stream,
                 devices=sum(len(v.devices) for v in hub.views.values()),
                 hint="`fleetline devices url --tenant t-001` prints a viewer link")
        try:
            yield dashboard_handler(hub)
        finally:
            with anyio.CancelScope(shield=True):
                await server.stop()


async def sweep_readers(aws: AwsClients, stream: str, config: FeedConfig) -> None:
    """`remove_dead_readers` every `config.stale_after_seconds`, the first after one
    `heartbeat_seconds` (the feed sweep has removed dead tasks' queues by then). Runs until
    cancelled."""
    await anyio.sleep(min(config.heartbeat_seconds, config.stale_after_seconds))
    while True:
        await remove_dead_readers(aws, stream, config)
        await anyio.sleep(config.stale_after_seconds)


async def remove_dead_readers(aws: AwsClients, stream: str, config: FeedConfig) -> list[str]:
    """Deregister the stream consumers of dead dashboard tasks: named with the feed queue
    prefix, not this task's, and whose queue no longer exists (the feed sweep removes a dead
    task's queue: `services.devices._dashboard_feed`). The names deregistered; best effort
    (a failure is logged and the rest waits for the next sweep)."""
    sqs = await aws.client("sqs")
    removed: list[str] = []
    try:
        for consumer in await list_fan_out_consumers(aws, stream):
            if (not consumer.name.startswith(config.queue_prefix)
                    or consumer.name == config.queue_name):
                continue
            try:
                with aws_errors():
                    await sqs.get_queue_url(QueueName=consumer.name)
            except AwsRequestError as exc:
                if exc.code in ("AWS.SimpleQueueService.NonExistentQueue",
                                "QueueDoesNotExist"):
                    await deregister_fan_out_consumer(aws, consumer.arn,
                                                      reason="its task's queue is gone")
                    removed.append(consumer.name)
    except FleetlineError as exc:
        log.warning("reader sweep skipped", error=str(exc))
    return removed


def worker() -> Worker:
    """The ECS task (`python -m shared.hosts.worker services.devices.dashboard:worker`)."""
    wait = int(os.environ.get("FLEETLINE_WAIT_TIME_SECONDS", "20"))
    feed = DashboardFeed(SqsSettings(wait_time_seconds=wait))
    return Worker(
        name="dashboard",
        source=feed,
        lifespan=functools.partial(dashboard_lifespan, feed=feed),
    )
