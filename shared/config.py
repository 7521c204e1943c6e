"""Where code finds names: the stack's outputs, handed over as environment variables.

The template is the single source of names. Each resource a process needs is exported as a
stack output (`OrdersTable`) and, for the processes the template runs, as an environment
variable with the same name in upper snake case behind a prefix (`FLEETLINE_ORDERS_TABLE`).
`resource_env_name` is that one rule; the local runner, the tests and the template all follow it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "Resources", "resource_env_name"]

ENV_PREFIX = "FLEETLINE_"
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def resource_env_name(output_key: str) -> str:
    """The variable that carries an output to a process.

    `OrdersTable` -> `FLEETLINE_ORDERS_TABLE`;
    `DeviceEventsBusName` -> `FLEETLINE_DEVICE_EVENTS_BUS_NAME`.

    Raises:
        ValueError: `output_key` is empty or does not start with a letter.
    """
    if not output_key or not output_key[0].isalpha():
        raise ValueError(f"output_key must start with a letter, got {output_key!r}")
    return ENV_PREFIX + _CAMEL_BOUNDARY.sub("_", output_key).upper()


@dataclass(frozen=True)
class Resources:
    """Names of the stack's resources by output key (`OrdersTable` -> `fleetline-orders`)."""

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Resources:
        """From the process environment. The conversion to upper snake case loses the output
        key's case, so values stay keyed by variable name and `get` converts each key."""
        return cls(dict(environ if environ is not None else os.environ))

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str]) -> Resources:
        """From a stack's outputs (`DescribeStacks`), keyed by output key."""
        return cls({resource_env_name(k): v for k, v in outputs.items()})

    def get(self, output_key: str) -> str:
        """The name or ARN of a resource. Raises ConfigurationError naming the variable."""
        env_name = resource_env_name(output_key)
        try:
            return self.values[env_name]
        except KeyError:
            raise ConfigurationError(
                f"{env_name} is not set: the template passes it to the processes that need "
                f"{output_key}; outside the stack, export it or run under `fleetline up`"
            ) from None

    def as_environ(self) -> dict[str, str]:
        """The variables to hand to a child process."""
        return {k: v for k, v in self.values.items() if k.startswith(ENV_PREFIX)}
