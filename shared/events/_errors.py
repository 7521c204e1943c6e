"""The exception tree of `shared.events`.

    shared.errors.PermanentError
    ├── shared.errors.InvalidMessageError      (dead-letter with the reason)
    │   ├── MalformedMessageError               not JSON, or no envelope where one must be
    │   ├── UnknownEventTypeError               (type, version) not in the registry
    │   ├── InvalidEventDataError               envelope or `data` fails its schema
    │   └── ClaimCheckIntegrityError            the S3 payload is missing or its sha256/size differ
    └── EventTooLargeError                      a PutEvents entry over 256 KB (producer side)
    shared.errors.ConfigurationError
    └── ClaimCheckNotConfiguredError            an envelope has `data_ref` and no store was given

S3 outages while fetching a claim-checked payload surface as `shared.errors.AwsUnavailableError`
(retryable), translated by `shared.aws.aws_errors()`.
"""

from __future__ import annotations

from shared.errors import ConfigurationError, InvalidMessageError, PermanentError

__all__ = [
    "ClaimCheckIntegrityError",
    "ClaimCheckNotConfiguredError",
    "EventTooLargeError",
    "InvalidEventDataError",
    "MalformedMessageError",
    "UnknownEventTypeError",
]


class MalformedMessageError(InvalidMessageError):
    """The body is not JSON, or no event envelope could be found in it."""


class UnknownEventTypeError(InvalidMessageError):
    """The envelope names a (type, version) that no module registered."""

    def __init__(self, event_type: str, version: int | None) -> None:
        shown = event_type if version is None else f"{event_type} v{version}"
        super().__init__(f"unknown event type {shown!r}", field="type")
        self.event_type = event_type
        self.version = version


class InvalidEventDataError(InvalidMessageError):
    """The envelope or its `data` does not match the schema; `field` names the first offender
    (dotted path, e.g. `data.lines.0.quantity`)."""


class ClaimCheckIntegrityError(InvalidMessageError):
    """The claim-checked payload is missing, or its sha256 or size differ from `data_ref`."""


class ClaimCheckNotConfiguredError(ConfigurationError):
    """An envelope carries `data_ref` but the decoder has no claim-check store to fetch it."""


class EventTooLargeError(PermanentError):
    """A PutEvents entry exceeds EventBridge's 256 KB limit (offload `data` to S3 first)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"PutEvents entry is {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit
