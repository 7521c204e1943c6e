"""`fleetline firmware ...`: upload firmware, start rollouts and steer them from the shell.

    fleetline firmware upload 2.1.0 ./fw-2.1.0.bin
    fleetline firmware start --version 2.1.0 --tenant t-001 --canary 20 --growth 4 --approval
    fleetline firmware status r-... [--json]      # state, counts per status, waves
    fleetline firmware list | approve ID | pause ID | resume ID | abort ID

Every refusal is one `error:` line naming the field and a non-zero exit; nothing was started.
The commands find the stack as the other CLIs do: the environment inside the stack, else
the running `fleetline up`; `fleetline firmware --zone us ...` picks the zone's stack of a
`fleetline up --zones eu,us` (a rollout reaches the devices of its stack's zone only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.table import Table

from services.firmware.domain import RolloutSpec
from services.firmware.errors import InvalidTransition, RolloutNotFound, RolloutRejected
from services.firmware.service import FirmwareService, ServiceSettings

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The firmware context: artifacts and staged rollouts.")
_console = Console()

# The zone's stack the commands of this invocation use (`fleetline firmware --zone us ...`).
_zone: str | None = None


@app.callback()
def _firmware(
    zone: Annotated[str | None, typer.Option(
        help="the zone's stack (eu, us, eu:secondary); default: the first one up")] = None,
) -> None:
    global _zone
    _zone = zone


def _run(ask: Callable[[FirmwareService], Awaitable[Any]]) -> Any:
    from shared.local import command_clients, command_resources

    async def main() -> Any:
        resources = await command_resources("FirmwareTable", zone=_zone)
        zone = os.environ.get("FLEETLINE_RESIDENCY_ZONE") or _zone_output(resources)
        async with command_clients("FirmwareTable", zone=_zone) as aws:
            service = FirmwareService(aws, ServiceSettings.from_resources(resources, zone))
            return await ask(service)

    try:
        return anyio.run(main)
    except (RolloutRejected, RolloutNotFound, InvalidTransition) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _zone_output(resources: Any) -> str:
    try:
        return str(resources.get("ResidencyZone"))
    except Exception:
        return "eu"


@app.command("upload")
def upload_command(
    version: Annotated[str, typer.Argument(help="e.g. 2.1.0")],
    file: Annotated[Path, typer.Argument(help="the firmware image")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Store FILE as firmware VERSION (S3, SHA-256 recorded and checked on arrival)."""
    artifact = _run(lambda service: service.upload(version, file))
    if as_json:
        typer.echo(json.dumps(artifact, default=str))
    else:
        typer.echo(f"uploaded {version}: {artifact['size']} bytes, sha256 {artifact['sha256']}")


@app.command("start")
def start_command(
    version: Annotated[str, typer.Option("--version", help="the version to roll out")],
    tenant: Annotated[str | None, typer.Option(help="only this tenant's devices")] = None,
    zone: Annotated[str | None, typer.Option(help="default: this deployment's zone")] = None,
    from_version: Annotated[str | None, typer.Option(
        "--from-version", help="only devices on this version")] = None,
    canary: Annotated[int, typer.Option(help="devices in the first wave")] = 10,
    growth: Annotated[float, typer.Option(help="each wave this many times the last")] = 4.0,
    waves: Annotated[str | None, typer.Option(
        help="cumulative percentages instead of canary/growth, e.g. 1,10,50,100")] = None,
    success_threshold: Annotated[float, typer.Option(
        "--success-threshold", help="percent of a wave that must succeed")] = 95.0,
    abort_threshold: Annotated[float, typer.Option(
        "--abort-threshold", help="failure percent that aborts and rolls back")] = 10.0,
    min_executed: Annotated[int, typer.Option(
        "--min-executed", help="devices with an outcome before the abort threshold applies")
    ] = 10,
    device_timeout: Annotated[float, typer.Option(
        "--device-timeout", help="seconds a device has to answer")] = 600.0,
    approval: Annotated[bool, typer.Option(help="wait for `approve` between waves")] = False,
    allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade")] = False,
    client_token: Annotated[str | None, typer.Option(
        "--client-token", help="the same token twice starts one rollout")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="devices per batch")] = 1000,
    max_concurrency: Annotated[int, typer.Option(
        "--max-concurrency", help="batches of a wave at once")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start a rollout; prints its id."""
    try:
        percentages = tuple(float(p) for p in waves.split(",")) if waves else ()
    except ValueError:
        typer.echo("error: waves: must be numbers separated by commas, e.g. 1,10,50,100",
                   err=True)
        raise typer.Exit(2) from None

    async def start(service: FirmwareService) -> tuple[str, bool]:
        spec = RolloutSpec(
            version=version, zone=zone or service.settings.zone, tenant=tenant,
            from_version=from_version, canary=canary, growth=growth, waves=percentages,
            success_threshold=success_threshold, abort_threshold=abort_threshold,
            min_executed=min_executed, device_timeout=device_timeout, approval=approval,
            allow_downgrade=allow_downgrade, client_token=client_token,
            batch_size=batch_size, max_concurrency=max_concurrency)
        return await service.start(spec)

    rollout_id, created = _run(start)
    if as_json:
        typer.echo(json.dumps({"rollout_id": rollout_id, "created": created}))
    else:
        typer.echo(rollout_id if created else f"{rollout_id} (started before with this token)")


@app.command("status")
def status_command(
    rollout_id: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A rollout's state, its counts per device status, and its waves."""
    status = _run(lambda service: service.status(rollout_id))
    if as_json:
        typer.echo(json.dumps(status, default=str))
        return
    _console.print(f"[bold]{status['rollout_id']}[/bold] {status['state']}  "
                   f"{status['version']} zone={status['zone']} tenant={status['tenant'] or '*'}"
                   + (f"\n  reason: {status['reason']}" if status.get("reason") else ""))
    table = Table("wave", "size", "state", *status["counts"].keys())
    for wave in status["waves"]:
        table.add_row(str(wave["wave"]), str(wave["size"]), wave["state"],
                      *(str(v) for v in wave["counts"].values()))
    table.add_row("all", str(status["devices_planned"]), status["state"],
                  *(str(v) for v in status["counts"].values()))
    _console.print(table)


@app.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Rollouts, newest first."""
    rollouts = _run(lambda service: service.list())
    if as_json:
        typer.echo(json.dumps(rollouts))
        return
    table = Table("rollout", "state", "version", "zone", "tenant", "devices", "created")
    for r in rollouts:
        table.add_row(r["rollout_id"], r["state"], r["version"], r["zone"], r["tenant"] or "*",
                      str(r["devices_planned"]), r["created_at"])
    _console.print(table)


def _lifecycle(name: str, help_text: str) -> None:
    def command(
        rollout_id: Annotated[str, typer.Argument()],
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        record = _run(lambda service: getattr(service, name)(rollout_id))
        if as_json:
            typer.echo(json.dumps({"rollout_id": rollout_id, "state": record.state.value}))
        else:
            typer.echo(f"{rollout_id}: {record.state.value}")

    command.__doc__ = help_text
    app.command(name)(command)


_lifecycle("approve", "Let a rollout waiting for approval start its next wave.")
_lifecycle("pause", "Start no new batch or wave until `resume`.")
_lifecycle("resume", "Continue a paused rollout.")
_lifecycle("abort", "Stop a rollout: no new wave or batch; roll back what it updated.")
