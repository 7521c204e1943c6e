"""The errors of the local Distributed Map.

    DefinitionError (ConfigurationError)  a definition the local runner cannot carry out
                                          (found when the machine is created: `up` lists it
                                          under problems)
    MapRunError (PermanentError)          a map run failed; `error` and `cause` are what the
                                          Map state fails with on AWS, and what the parent's
                                          Retry and Catch see
"""

from __future__ import annotations

from shared.errors import ConfigurationError, PermanentError

__all__ = ["DefinitionError", "MapRunError"]


class DefinitionError(ConfigurationError):
    """A state machine definition the local runner cannot run (JSONata, an item source or
    result writer it does not know, a Map state without a processor)."""


class MapRunError(PermanentError):
    """A map run ends failed with `error` (a Step Functions error name, e.g.
    `States.ExceedToleratedFailureThreshold`) and `cause` (text)."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause
