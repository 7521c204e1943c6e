"""The stack as users run it in containers: a dockerd of the run's own (tests/integration/
_engine.py), `fleetline build` of the images on a debootstrapped Debian base, then compose.yaml
(every container on the host's loopback) and:

- an order placed through the HTTP API reaches CONFIRMED;
- simulated telemetry reaches the devices' read model;
- a worker container stopped with SIGTERM drains and exits 0 within its grace period;
- a worker whose process is killed with SIGKILL is restarted, and nothing it had in flight is
  lost or applied twice (stock: shipped once per confirmed order, nothing left reserved);
- `down` removes every container, and the host is as it was.

Runs in CI (`.ci/run` installs docker.io, debootstrap; `make install` Docker Compose v2);
elsewhere it is skipped when those are missing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from shared.local import endpoint_clients
from tests.integration._engine import (
    BASE_IMAGE,
    CA_BUNDLE,
    ROOT,
    Engine,
    compose_binary,
    engine,
    host_state,
    require_tools,
)

pytestmark = [pytest.mark.containers, pytest.mark.slow]

STACK = "fleetline"
GRACE_SECONDS = 60  # the task definitions' StopTimeout (compose: stop_grace_period)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port_free(port: int, within: float) -> None:
    """The dashboard listens on its task definition's port: wait for a stack another run
    left on it to go, or fail naming it."""
    deadline = time.monotonic() + within
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"port {port} is taken: stop what listens there (another stack?)")
        time.sleep(1)


@dataclass
class Stack:
    engine: Engine
    project: str
    emulator_port: int
    api_port: int
    compose: Path

    @property
    def env(self) -> dict[str, str]:
        return {**self.engine.env, "FLEETLINE_EMULATOR_PORT": str(self.emulator_port),
                "FLEETLINE_API_PORT": str(self.api_port)}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def run(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        done = subprocess.run(
            [str(self.compose), "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).strip()

    def inspect(self, service: str) -> dict[str, Any]:
        data = json.loads(self.engine.docker("inspect", self.run("ps", "-a", "-q", service)
                                             .strip()))
        return dict(data[0])

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json", **(headers or {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_tools()
    before = host_state()
    wait_port_free(8080, within=60)
    compose = compose_binary()
    assert compose is not None
    with engine() as running:
        started = time.monotonic()
        running.base_image()
        based = time.monotonic()
        build = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "fleetline"), "build", "--base", BASE_IMAGE,
             "--network", "host", "--no-lambda",
             *(["--ca-bundle", str(CA_BUNDLE)] if CA_BUNDLE.exists() else [])],
            env=running.env, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False,
        )
        assert build.returncode == 0, build.stderr[-2000:]
        assert "image fleetline:local:" in build.stdout, build.stdout
        sizes = [line for line in build.stdout.splitlines() if line.startswith("image ")]
        print(f"\nbase image {based - started:.0f} s, images {time.monotonic() - based:.0f} s: "
              f"{'; '.join(sizes)}")
        stack = Stack(engine=running, project=f"fleetline-test-{os.getpid()}",
                      emulator_port=free_port(), api_port=free_port(), compose=compose)
        try:
            up = time.monotonic()
            stack.run("up", "-d", "--no-build", "--wait", "--wait-timeout", "150", timeout=200)
            print(f"compose up --wait: {time.monotonic() - up:.0f} s")
            yield stack
        finally:
            stack.run("down", "--timeout", "10", "--remove-orphans", "--volumes", check=False)
    assert host_state() == before, "the host is not as the test found it"


def order(quantity: int = 1) -> dict[str, Any]:
    return {
        "customer_id": "c-containers", "items": [{"sku": "MUG-RED", "quantity": quantity}],
        "currency": "EUR",
        "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin",
                             "postal_code": "10115", "country": "DE"},
    }


def wait_final(stack: Stack, order_ids: list[str], within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        for order_id in order_ids:
            try:
                statuses[order_id] = str(stack.api("GET", f"/orders/{order_id}")["status"])
            except OSError:
                statuses[order_id] = "unreadable"
        if all(s in {"CONFIRMED", "CANCELLED"} for s in statuses.values()):
            return statuses
        time.sleep(1)
    return statuses


async def stock(stack: Stack, sku: str) -> dict[str, Any]:
    async with endpoint_clients(stack.endpoint, os.environ) as aws:
        dynamodb = await aws.client("dynamodb")
        item = (await dynamodb.get_item(
            TableName=f"{STACK}-inventory",
            Key={"pk": {"S": f"SKU#{sku}"}, "sk": {"S": "STOCK"}},
            ConsistentRead=True,
        ))["Item"]
    return {k: int(v["N"]) for k, v in item.items() if "N" in v}


def test_every_container_is_up(stack: Stack) -> None:
    services = set(stack.run("ps", "--services", "--status", "running").split())
    assert {"emulator", "glue", "telemetry", "inventory", "dashboard"} <= services
    assert len(services) == 12  # the emulator, the glue and the 10 ECS services


def test_an_order_reaches_confirmed(stack: Stack) -> None:
    stack.run("exec", "-T", "glue", "fleetline", "orders", "seed")
    placed = stack.api("POST", "/orders", order(), {"Idempotency-Key": "containers-1"})
    assert wait_final(stack, [placed["order_id"]], within=60) == {
        placed["order_id"]: "CONFIRMED"}


async def test_simulated_telemetry_reaches_the_read_model(stack: Stack) -> None:
    stack.run("exec", "-T", "glue", "fleetline", "simulate", "--devices", "12", "--count",
              "48", "--rate", "50", "--eu-share", "1", "--tenants", "1", "--no-commands",
              timeout=120)
    deadline = time.monotonic() + 60
    seen = 0
    async with endpoint_clients(stack.endpoint, os.environ) as aws:
        dynamodb = await aws.client("dynamodb")
        while time.monotonic() < deadline:
            seen = (await dynamodb.scan(TableName=f"{STACK}-device-read-model",
                                        Select="COUNT"))["Count"]
            if seen >= 12:
                break
            await anyio.sleep(1)
    assert seen == 12


def test_sigterm_drains_and_exits_0_within_the_grace_period(stack: Stack) -> None:
    container = stack.container("notifications")
    started = time.monotonic()
    stack.engine.docker("stop", "--time", str(GRACE_SECONDS), container,
                        timeout=GRACE_SECONDS + 30)
    elapsed = time.monotonic() - started
    state = json.loads(stack.engine.docker("inspect", container))[0]["State"]
    assert state["ExitCode"] == 0, state
    assert elapsed < GRACE_SECONDS
    logs = stack.run("logs", "notifications")
    assert "signal received; draining" in logs
    assert "worker stopped" in logs
    stack.engine.docker("start", container)


async def test_sigkill_restarts_and_loses_nothing_nor_applies_twice(stack: Stack) -> None:
    before = await stock(stack, "MUG-RED")
    placed = [stack.api("POST", "/orders", order(), {"Idempotency-Key": f"containers-kill-{i}"})
              ["order_id"] for i in range(5)]
    worker = stack.inspect("inventory")
    os.kill(int(worker["State"]["Pid"]), signal.SIGKILL)  # a crash, not a stop
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = stack.inspect("inventory")
        if state["RestartCount"] > worker["RestartCount"] and state["State"]["Running"]:
            break
        await anyio.sleep(0.5)
    assert state["RestartCount"] == worker["RestartCount"] + 1
    # What the killed worker had received comes back after the queue's visibility timeout.
    assert wait_final(stack, placed, within=150) == dict.fromkeys(placed, "CONFIRMED")
    after = await stock(stack, "MUG-RED")
    assert after["shipped"] == before["shipped"] + 5
    assert after["available"] == before["available"] - 5
    assert after["reserved"] == 0


def test_down_removes_everything(stack: Stack) -> None:
    stack.run("down", "--timeout", "30", "--remove-orphans", "--volumes", timeout=120)
    left = stack.engine.docker("ps", "-aq", "--filter",
                               f"label=com.docker.compose.project={stack.project}")
    assert left.strip() == ""
    networks = stack.engine.docker("network", "ls", "-q", "--filter",
                                   f"label=com.docker.compose.project={stack.project}")
    assert networks.strip() == ""
