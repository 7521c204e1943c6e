"""The dashboard's view and hub: newest sequence wins, updates reach only their tenant."""

from __future__ import annotations

import json

import anyio
import pytest

from services.devices._auth import InvalidTokenError, issue_token, verify_token
from services.devices.dashboard import FleetView, Hub
from services.devices.events import DeviceConnected, DeviceDisconnected, DeviceView, Status


def view(device: str, tenant: str, status: Status = Status.ONLINE) -> DeviceView:
    return DeviceView(device_id=device, tenant_id=tenant, zone="eu", status=status, seq=1,
                      last_seen=1.0)


def test_view_keeps_newest_sequence_and_counts() -> None:
    fleet = FleetView("t-1")
    assert fleet.apply({"device_id": "a", "status": "online"}, sequence=2)
    assert not fleet.apply({"device_id": "a", "status": "offline"}, sequence=1)
    assert fleet.apply({"device_id": "b", "status": "offline", "alarms": {"t": "critical"}},
                       sequence=1)
    assert fleet.counts() == {"total": 2, "online": 1, "offline": 1, "unknown": 0,
                              "with_alarms": 1}
    assert fleet.alarms() == [{"device_id": "b", "metric": "t", "severity": "critical"}]


def test_updates_go_only_to_their_tenant() -> None:
    hub = Hub()
    send_a, recv_a = hub.subscribe("t-a")
    send_b, recv_b = hub.subscribe("t-b")
    hub.apply_event(DeviceConnected(device=view("dev-a", "t-a")), event_type="DeviceConnected",
                    sequence=1, event_time=0.0, event_id="e1")
    frame = recv_a.receive_nowait()
    assert frame.startswith("event: update\n")
    payload = json.loads(frame.split("data: ", 1)[1])
    assert payload["device"]["device_id"] == "dev-a"
    assert payload["counts"]["online"] == 1
    with pytest.raises(anyio.WouldBlock):
        recv_b.receive_nowait()
    assert "dev-a" not in hub.view("t-b").devices
    # a repeat is ignored and not pushed
    assert hub.apply_event(DeviceDisconnected(device=view("dev-a", "t-a"), silent_for=1),
                           event_type="DeviceDisconnected", sequence=1, event_time=0.0,
                           event_id="e1") is None
    hub.unsubscribe("t-a", send_a)
    hub.unsubscribe("t-b", send_b)
    assert hub.viewers() == 0


def test_tokens_bind_a_tenant() -> None:
    token = issue_token("t-7", secret="s", now=100.0, ttl=10)
    assert verify_token(token, secret="s", now=105.0) == "t-7"
    with pytest.raises(InvalidTokenError, match="expired"):
        verify_token(token, secret="s", now=200.0)
    with pytest.raises(InvalidTokenError, match="signature"):
        verify_token(token, secret="other", now=105.0)
    forged = "t-8" + token[3:]
    with pytest.raises(InvalidTokenError, match="signature"):
        verify_token(forged, secret="s", now=105.0)


async def test_every_response_carries_the_security_headers() -> None:
    """Tokens travel in URLs: no referrer, no framing, no caching, only the page's script."""
    import aiohttp

    from services.devices._auth import DEV_SECRET
    from services.devices.dashboard import DashboardServer

    server = DashboardServer(Hub(), None, secret=DEV_SECRET)
    base = await server.start(port=0)
    token = issue_token("t-1", secret=DEV_SECRET)
    try:
        async with aiohttp.ClientSession() as session:
            for path in (f"/?token={token}", f"/api/counts?token={token}", "/api/counts",
                         "/healthz"):
                async with session.get(base + path) as response:
                    headers = response.headers
                    assert headers["Referrer-Policy"] == "no-referrer", path
                    assert headers["Cache-Control"] == "no-store", path
                    csp = headers["Content-Security-Policy"]
                    assert "frame-ancestors 'none'" in csp, path
                    assert "script-src 'sha256-" in csp, path
            async with session.get(f"{base}/events?token={token}") as stream:
                assert stream.headers["Referrer-Policy"] == "no-referrer"
                assert stream.headers["Cache-Control"] == "no-store"
    finally:
        await server.stop()
