"""`fleetline devices [--zone Z] ...`: dashboard links and read-model queries from the shell
(`url`, `counts`, `show DEVICE_ID`, `list --status S`); every query names the tenant, as the
query API requires. `--zone` picks the zone's stack of a `fleetline up --zones eu,us` (default:
the first). `fleetline report monthly` reads the lake of one zone or of all."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer

from services.devices._auth import dashboard_secret, issue_token

if TYPE_CHECKING:
    from services.devices.query import DeviceQueries

__all__ = ["app", "dashboard_url"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The devices context: dashboard links and fleet queries.")

# The zone's stack the commands of this invocation use (`fleetline devices --zone us ...`).
_zone: str | None = None


@app.callback()
def _devices(
    zone: Annotated[str | None, typer.Option(
        help="the zone's stack (eu, us, eu:secondary); default: the first one up")] = None,
) -> None:
    global _zone
    _zone = zone


def dashboard_url(tenant_id: str, *, base: str | None = None) -> str:
    """The dashboard URL for a viewer of `tenant_id` (with its token, signed with the secret
    of this environment: `dashboard_secret`)."""
    from services.devices._local import dashboard_base_url

    root = (base or os.environ.get("FLEETLINE_DASHBOARD_URL") or dashboard_base_url(zone=_zone)
            or "http://127.0.0.1:8080").rstrip("/")
    return f"{root}/?token={issue_token(tenant_id, secret=dashboard_secret())}"


@app.command("url")
def url_command(
    tenant: Annotated[str, typer.Option(help="tenant to view as")] = "t-001",
    base: Annotated[str | None, typer.Option(help="dashboard base URL")] = None,
) -> None:
    """Print a dashboard URL with a viewer token for TENANT."""
    typer.echo(dashboard_url(tenant, base=base))


def _query(ask: Callable[[DeviceQueries], Awaitable[Any]]) -> Any:
    """Run one query against the read model of the running stack (or the environment's)."""
    from services.devices.query import DeviceQueries

    async def main() -> Any:
        from services.devices._local import stack_clients, stack_resources

        resources = await stack_resources("DeviceReadModelTable", zone=_zone)
        async with stack_clients("DeviceReadModelTable", zone=_zone) as aws:
            return await ask(DeviceQueries(aws, resources.get("DeviceReadModelTable")))

    return anyio.run(main)


@app.command("counts")
def counts_command(tenant: Annotated[str, typer.Option()] = "t-001") -> None:
    """Fleet counts of TENANT from the read model."""
    counts = _query(lambda queries: queries.fleet_counts(tenant))
    typer.echo(json.dumps(counts.model_dump(mode="json"), indent=2))


@app.command("show")
def show_command(
    device_id: Annotated[str, typer.Argument(help="e.g. dev-000001")],
    tenant: Annotated[str, typer.Option(help="the device's tenant")] = "t-001",
) -> None:
    """One device of TENANT from the read model; exit 1 when the tenant has no such device."""
    device = _query(lambda queries: queries.device(tenant, device_id))
    if device is None:
        typer.echo(f"error: tenant {tenant} has no device {device_id} in the read model "
                   "(yet: the projection may still be behind)", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(device.model_dump(mode="json"), indent=2))


@app.command("list")
def list_command(
    tenant: Annotated[str, typer.Option()] = "t-001",
    status: Annotated[str, typer.Option(help="online, offline or unknown")] = "online",
    limit: Annotated[int, typer.Option(help="devices per page (1-500)")] = 20,
    cursor: Annotated[str | None, typer.Option(help="the cursor a previous page printed")] = None,
) -> None:
    """Devices of TENANT with STATUS, a page at a time (one JSON object per line, then the
    cursor of the next page, if any)."""
    from services.devices.query import InvalidQueryError

    try:
        page = _query(lambda queries: queries.devices_by_status(
            tenant, status, limit=limit, cursor=cursor))
    except InvalidQueryError as exc:
        raise typer.BadParameter(str(exc)) from None
    for device in page.devices:
        typer.echo(json.dumps(device.model_dump(mode="json")))
    if page.cursor:
        typer.echo(f"next page: --cursor {page.cursor}", err=True)


# --------------------------------------------------------------------------- fleetline report

report_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Analytics over the readings lake.")

@report_app.command("monthly")
def monthly_command(
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    zone: Annotated[str | None, typer.Option(
        help="the zone to report (default: the running stack's)")] = None,
    all_zones: Annotated[bool, typer.Option(
        "--all-zones", help="every zone, each computed in its own Region")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per tenant, firmware version and day of MONTH: events, devices reporting, min / avg /
    max per metric, uptime; then the bytes each zone's query scanned. Locally on DuckDB over
    the lake's Parquet in the emulator's S3; on AWS on Athena (the stack's workgroup). Across
    zones only each zone's aggregates leave its Region."""
    from services.devices import report
    from shared.zones import ZONES

    if all_zones and zone:
        raise typer.BadParameter("give --zone or --all-zones, not both")
    if zone is not None and zone not in ZONES:
        raise typer.BadParameter(f"zone must be one of {sorted(ZONES)}")
    zones: list[str | None] = list(ZONES) if all_zones else [zone]

    async def one(name: str | None) -> report.Partial | None:
        from services.devices._local import stack_clients, stack_resources, stack_zone

        # Each zone's query runs on its own stack, in its primary Region: only the
        # aggregates it returns leave the Region.
        try:
            resources = await stack_resources("LakeBucket", zone=name)
            bucket = resources.get("LakeBucket")
        except Exception as exc:  # no stack in that Region: said, and the others go on
            if not all_zones:
                raise
            where = ZONES[name].primary if name else "its Region"
            typer.echo(f"zone {name}: no stack with a lake in {where} ({exc})", err=True)
            return None
        async with stack_clients("LakeBucket", zone=name) as aws:
            deployed = name or stack_zone(resources)
            if aws.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"):
                return await report.run_duckdb(aws, bucket=bucket, zone=deployed, month=month)
            return await report.run_athena(
                aws, workgroup=resources.get("AnalyticsWorkGroup"),
                database=resources.get("LakeDatabase"), zone=deployed, month=month)

    async def main() -> list[report.Partial]:
        found = [await one(name) for name in zones]
        return [p for p in found if p is not None]

    try:
        partials = anyio.run(main)
    except report.ReportError as exc:
        raise typer.BadParameter(str(exc)) from None
    days = report.combine(partials)
    if as_json:
        typer.echo(json.dumps(report.as_json(days, partials), indent=2))
    else:
        typer.echo(report.render(days, partials))
