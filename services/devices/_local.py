"""Where the devices CLI finds the stack: the process environment (inside the stack), else
the state `fleetline up` left in FLEETLINE_STATE_DIR (default `.fleetline`): its emulator
endpoint and the stack's outputs."""

from __future__ import annotations

import os
from pathlib import Path

from shared.aws import AwsClients, aws_errors
from shared.config import Resources, resource_env_name
from shared.local import read_state

__all__ = ["dashboard_base_url", "stack_resources"]

_EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _state_dir() -> Path:
    return Path(os.environ.get("FLEETLINE_STATE_DIR", ".fleetline"))


async def stack_resources(probe: str = "TelemetryStream") -> Resources:
    """Resources from the environment when it names `probe`, else from the running `up`
    (which also points this process at its emulator). Unchanged environment otherwise."""
    if resource_env_name(probe) in os.environ:
        return Resources.from_environ()
    state = read_state(_state_dir())
    if state is None:
        return Resources.from_environ()
    if state.endpoint and not os.environ.get("AWS_ENDPOINT_URL"):
        os.environ["AWS_ENDPOINT_URL"] = state.endpoint
        for name, value in _EMULATOR_CREDENTIALS.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    async with AwsClients() as aws:
        cloudformation = await aws.client("cloudformation")
        with aws_errors():
            stacks = (await cloudformation.describe_stacks(StackName=state.stack_name))["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Resources.from_outputs(outputs)


def dashboard_base_url() -> str | None:
    """The dashboard URL `fleetline up` printed, if one is running."""
    state = read_state(_state_dir())
    if state is None:
        return None
    for name, url in state.urls.items():
        if "dashboard" in name.lower():
            return url
    return None
