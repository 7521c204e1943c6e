"""Where the devices CLI finds the stack (`shared.local.command_resources` /
`command_clients`, probing the TelemetryStream output by default), the zone of that stack,
and the dashboard URL a running `fleetline up` printed.

`zone` (`eu`, `us`, `eu:secondary`) picks one stack of a multi-zone `fleetline up --zones`;
None is its first stack (the only one of a plain `fleetline up`). Outside `up`, on AWS, it
picks the zone's Region."""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.aws import AwsClients
from shared.config import Resources
from shared.local import command_clients, command_resources, read_state, state_dir

__all__ = ["dashboard_base_url", "stack_clients", "stack_resources", "stack_zone", "zones_up"]


def stack_clients(probe: str = "TelemetryStream",
                  environ: Mapping[str, str] | None = None,
                  zone: str | None = None) -> AwsClients:
    return command_clients(probe, environ, zone)


async def stack_resources(probe: str = "TelemetryStream",
                          environ: Mapping[str, str] | None = None,
                          zone: str | None = None) -> Resources:
    return await command_resources(probe, environ, zone)


def stack_zone(resources: Resources, environ: Mapping[str, str] | None = None) -> str:
    """The residency zone of the stack `resources` describe: FLEETLINE_RESIDENCY_ZONE inside
    the stack, else its `ResidencyZone` output, else eu (`fleetline up`'s default)."""
    environ = os.environ if environ is None else environ
    if environ.get("FLEETLINE_RESIDENCY_ZONE"):
        return environ["FLEETLINE_RESIDENCY_ZONE"]
    try:
        return resources.get("ResidencyZone")
    except Exception:  # a stack older than the output, or the environment names none
        return "eu"


def zones_up(environ: Mapping[str, str] | None = None) -> list[str]:
    """The primary zones the running `fleetline up` serves, in its order (empty: none runs,
    or a plain `up` of one stack, whose zone its outputs say)."""
    state = read_state(state_dir(os.environ if environ is None else environ))
    if state is None:
        return []
    return [s.zone for s in state.stacks if s.role == "primary"]


def dashboard_base_url(environ: Mapping[str, str] | None = None,
                       zone: str | None = None) -> str | None:
    """The dashboard URL `fleetline up` printed for `zone`'s stack (None: the first), if one
    is running."""
    state = read_state(state_dir(os.environ if environ is None else environ))
    if state is None:
        return None
    for name, url in state.for_zone(zone).urls.items():
        if "dashboard" in name.lower():
            return url
    return None
