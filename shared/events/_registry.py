"""The registry of event types: (type, version) -> data model, and typed decoding."""

from __future__ import annotations

import builtins
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ConfigurationError
from shared.events._codec import parse_envelope, validation_error_field
from shared.events._envelope import DataRef, Envelope, TypedEvent
from shared.events._errors import (
    ClaimCheckNotConfiguredError,
    InvalidEventDataError,
    UnknownEventTypeError,
)
from shared.events._spec import (
    EventSpec,
    attach_spec,
    check_event_source,
    check_event_type_name,
    spec_of,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ClaimCheckReader",
    "EventRegistry",
    "event_type",
    "load_registered_events",
    "registry",
]

ENTRY_POINT_GROUP: Final = "fleetline.events"

M = TypeVar("M", bound=BaseModel)
Body = str | bytes | bytearray | Mapping[str, Any]


class ClaimCheckReader(Protocol):
    """What decoding needs to resolve `data_ref`: `shared.events.ClaimCheck` implements it."""

    async def fetch(self, ref: DataRef) -> dict[str, Any]: ...


class EventRegistry:
    """Event types by (type, version). v1 and v2 of a type coexist, each with its own model;
    decoding picks the model the envelope's `version` names, and a model's missing optional
    fields take their defaults. Unknown fields in `data` are ignored (models that forbid extra
    fields are refused at registration).

    Usually the process-wide `shared.events.registry` is used through `@event_type`; tests may
    make their own.
    """

    def __init__(self) -> None:
        self._specs: dict[tuple[str, int], EventSpec] = {}

    # ------------------------------------------------------------------ registration

    def register(
        self, model: builtins.type[BaseModel], *, type: str, source: str, version: int = 1
    ) -> EventSpec:
        """Declare `model` as the data of (`type`, `version`) from `source`, and return the spec.

        Registering the same model again is a no-op; so is a re-imported class of the same
        module and name (module reloads). Two different models for one (type, version) are
        refused.

        Raises:
            ValueError: a name, source or version is invalid, the model forbids extra fields,
                or (type, version) is taken by another model.
        """
        check_event_type_name(type)
        check_event_source(source)
        if version < 1:
            raise ValueError(f"version must be >= 1, got {version}")
        if model.model_config.get("extra") == "forbid":
            raise ValueError(
                f"{model.__qualname__} forbids extra fields; event models must ignore unknown "
                "fields so older consumers accept newer producers"
            )
        spec = EventSpec(type=type, version=version, source=source, model=model)
        existing = self._specs.get(spec.key)
        if existing is not None and existing.model is not model:
            same_name = (existing.model.__module__, existing.model.__qualname__) == (
                model.__module__,
                model.__qualname__,
            )
            if not same_name or existing.source != source:
                raise ValueError(
                    f"event type {type} v{version} is already registered to "
                    f"{existing.model.__module__}.{existing.model.__qualname__}"
                )
        try:
            declared = spec_of(model)
        except TypeError:
            declared = None
        if declared is not None and declared != spec:
            raise ValueError(
                f"{model.__qualname__} is already declared as {declared.type} "
                f"v{declared.version}"
            )
        attach_spec(model, spec)
        self._specs[spec.key] = spec
        return spec

    # ------------------------------------------------------------------ lookup

    def get(self, type: str, version: int) -> EventSpec:
        """The spec of (`type`, `version`).

        Raises:
            UnknownEventTypeError: not registered.
        """
        spec = self._specs.get((type, version))
        if spec is None:
            raise UnknownEventTypeError(type, version)
        return spec

    def find(self, type: str, version: int) -> EventSpec | None:
        """The spec of (`type`, `version`), or None."""
        return self._specs.get((type, version))

    def versions(self, type: str) -> tuple[int, ...]:
        """The registered versions of `type`, ascending."""
        return tuple(sorted(v for t, v in self._specs if t == type))

    def specs(self) -> tuple[EventSpec, ...]:
        """Every registered spec, sorted by (type, version)."""
        return tuple(self._specs[key] for key in sorted(self._specs))

    def __iter__(self) -> Iterator[EventSpec]:
        return iter(self.specs())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, key: object) -> bool:
        return key in self._specs

    # ------------------------------------------------------------------ decoding

    def parse(self, envelope: Envelope) -> TypedEvent[BaseModel]:
        """Parse an envelope's inline `data` with its registered model.

        Raises:
            UnknownEventTypeError: (type, version) not registered.
            InvalidEventDataError: `data` fails the model (`field` = `data.<path>`).
            ClaimCheckNotConfiguredError: the envelope has only `data_ref`; use
                `decode_async` with a claim-check store.
        """
        spec = self.get(envelope.type, envelope.version)
        if envelope.data is None:
            raise ClaimCheckNotConfiguredError(
                f"event {envelope.id} carries its data in S3 (data_ref): decode it with "
                "decode_async(..., claim_check=ClaimCheck(...))"
            )
        try:
            data = spec.model.model_validate(envelope.data)
        except ValidationError as exc:
            field, message = validation_error_field(exc, prefix="data")
            raise InvalidEventDataError(message, field=field) from None
        return TypedEvent(envelope, data, spec)

    def decode(self, body: Body) -> TypedEvent[BaseModel]:
        """Decode a message body from any transport (raw envelope, EventBridge event, SNS
        notification, Kinesis / DynamoDB Streams record; see `shared.events.find_envelope`)
        into a typed event. Pure: no I/O.

        Raises:
            MalformedMessageError: not JSON, or no envelope in it.
            UnknownEventTypeError: (type, version) not registered.
            InvalidEventDataError: the envelope or its data is schema-invalid (`field` says
                where).
            ClaimCheckNotConfiguredError: the payload is in S3; use `decode_async`.
        """
        return self.parse(parse_envelope(body))

    def decode_as(self, body: Body, model: type[M]) -> TypedEvent[M]:
        """`decode`, then check the data is a `model`.

        Raises:
            everything `decode` raises, and
            UnknownEventTypeError: the event is of another type or version than `model`.
        """
        return _narrow(self.decode(body), model)

    async def decode_async(
        self, body: Body, *, claim_check: ClaimCheckReader | None
    ) -> TypedEvent[BaseModel]:
        """`decode`, fetching a claim-checked payload through `claim_check` first, so handlers
        always see `data`. The returned envelope has both `data` and `data_ref` set.

        Raises:
            everything `decode` raises (ClaimCheckNotConfiguredError only when `claim_check`
            is None and the payload is in S3),
            ClaimCheckIntegrityError: the S3 object is missing or differs from `data_ref`,
            shared.errors.AwsUnavailableError: S3 is unavailable (retryable).
        """
        envelope = parse_envelope(body)
        if envelope.data is None and envelope.data_ref is not None and claim_check is not None:
            self.get(envelope.type, envelope.version)  # unknown types fail before any I/O
            data = await claim_check.fetch(envelope.data_ref)
            envelope = envelope.model_copy(update={"data": data})
        return self.parse(envelope)


