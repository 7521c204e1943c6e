"""Residency zones: which AWS Regions hold a zone's data.

A zone (`eu`, `us`) is where a device's data lives. Each zone has a **primary** Region, where
its stack runs, and a **secondary** Region inside the same jurisdiction, where a standby
stack receives the zone's events when the EventBridge global endpoint fails over
(docs/zones.md). No data of a zone is ever written outside these two Regions.

    zone = ZONES["eu"]            # Zone(name='eu', primary='eu-west-1', secondary='eu-west-3')
    parse_zones("eu,us")                # (ZONES["eu"], ZONES["us"])
    zone_of_region("eu-west-3")         # (ZONES["eu"], ZoneRole.SECONDARY)

This module is the one place Python code reads zones from (`fleetline up --zones`, the
simulator, the monthly report, the residency checks). The template carries the same table as
its `ResidencyZones` mapping (the global endpoint's secondary Region is read from it on AWS);
`tests/unit/test_zones.py` keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.errors import ConfigurationError

__all__ = ["ZONES", "Zone", "ZoneRole", "parse_zones", "zone_of_region"]


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


def parse_zones(text: str) -> tuple[Zone, ...]:
    """The zones of a comma-separated list (`"eu,us"`), in the order given, each once.

    Raises:
        ConfigurationError: `zones` is empty or names an unknown zone.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigurationError(f"zones must name at least one of {sorted(ZONES)}")
    unknown = [name for name in names if name not in ZONES]
    if unknown:
        raise ConfigurationError(
            f"zones: unknown zone {unknown[0]!r}; known: {', '.join(sorted(ZONES))}")
    return tuple(ZONES[name] for name in dict.fromkeys(names))


def zone_of_region(region: str) -> tuple[Zone, ZoneRole] | None:
    """The zone whose primary or secondary Region `region` is, with that role; None when
    no zone uses it."""
    for zone in ZONES.values():
        if region == zone.primary:
            return zone, ZoneRole.PRIMARY
        if region == zone.secondary:
            return zone, ZoneRole.SECONDARY
    return None
