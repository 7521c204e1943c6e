"""`fleetline devices ...`: dashboard links and read-model queries from the shell."""

from __future__ import annotations

import json
import os
from typing import Annotated

import anyio
import typer

from services.devices._auth import issue_token

__all__ = ["app", "dashboard_url"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The devices context: dashboard links and fleet queries.")


def dashboard_url(tenant_id: str, *, base: str | None = None) -> str:
    """The dashboard URL for a viewer of `tenant_id` (with its token)."""
    from services.devices._local import dashboard_base_url

    root = (base or os.environ.get("FLEETLINE_DASHBOARD_URL") or dashboard_base_url()
            or "http://127.0.0.1:8080").rstrip("/")
    return f"{root}/?token={issue_token(tenant_id)}"


@app.command("url")
def url_command(
    tenant: Annotated[str, typer.Option(help="tenant to view as")] = "t-001",
    base: Annotated[str | None, typer.Option(help="dashboard base URL")] = None,
) -> None:
    """Print a dashboard URL with a viewer token for TENANT."""
    typer.echo(dashboard_url(tenant, base=base))


@app.command("counts")
def counts_command(tenant: Annotated[str, typer.Option()] = "t-001") -> None:
    """Fleet counts of TENANT from the read model."""
    from services.devices.query import DeviceQueries
    from shared.aws import AwsClients

    async def main() -> None:
        from services.devices._local import stack_resources

        resources = await stack_resources("DeviceReadModelTable")
        async with AwsClients() as aws:
            queries = DeviceQueries(aws, resources.get("DeviceReadModelTable"))
            counts = await queries.fleet_counts(tenant)
        typer.echo(json.dumps(counts.model_dump(mode="json"), indent=2))

    anyio.run(main)