def _narrow(event: TypedEvent[BaseModel], model: type[M]) -> TypedEvent[M]:
    if not isinstance(event.data, model):
        raise UnknownEventTypeError(event.type, event.version)
    return TypedEvent(event.envelope, event.data, event.spec)


registry: Final = EventRegistry()
"""The process-wide registry that `@event_type` fills and consumers decode with."""


def event_type(
    name: str, *, source: str, version: int = 1, registry: EventRegistry | None = None
) -> Callable[[type[M]], type[M]]:
    """Class decorator declaring a pydantic model as the data of an event type:

        @event_type("OrderPlaced", source="fleetline.orders", version=1)
        class OrderPlaced(BaseModel):
            order_id: str
            total_cents: int

    Registers it in `registry` (default: the process-wide one) and returns the class unchanged.

    Raises:
        ValueError: see `EventRegistry.register`.
    """
    target = registry if registry is not None else _default_registry()

    def decorate(model: type[M]) -> type[M]:
        target.register(model, type=name, source=source, version=version)
        return model

    return decorate


def _default_registry() -> EventRegistry:
    return registry


def load_registered_events(
    group: str = ENTRY_POINT_GROUP,
    *,
    entry_points: Callable[[str], list[importlib.metadata.EntryPoint]] | None = None,
) -> list[str]:
    """Import every module listed in the `fleetline.events` entry-point group (so their
    `@event_type` declarations run) and return the entry-point names, sorted. Idempotent.
    This is how `shared` learns the services' events without importing `services`.

    Raises:
        ConfigurationError: an entry point fails to import (named in the message).
    """
    found = (
        entry_points(group)
        if entry_points is not None
        else list(importlib.metadata.entry_points(group=group))
    )
    names: list[str] = []
    for entry_point in sorted(found, key=lambda ep: ep.name):
        try:
            entry_point.load()
        except Exception as exc:
            raise ConfigurationError(
                f"entry point {entry_point.name!r} = {entry_point.value!r} in group {group!r} "
                f"failed to import: {exc}"
            ) from exc
        names.append(entry_point.name)
    return names
