"""Residency zones: which AWS Regions hold a zone's data.

A zone (`eu`, `us`) is where a device's data lives. Each zone has a **primary** Region, where
its stack runs, and a **secondary** Region inside the same jurisdiction, where a standby
stack receives the zone's events when the EventBridge global endpoint fails over
(docs/zones.md). No data of a zone is ever written outside these two Regions.

    zone = ZONES["eu"]            # Zone(name='eu', primary='eu-west-1', secondary='eu-west-3')
    parse_stack("us")             # (ZONES["us"], ZoneRole.PRIMARY)
    parse_stack("eu:secondary")   # (ZONES["eu"], ZoneRole.SECONDARY): eu's standby stack

This module is the one place Python code reads zones from (`fleetline up --zones`, the
simulator, the monthly report, the residency checks). The template carries the same table as
its `ResidencyZones` mapping (the global endpoint's secondary Region is read from it on AWS);
`tests/unit/test_zones.py` keeps the two equal. A zone's stack is named `zone` (its primary)
or `zone:role` on the command line (`--zones eu,us,eu:secondary`, `--zone us`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.errors import ConfigurationError

__all__ = ["ZONES", "Zone", "ZoneRole", "parse_stack"]


class ZoneRole(StrEnum):
    """Which of its zone's Regions a stack serves (the template's `ZoneRole` parameter)."""

    PRIMARY = "primary"
    SECONDARY = "secondary"


@dataclass(frozen=True)
class Zone:
    """A residency zone and its two Regions."""

    name: str
    primary: str
    secondary: str

    def region(self, role: ZoneRole = ZoneRole.PRIMARY) -> str:
        """The Region of the stack that serves `role`."""
        return self.primary if role is ZoneRole.PRIMARY else self.secondary

    @property
    def regions(self) -> tuple[str, str]:
        return self.primary, self.secondary


ZONES: Final[dict[str, Zone]] = {
    "eu": Zone("eu", primary="eu-west-1", secondary="eu-west-3"),
    "us": Zone("us", primary="us-east-1", secondary="us-east-2"),
}


def parse_stack(text: str) -> tuple[Zone, ZoneRole]:
    """The zone and role a stack is named by: `eu` (its primary), `eu:secondary`.

    Raises:
        ConfigurationError: an unknown zone or role.
    """
    name, _, role = text.strip().partition(":")
    if name not in ZONES:
        raise ConfigurationError(
            f"unknown zone {name!r}: one of {', '.join(sorted(ZONES))}, optionally "
            f"with :{ZoneRole.SECONDARY.value}")
    try:
        return ZONES[name], ZoneRole(role or ZoneRole.PRIMARY.value)
    except ValueError:
        raise ConfigurationError(
            f"zone {text!r}: the role after ':' must be "
            f"{' or '.join(r.value for r in ZoneRole)}") from None
