"""Where the devices CLI finds the stack: the process environment (inside the stack), else
the state `fleetline up` left in FLEETLINE_STATE_DIR (default `.fleetline`): its emulator
endpoint and the stack's outputs. The environment is read here, for the commands, and never
written."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from shared.aws import AwsClients, aws_errors
from shared.config import Resources, resource_env_name
from shared.local import UpState, endpoint_clients, read_state

__all__ = ["dashboard_base_url", "stack_clients", "stack_resources"]


def _state_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("FLEETLINE_STATE_DIR", ".fleetline"))


def _running_up(probe: str, environ: Mapping[str, str]) -> UpState | None:
    """The running `up` whose stack the command uses: None inside the stack (the environment
    names `probe`) or when nothing runs here."""
    if resource_env_name(probe) in environ:
        return None
    return read_state(_state_dir(environ))


def stack_clients(probe: str = "TelemetryStream",
                  environ: Mapping[str, str] | None = None) -> AwsClients:
    """Clients on the stack `stack_resources(probe)` finds: the running `up`'s emulator unless
    the environment names `probe` or sets AWS_ENDPOINT_URL (then AWS's standard
    configuration, as `AwsClients()`)."""
    environ = os.environ if environ is None else environ
    state = _running_up(probe, environ)
    endpoint = None if state is None or environ.get("AWS_ENDPOINT_URL") else state.endpoint
    return endpoint_clients(endpoint, environ)


async def stack_resources(probe: str = "TelemetryStream",
                          environ: Mapping[str, str] | None = None) -> Resources:
    """Resources from the environment when it names `probe`, else the running `up`'s stack
    outputs (read through `stack_clients`), else the environment's (which then names none).

    Raises:
        shared.errors.AwsRequestError / AwsUnavailableError: the stack cannot be described.
    """
    environ = os.environ if environ is None else environ
    state = _running_up(probe, environ)
    if state is None:
        return Resources.from_environ(environ)
    async with stack_clients(probe, environ) as aws:
        cloudformation = await aws.client("cloudformation")
        with aws_errors():
            stacks = (await cloudformation.describe_stacks(StackName=state.stack_name))["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Resources.from_outputs(outputs)


def dashboard_base_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The dashboard URL `fleetline up` printed, if one is running."""
    state = read_state(_state_dir(os.environ if environ is None else environ))
    if state is None:
        return None
    for name, url in state.urls.items():
        if "dashboard" in name.lower():
            return url
    return None
