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
from shared.local._endpoint import endpoint_clients
from shared.local._state import UpState, read_state

__all__ = ["command_clients", "command_resources", "running_up", "state_dir"]


def state_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("FLEETLINE_STATE_DIR", ".fleetline"))


def running_up(probe: str, environ: Mapping[str, str]) -> UpState | None:
    """The running `up` whose stack the command uses: None inside the stack (the environment
    names `probe`, an output key) or when nothing runs here."""
    if resource_env_name(probe) in environ:
        return None
    return read_state(state_dir(environ))


def command_clients(probe: str, environ: Mapping[str, str] | None = None) -> AwsClients:
    """Clients on the stack `command_resources(probe)` finds: the running `up`'s emulator
    unless the environment names `probe` or sets AWS_ENDPOINT_URL (then AWS's standard
    configuration, as `AwsClients()`)."""
    environ = os.environ if environ is None else environ
    state = running_up(probe, environ)
    endpoint = None if state is None or environ.get("AWS_ENDPOINT_URL") else state.endpoint
    return endpoint_clients(endpoint, environ)


async def command_resources(probe: str, environ: Mapping[str, str] | None = None) -> Resources:
    """Resources from the environment when it names `probe`, else the running `up`'s stack
    outputs (read through `command_clients`), else the environment's (which then names none).

    Raises:
        shared.errors.AwsRequestError / AwsUnavailableError: the stack cannot be described.
    """
    environ = os.environ if environ is None else environ
    state = running_up(probe, environ)
    if state is None:
        return Resources.from_environ(environ)
    async with command_clients(probe, environ) as aws:
        cloudformation = await aws.client("cloudformation")
        with aws_errors():
            stacks = (await cloudformation.describe_stacks(StackName=state.stack_name))["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Resources.from_outputs(outputs)
