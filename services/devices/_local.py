"""Where the devices CLI finds the stack (`shared.local.command_resources` /
`command_clients`, probing the TelemetryStream output by default), and the dashboard URL a
running `fleetline up` printed."""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.aws import AwsClients
from shared.config import Resources
from shared.local import command_clients, command_resources, read_state, state_dir

__all__ = ["dashboard_base_url", "stack_clients", "stack_resources"]


def stack_clients(probe: str = "TelemetryStream",
                  environ: Mapping[str, str] | None = None) -> AwsClients:
    return command_clients(probe, environ)


async def stack_resources(probe: str = "TelemetryStream",
                          environ: Mapping[str, str] | None = None) -> Resources:
    return await command_resources(probe, environ)


def dashboard_base_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The dashboard URL `fleetline up` printed, if one is running."""
    state = read_state(state_dir(os.environ if environ is None else environ))
    if state is None:
        return None
    for name, url in state.urls.items():
        if "dashboard" in name.lower():
            return url
    return None
