"""The stack a command on the shell works on (`fleetline devices ...`, `firmware ...`,
`simulate`): the process environment when it names the stack's resources (inside the stack,
or exported by hand), else the running `fleetline up` found by its state file
(FLEETLINE_STATE_DIR, default `.fleetline`): its emulator endpoint and the stack's outputs.
The environment is read here, for the commands, and never written."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from shared.aws import AwsClients, aws_errors
from shared.config import Resources, resource_env_name
from shared.local._endpoint import endpoint_clients, region_of
from shared.local._state import UpState, read_state

__all__ = ["command_clients", "command_resources", "running_up", "state_dir"]


def state_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("FLEETLINE_STATE_DIR", ".fleetline"))


def running_up(probe: str, environ: Mapping[str, str], zone: str | None = None) -> UpState | None:
    """The running `up` whose stack the command uses, as that stack sees it (`zone`: `eu`,
    `us:secondary`; None: its first): None inside the stack (the environment names `probe`,
    an output key) or when nothing runs here.

    Raises ConfigurationError when `zone` is not one the running `up` serves."""
    if resource_env_name(probe) in environ:
        return None
    state = read_state(state_dir(environ))
    return None if state is None else state.for_zone(zone)


def command_clients(probe: str, environ: Mapping[str, str] | None = None,
                    zone: str | None = None) -> AwsClients:
    """Clients on the stack `command_resources(probe, zone=...)` finds: the running `up`'s
    emulator, in the Region of the zone's stack, unless the environment names `probe` or sets
    AWS_ENDPOINT_URL (then AWS's standard configuration, as `AwsClients()`, in the zone's
    primary Region when `zone` is given)."""
    environ = os.environ if environ is None else environ
    state = running_up(probe, environ, zone)
    if state is None or environ.get("AWS_ENDPOINT_URL"):
        return endpoint_clients(None, environ,
                                region=_zone_region(zone))
    return endpoint_clients(state.endpoint, environ, region=state.region)


def _zone_region(zone: str | None) -> str | None:
    if zone is None:
        return None
    from shared.zones import parse_stack

    found, role = parse_stack(zone)
    return found.region(role)


async def command_resources(probe: str, environ: Mapping[str, str] | None = None,
                            zone: str | None = None) -> Resources:
    """Resources from the environment when it names `probe`, else the running `up`'s stack
    outputs (of `zone`'s stack; read through `command_clients`), else the environment's
    (which then names none). With `zone` and no running `up` (on AWS), a zone whose Region
    is not the environment's is read from its stack's outputs there (the stack named
    FLEETLINE_STACK_NAME, default fleetline): the environment describes its own stack only.

    Raises:
        ConfigurationError: `zone` is not up here.
        shared.errors.AwsRequestError / AwsUnavailableError: the stack cannot be described.
    """
    environ = os.environ if environ is None else environ
    state = running_up(probe, environ, zone)
    if state is None:
        zone_region = _zone_region(zone)
        if zone_region is None or zone_region == region_of(environ):
            return Resources.from_environ(environ)
        stack_name = environ.get("FLEETLINE_STACK_NAME", "fleetline")
    else:
        stack_name = state.stack_name
    async with command_clients(probe, environ, zone) as aws:
        cloudformation = await aws.client("cloudformation")
        with aws_errors():
            stacks = (await cloudformation.describe_stacks(StackName=stack_name))["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Resources.from_outputs(outputs)
