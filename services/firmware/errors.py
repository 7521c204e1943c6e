"""The exception tree of the firmware context.

    FleetlineError (shared.errors)
    ├── PermanentError
    │   ├── RolloutRejected        a rollout that cannot start as asked (names the field);
    │   │                          nothing was started
    │   ├── InvalidTransition      approve / pause / resume / abort in a state that does not
    │   │                          allow it
    │   ├── RolloutNotFound        no rollout with that id
    │   └── UnknownArtifact        no uploaded firmware with that version
    └── RetryableError
        └── RolloutBusy            the rollout changed while this request read it: retry

`WorkflowError.error_name` values are what the state machine sees (`SendTaskFailure`).
"""

from __future__ import annotations

from typing import ClassVar, Final

from shared.errors import PermanentError, RetryableError

__all__ = [
    "ABORTED_ERROR",
    "InvalidTransition",
    "RolloutBusy",
    "RolloutNotFound",
    "RolloutRejected",
    "UnknownArtifact",
    "WorkflowError",
]

# The error a batch child fails with once the rollout is aborted (by its threshold or an
# operator): the Distributed Map counts its devices as failed, and its Catch rolls back.
ABORTED_ERROR: Final = "Rollout.Aborted"


class RolloutRejected(PermanentError):
    """A rollout that cannot be started as asked; nothing was started."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason if field is None else f"{field}: {reason}")
        self.reason = reason
        self.field = field


class InvalidTransition(PermanentError):
    """A lifecycle change the rollout's state does not allow (approve a running rollout)."""


class RolloutNotFound(PermanentError):
    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"no rollout {rollout_id!r}")
        self.rollout_id = rollout_id


class UnknownArtifact(PermanentError):
    def __init__(self, version: str) -> None:
        super().__init__(f"no uploaded firmware {version!r}")
        self.version = version


class RolloutBusy(RetryableError):
    """The rollout item changed between read and write."""


class WorkflowError(PermanentError):
    """A task of the rollout workflow that fails on purpose; `error_name` is what the state
    machine's Catch matches."""

    error_name: ClassVar[str] = "Rollout.Internal"

    def __init__(self, message: str, *, error_name: str | None = None) -> None:
        super().__init__(message)
        if error_name is not None:
            self.error_name = error_name  # type: ignore[misc]
