"""`fleetline orders ...`: place an order and watch it through the saga, from the shell.

Both commands talk to the orders HTTP API, the same one curl talks to: `--api URL`, else
`FLEETLINE_API_URL`, else the API `fleetline up` started (from `.fleetline/state.json`).
`show` reads `GET /orders/{id}` (the read model), so it shows what users see.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.orders.domain import CATALOG, OrderStatus, cancellation_reason

__all__ = ["api_url", "app"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The orders context: place orders and follow them through the saga.")
_console = Console()
_FINAL = frozenset({"CONFIRMED", "CANCELLED"})


def _state_dir() -> Path:
    """Where `fleetline up` keeps its state (its --state-dir / FLEETLINE_STATE_DIR)."""
    return Path(os.environ.get("FLEETLINE_STATE_DIR") or ".fleetline")


def api_url(explicit: str | None = None, state_dir: Path | None = None) -> str:
    """The orders API base URL.

    Raises:
        typer.BadParameter: none given and no running `fleetline up` found.
    """
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("FLEETLINE_API_URL"):
        return os.environ["FLEETLINE_API_URL"].rstrip("/")
    from shared.local import read_state

    state = read_state(state_dir or _state_dir())
    if state is not None:
        for name, url in state.urls.items():
            if "api" in name.lower():
                return url.rstrip("/")
    raise typer.BadParameter("no API URL: pass --api, set FLEETLINE_API_URL or run `fleetline up`",
                             param_hint="--api")


def _request(method: str, url: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def _render(order: dict[str, Any]) -> None:
    table = Table(title=f"order {order.get('order_id')}", show_header=False)
    status = str(order.get("status"))
    colours: dict[str, str] = {OrderStatus.CONFIRMED: "green", OrderStatus.CANCELLED: "red"}
    colour = colours.get(status, "yellow")
    table.add_row("status", f"[{colour}]{status}[/{colour}]")
    if status == OrderStatus.CANCELLED:
        reason, detail = cancellation_reason(order.get("reason"), order.get("detail"))
        table.add_row("reason", reason)
        if detail:
            table.add_row("detail", detail)
    for name in ("customer_id", "placed_at", "confirmed_at", "cancelled_at", "payment_id",
                 "shipment_id"):
        if order.get(name):
            table.add_row(name, str(order[name]))
    lines = ", ".join(f"{i['sku']} x{i['quantity']}" for i in order.get("items", []))
    table.add_row("items", lines)
    table.add_row("total", f"{int(order.get('total', 0)) / 100:.2f} {order.get('currency', '')}")
    _console.print(table)


def _show(base: str, order_id: str, wait: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + wait
    while True:
        status, body = _request("GET", f"{base}/orders/{order_id}")
        if status == 200 and (body.get("status") in _FINAL or time.monotonic() >= deadline):
            return dict(body)
        if status not in (200, 404):
            _console.print(f"[red]{status}[/red] {body}")
            raise typer.Exit(1)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


@app.command("show")
def show_command(
    order_id: Annotated[str, typer.Argument(help="the order id POST /orders returned")],
    api: Annotated[str | None, typer.Option(help="orders API base URL")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for CONFIRMED/CANCELLED")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON")] = False,
) -> None:
    """Show an order from the read model (optionally waiting until it is final)."""
    order = _show(api_url(api), order_id, wait)
    if order is None:
        _console.print(f"order {order_id} not found (yet)")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(order, indent=2))
    else:
        _render(order)


@app.command("place")
def place_command(
    customer: Annotated[str, typer.Option(help="customer id ('decline...' is always declined)")]
    = "c-001",
    item: Annotated[list[str] | None, typer.Option(help="SKU=QTY, repeatable")] = None,
    currency: Annotated[str, typer.Option()] = "EUR",
    country: Annotated[str, typer.Option(help="ISO country; AQ has no carrier")] = "DE",
    key: Annotated[str | None, typer.Option(help="Idempotency-Key (default: random)")] = None,
    api: Annotated[str | None, typer.Option(help="orders API base URL")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 30.0,
) -> None:
    """Place an order through the API and follow it to CONFIRMED or CANCELLED."""
    lines = []
    for spec in item or ["MUG-RED=2", "KETTLE-1=1"]:
        sku, _, qty = spec.partition("=")
        lines.append({"sku": sku, "quantity": int(qty or 1)})
    body = {"customer_id": customer, "items": lines, "currency": currency,
            "shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St",
                                 "city": "Berlin", "postal_code": "10115", "country": country}}
    base = api_url(api)
    status, answer = _request("POST", f"{base}/orders", body,
                              {"idempotency-key": key or uuid.uuid4().hex})
    typer.echo(f"{status} {json.dumps(answer)}")
    if status != 202:
        raise typer.Exit(1)
    order = _show(base, answer["order_id"], wait)
    if order is not None:
        _render(order)


@app.command("catalog")
def catalog_command() -> None:
    """The skus and prices an order may use."""
    for sku, price in CATALOG.items():
        typer.echo(f"{sku:12} {price / 100:8.2f}")


@app.command("seed")
def seed_command(
    quantity: Annotated[int, typer.Option(help="stock per sku")] = 100,
    table: Annotated[str | None, typer.Option(help="inventory table (default: the stack's)")]
    = None,
) -> None:
    """Set every catalogue sku's stock (the local stack starts empty)."""
    import anyio

    from services.orders.inventory import Inventory
    from shared.local import endpoint_clients, read_state

    state = read_state(_state_dir())
    # AWS_ENDPOINT_URL, when set, is botocore's to read; else the running `up`'s emulator.
    endpoint = None if os.environ.get("AWS_ENDPOINT_URL") or state is None else state.endpoint

    async def main() -> None:
        async with endpoint_clients(endpoint, os.environ) as aws:
            name = table or os.environ.get("FLEETLINE_INVENTORY_TABLE")
            if name is None and state is not None:
                cfn = await aws.client("cloudformation")
                stack = (await cfn.describe_stacks(StackName=state.stack_name))["Stacks"][0]
                outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
                name = outputs.get("InventoryTable")
            if not name:
                raise typer.BadParameter("no inventory table: pass --table or run `fleetline up`")
            await Inventory(aws, table=name).seed({sku: quantity for sku in CATALOG})
        typer.echo(f"seeded {quantity} of each of {len(CATALOG)} skus in {name}")

    anyio.run(main)
